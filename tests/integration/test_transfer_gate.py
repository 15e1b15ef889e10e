"""``CopyOptions.transfer_gate`` against real registries: a copy that only mounts never
enters it; one that uploads enters it once, before its first upload request, and leaves it
when the copy ends (the operator's copy slot, issue 15)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from imagecopy.copy import CopyOptions, Outcome
from testkit import images
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration


class Gate:
    """Records its entries and exits, and the registry's upload requests seen at entry."""

    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self.mark = registry.mark()
        self.entered = 0
        self.exited = 0
        self.uploads_before_entry: int | None = None

    def uploads(self) -> int:
        return sum(
            1
            for e in self.registry.access_log_since(self.mark)
            if "/blobs/uploads/" in e.path and not e.is_mount
        )

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        self.entered += 1
        self.uploads_before_entry = self.uploads()
        try:
            yield
        finally:
            self.exited += 1


async def test_a_copy_that_only_mounts_never_enters_the_transfer_gate(
    registry_v2: RegistryServer,
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=3, layer_size=4096)
    gate = Gate(registry_v2)

    report = await copy(
        src.ref,
        f"{registry_v2.host}/{repo('prod')}:1",
        registry_v2,
        options=CopyOptions(transfer_gate=gate),
    )

    assert report.outcome is Outcome.COPIED
    assert report.blobs_mounted == report.blobs_total == 4  # 3 layers and the config
    assert (gate.entered, gate.exited) == (0, 0)


async def test_an_uploading_copy_enters_the_gate_once_before_its_first_upload(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=5, layer_size=4096)
    gate = Gate(registry_v3)

    report = await copy(
        src.ref,
        f"{registry_v3.host}/{repo('mirror')}:1",
        registry_v2,
        registry_v3,
        options=CopyOptions(transfer_gate=gate),
    )

    assert report.outcome is Outcome.COPIED
    assert report.blobs_uploaded == 6  # 6 concurrent uploads, one entry
    assert (gate.entered, gate.exited) == (1, 1)
    assert gate.uploads_before_entry == 0
    assert gate.uploads() > 0


async def test_a_copy_that_fails_leaves_the_gate_it_entered(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2, layer_size=4096)
    gate = Gate(registry_v3)

    class Refused(Exception):
        pass

    @asynccontextmanager
    async def refusing() -> AsyncIterator[None]:
        async with gate():
            raise Refused
        yield  # pragma: no cover

    with pytest.raises(Refused):
        await copy(
            src.ref,
            f"{registry_v3.host}/{repo('mirror')}:1",
            registry_v2,
            registry_v3,
            options=CopyOptions(transfer_gate=refusing),
        )
    assert (gate.entered, gate.exited) == (1, 1)
    assert gate.uploads() == 0
