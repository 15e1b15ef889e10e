"""Where the repository and its tools are: ``REPO_ROOT``, ``TOOLS_BIN`` and :func:`find_tool`.

``scripts/install-tools.sh`` (``make tools``) links the registry, peers and other binaries into
``.tools/bin``; :func:`find_tool` looks there first, then on ``PATH``. It only finds: whether a
missing tool skips a test or fails it (``IMAGECOPY_REQUIRE_TOOLS``) is the caller's decision,
see ``require_tool`` in ``tests/support/fixtures.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["REPO_ROOT", "TOOLS_BIN", "find_tool"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"


def find_tool(name: str) -> str | None:
    """Path of the executable ``name`` in ``.tools/bin``, else on ``PATH``; None when absent."""
    p = TOOLS_BIN / name
    if os.access(p, os.X_OK):
        return str(p)
    return shutil.which(name)
