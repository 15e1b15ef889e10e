"""What a copy did, counted exactly: the numbers of `status.lastCopy` and `--json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ..oci.blobs import BlobOutcome, BlobPlacement
from .refusals import RememberedRefusal
from .verify import Verification

__all__ = ["TOKEN_REFUSED_REASON", "CopyReport", "MountPolicy", "Outcome", "human_bytes"]


class Outcome(StrEnum):
    COPIED = "Copied"  # something was pushed or linked
    UP_TO_DATE = "UpToDate"  # the destination already held everything
    TAG_EXISTS = "TagExists"  # tagPolicy IfNotPresent left an existing tag alone


class MountPolicy(StrEnum):
    """How the copy set out to mount: the context of ``mount.reason``."""

    DISABLED = "disabled"  # spec.mount false / --no-mount
    SAME_REGISTRY = "same registry"  # mount-first from the source repository
    ACROSS_REGISTRIES = "across registries"  # mount_from and remembered locations only


#: ``mount.reason`` when mount candidates were dropped because the token service refused
#: pull access to them (Docker Hub refuses a whole token request for one such repository).
TOKEN_REFUSED_REASON = "the token service refused pull access to the mount source"


def human_bytes(n: int) -> str:
    """1288490188 → '1.2 GiB' (binary units, one decimal above KiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass
class CopyReport:
    source: str
    destination: str
    source_digest: str = ""
    destination_digest: str = ""
    destination_pinned: str = ""
    outcome: Outcome = Outcome.COPIED
    manifests_copied: int = 0
    manifests_existing: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    blobs_existing: int = 0
    bytes_mounted: int = 0
    bytes_uploaded: int = 0
    bytes_existing: int = 0
    referrers: int = 0
    requests: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False
    tags: list[str] = field(default_factory=list)
    mount_policy: MountPolicy = MountPolicy.SAME_REGISTRY
    #: Mount requests sent, and the HTTP status of each one that did not link its blob
    #: (0: no answer came), counted per status.
    mounts_attempted: int = 0
    mounts_declined: dict[int, int] = field(default_factory=dict)
    #: The registry's recent refusal that kept this copy from asking for mounts at all.
    mounts_skipped: RememberedRefusal | None = None
    #: Mount candidates dropped unasked: the token service refused pull access to them.
    mounts_token_refused: int = 0
    #: The verification gate's verdict (``verify`` asked); None when not asked.
    verification: Verification | None = None
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: Keys of the copy's largest blobs, now at the destination (``engine.largest_blob_keys``).
    largest_blobs: list[str] = field(default_factory=list)

    def count_blob(self, size: int, outcome: BlobOutcome) -> None:
        """Count one blob made present at the destination."""
        if outcome is BlobOutcome.MOUNTED:
            self.blobs_mounted += 1
            self.bytes_mounted += size
        elif outcome is BlobOutcome.UPLOADED:
            self.blobs_uploaded += 1
            self.bytes_uploaded += size
        else:
            self.blobs_existing += 1
            self.bytes_existing += size

    def count_mounts(self, placement: BlobPlacement) -> None:
        """Count the mount requests one blob cost, and how each that did not mount ended."""
        self.mounts_attempted += placement.mount_attempts
        self.mounts_token_refused += placement.token_refusals
        for status in placement.declined:
            self.mounts_declined[status] = self.mounts_declined.get(status, 0) + 1

    @property
    def mounts_refused(self) -> int:
        return sum(self.mounts_declined.values())

    @property
    def mount_reason(self) -> str | None:
        """Why blobs were not mounted, in words; None when there is nothing to explain (every
        mount linked its blob and no byte was uploaded without one being tried)."""
        refused = self.mounts_refused
        said: list[str] = []
        if self.mounts_token_refused and (refused or self.blobs_uploaded):
            said.append(TOKEN_REFUSED_REASON)
        if refused:
            ranked = sorted(self.mounts_declined.items(), key=lambda kv: (-kv[1], kv[0]))
            answers = [str(code) if code else "no answer" for code, _ in ranked]
            if len(ranked) > 1:
                answers = [f"{a} ({n})" for a, (_, n) in zip(answers, ranked, strict=True)]
            codes = ", ".join(answers)
            if refused == self.mounts_attempted:
                said.append(f"registry answered {codes} to cross-repository mounts")
            else:
                said.append(
                    f"registry answered {codes} to {refused} of {self.mounts_attempted} "
                    "cross-repository mounts"
                )
        if said:
            return "; ".join(said)
        if self.blobs_uploaded == 0:
            return None
        if self.mounts_skipped is not None:
            return self.mounts_skipped.sentence()
        if self.mount_policy is MountPolicy.DISABLED:
            return "mounting is disabled for this copy"
        if self.mount_policy is MountPolicy.ACROSS_REGISTRIES:
            return "different registries and no known source repository"
        return None  # one registry: every blob is asked for by a mount first

    def mount_json(self) -> dict[str, Any]:
        """``status.lastCopy.mount`` and ``--json``'s ``mount``."""
        return {
            "attempted": self.mounts_attempted,
            "refused": self.mounts_refused,
            "reason": self.mount_reason,
        }

    @property
    def blobs_total(self) -> int:
        return self.blobs_mounted + self.blobs_uploaded + self.blobs_existing

    @property
    def bytes_total(self) -> int:
        return self.bytes_mounted + self.bytes_uploaded + self.bytes_existing

    @property
    def bytes_saved(self) -> int:
        """Bytes that crossed no network: mounted plus already there."""
        return self.bytes_mounted + self.bytes_existing

    def summary(self) -> str:
        """One human sentence, used as the Ready message and the CLI's last line."""
        text = self._summary()
        if self.verification is not None:
            text += f"; {self.verification.summary()}"
        return text

    def _summary(self) -> str:
        if self.outcome is Outcome.UP_TO_DATE:
            return f"{self.destination} is up to date at {self.destination_digest}"
        if self.outcome is Outcome.TAG_EXISTS:
            return f"{self.destination} exists and tagPolicy IfNotPresent leaves it alone"
        prefix = "would copy " if self.dry_run else ""
        blobs = (
            f"{self.blobs_total} blobs: {self.blobs_mounted} mounted, "
            f"{self.blobs_existing} existing, {self.blobs_uploaded} uploaded"
        )
        text = f"{prefix}{blobs}; {human_bytes(self.bytes_saved)} not transferred"
        reason = self.mount_reason
        if reason is not None and self.blobs_uploaded:
            text += f"; not mounted: {reason}"
        return text

    def last_copy(self) -> dict[str, Any]:
        """The `status.lastCopy` object."""
        return {
            "startTime": self.start_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "durationSeconds": round(self.duration_seconds, 3),
            "manifests": {"copied": self.manifests_copied, "existing": self.manifests_existing},
            "blobs": {
                "total": self.blobs_total,
                "mounted": self.blobs_mounted,
                "uploaded": self.blobs_uploaded,
                "existing": self.blobs_existing,
            },
            "bytes": {
                "total": self.bytes_total,
                "mounted": self.bytes_mounted,
                "uploaded": self.bytes_uploaded,
                "existing": self.bytes_existing,
            },
            "bytesSaved": self.bytes_saved,
            "saved": human_bytes(self.bytes_saved),
            "mount": self.mount_json(),
            "referrers": self.referrers,
            "requests": self.requests,
            "largestBlobs": list(self.largest_blobs),
        }

    def to_json(self) -> dict[str, Any]:
        """The CLI's `--json` object (docs/reference.md §6)."""
        last = self.last_copy()
        return {
            "source": self.source,
            "destination": self.destination,
            "sourceDigest": self.source_digest,
            "destinationDigest": self.destination_digest,
            "destinationImage": self.destination_pinned,
            "outcome": self.outcome.value,
            "manifests": last["manifests"],
            "blobs": last["blobs"],
            "bytes": last["bytes"],
            "bytesSaved": self.bytes_saved,
            "mount": last["mount"],
            "referrers": self.referrers,
            "requests": self.requests,
            "durationSeconds": last["durationSeconds"],
            "dryRun": self.dry_run,
            "verification": self.verification.to_json() if self.verification else None,
        }
