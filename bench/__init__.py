"""Benchmarks of imagecopy against its peers; run from the repository root as
``python -m bench.run`` (see bench/README.md). Shared servers and helpers come from
:mod:`testkit`."""
