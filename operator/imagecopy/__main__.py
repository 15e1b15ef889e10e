"""`python -m imagecopy`: the same program as the ``imagecopy`` console script."""

from .cli import run

run()
