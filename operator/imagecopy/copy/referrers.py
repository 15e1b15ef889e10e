"""Referrer discovery for a plan: signatures, SBOMs and attestations of the copied manifests.

Every manifest of the plan is a subject; its referrers (referrers API, else the tag schema:
``oci.referrers.find_referrers``) join the plan with their own graphs, and are subjects in
turn, down to ``MAX_REFERRER_DEPTH`` levels (a signature of an attestation of an image).
"""

from __future__ import annotations

from ..oci.descriptor import Descriptor
from ..oci.referrers import find_referrers
from ..oci.repository import RepositoryClient
from .plan import Plan, fetch_child, walk
from .tasks import gather_all

__all__ = ["MAX_REFERRER_DEPTH", "add_referrers"]

MAX_REFERRER_DEPTH = 3


async def add_referrers(source_repo: RepositoryClient, plan: Plan, skip: set[str]) -> None:
    """Add the referrers of every node (but those in ``skip``) to ``plan``, level by level.
    A filtered root is skipped: no referrer can name a manifest that did not exist."""
    subjects = [digest for digest in plan.nodes if digest not in skip]
    seen: set[str] = set(plan.nodes)
    for _level in range(MAX_REFERRER_DEPTH):
        found = await gather_all(*(find_referrers(source_repo, d) for d in subjects))
        new: list[tuple[str, Descriptor]] = []
        limit = plan.bounds.max_referrers
        for subject, referrers in zip(subjects, found, strict=True):
            if len(referrers.descriptors) > limit:
                raise plan.limit(
                    f"the manifest {subject} has {len(referrers.descriptors)} referrers, more "
                    f"than the limit of {limit}"
                )
            for desc in referrers.descriptors:
                if desc.digest not in seen:
                    seen.add(desc.digest)
                    new.append((subject, desc))
        if not new:
            return
        plan.make_room(len(new))
        manifests = await gather_all(*(fetch_child(source_repo, d) for _, d in new))
        for (subject, _desc), manifest in zip(new, manifests, strict=True):
            before = set(plan.nodes)
            await walk(source_repo, plan, manifest, referrer_of=subject)
            seen.update(set(plan.nodes) - before)
        subjects = [desc.digest for _, desc in new]
