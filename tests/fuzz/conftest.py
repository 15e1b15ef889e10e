"""Hypothesis settings for the property-based fuzz suite.

One profile, ``imagecopy``: no example database (a clean clone and CI see the same thing, and
nothing is written into the work tree), a per-example deadline so a parser that goes
quadratic fails as a timing error, and few enough examples that the whole suite stays well
under a minute on the shared 2-core machine. ``IMAGECOPY_FUZZ_EXAMPLES`` raises the example
count for a longer local hunt (``IMAGECOPY_FUZZ_EXAMPLES=5000 make fuzz``).
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

settings.register_profile(
    "imagecopy",
    max_examples=int(os.environ.get("IMAGECOPY_FUZZ_EXAMPLES", "150")),
    deadline=timedelta(milliseconds=500),
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("imagecopy")
