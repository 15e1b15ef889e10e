"""Failover time of two peered operator replicas, median of N SIGKILLs (``python -m bench.ha``).

Not a test. Each round starts two replicas (``e2e/replicas.py``) on a real API server with a
real registry, waits until the active one has copied an object, SIGKILLs it, creates a new
object and times how long until that object is Ready (copied by the standby). Also reported:
how much of the dead replica's peering entry was left at the kill (the part of the failover
that is Kopf's lifetime; the rest is the takeover grace and the copy). Prints a Markdown line
for the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies
from e2e.replicas import Replicas
from testkit.images import push_image
from testkit.registry import RegistryServer


def one_round(
    plane: ControlPlane, registry: RegistryServer, i: int, lifetime: int
) -> tuple[float, float]:
    ns = plane.create_namespace()
    icp = ImageCopies(plane, ns)
    ha = Replicas(plane, 2, env={"IMAGECOPY_PEERING_LIFETIME": f"{lifetime}s"})
    try:
        ha.start()
        active, standby = ha.procs
        for name in ("before", "after"):
            push_image(registry, f"ha/{i}/{name}", "1", layers=2)
        spec = {
            "source": {"image": registry.ref(f"ha/{i}/before", "1")},
            "destination": {"image": registry.ref(f"ha/{i}/before-copy", "1")},
        }
        icp.apply("before", spec)
        icp.wait_condition("before", reason="Copied", timeout=60, operator=active)
        lastseen = datetime.fromisoformat(ha.peers()[ha.identity_of(active)]["lastseen"])
        active.kill()
        killed = time.monotonic()
        left = (
            lastseen + timedelta(seconds=lifetime) - datetime.now(lastseen.tzinfo)
        ).total_seconds()
        icp.apply(
            "after",
            {
                "source": {"image": registry.ref(f"ha/{i}/after", "1")},
                "destination": {"image": registry.ref(f"ha/{i}/after-copy", "1")},
            },
        )
        icp.wait_condition("after", reason="Copied", timeout=120, operator=standby)
        return time.monotonic() - killed, left
    finally:
        ha.stop()
        plane.delete_namespace(ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ha", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lifetime", type=int, default=15, help="IMAGECOPY_PEERING_LIFETIME, s")
    args = parser.parse_args(argv)
    times: list[float] = []
    lefts: list[float] = []
    with ControlPlane() as plane:
        plane.apply_crds()
        registry = RegistryServer(impl="v2").start()
        try:
            for i in range(args.rounds):
                took, left = one_round(plane, registry, i, args.lifetime)
                times.append(took)
                lefts.append(left)
                print(
                    f"round {i + 1}: {took:.1f}s ({left:.1f}s of the entry left)", file=sys.stderr
                )
        finally:
            registry.stop()
    print(
        f"SIGKILL failover, lifetime {args.lifetime}s, {args.rounds} rounds: median "
        f"{statistics.median(times):.1f}s (min {min(times):.1f}s, max {max(times):.1f}s); "
        f"entry left at the kill: median {statistics.median(lefts):.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
