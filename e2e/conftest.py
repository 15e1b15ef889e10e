"""Fixtures for end-to-end tests against a real control plane (etcd + kube-apiserver).

- ``control_plane`` (session): a running :class:`e2e.controlplane.ControlPlane` with the CRDs of
  ``deploy/crds/`` installed and Established. Use ``control_plane.kubectl(...)``,
  ``control_plane.kubeconfig`` (admin), ``control_plane.service_account_kubeconfig(ns, name)``.
  Skipped when the binaries are absent, unless ``IMAGECOPY_REQUIRE_E2E`` is set (then it fails):
  ``make e2e`` builds them first (``e2e/tools/build-control-plane.sh``).
- ``namespace`` (function): a fresh namespace per test; its ImageCopies and the namespace are
  deleted afterwards.
- ``kube`` (session): a ``kubernetes.client.ApiClient`` with admin rights on that control plane.

If any test of the session failed, the etcd and kube-apiserver logs are kept under ``e2e/.logs/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import Binaries, BinariesNotFound, ControlPlane


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A real API server for the whole session, with the project's CRDs installed."""
    try:
        binaries = Binaries.find()
    except BinariesNotFound as e:
        if os.environ.get("IMAGECOPY_REQUIRE_E2E"):
            pytest.fail(f"{e} (IMAGECOPY_REQUIRE_E2E is set)", pytrace=False)
        pytest.skip(str(e))
    plane = ControlPlane(binaries)
    plane.start()
    try:
        plane.apply_crds()
        yield plane
    finally:
        failed = request.session.testsfailed > 0
        kept = plane.stop(keep_logs=failed)
        if kept is not None:
            print(f"\ncontrol-plane logs kept in {kept}")


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of its own for one test, deleted (with its ImageCopies) afterwards."""
    name = control_plane.create_namespace()
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Any]:
    """``kubernetes.client.ApiClient`` for the control plane, as cluster admin."""
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()
