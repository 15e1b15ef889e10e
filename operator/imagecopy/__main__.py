"""`python -m imagecopy`."""

from .cli import main

raise SystemExit(main())
