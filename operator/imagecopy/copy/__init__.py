"""The graph copy engine: plan and execute a copy between two references, mount-first."""

from .engine import Copier
from .locations import BlobLocations
from .options import CopyOptions, ProgressListener, TagPolicy
from .refusals import MountRefusals
from .report import CopyReport, Outcome, human_bytes

__all__ = [
    "BlobLocations",
    "Copier",
    "CopyOptions",
    "CopyReport",
    "MountRefusals",
    "Outcome",
    "ProgressListener",
    "TagPolicy",
    "human_bytes",
]
