"""``make demo`` (``python -m e2e.demo`` from the repository root): a throwaway control plane,
two local registries and the operator, end to end.

1. Start etcd + kube-apiserver (CRDs installed), registry A (distribution 2.8.2) and registry B
   (distribution v3, or a second 2.8.2 when v3 is not installed).
2. Seed a multi-layer sample image ``dev/web:1.4.2`` into registry A.
3. Run the operator (``imagecopy operator --standalone -A``).
4. Apply ``examples/imagecopy.yaml`` with its registry host replaced by registry A: a promotion
   inside one registry, so every layer is mounted. Wait for Ready and print
   ``kubectl get imagecopies -o wide`` (MOUNTED and SAVED).
5. Apply a second ImageCopy from registry A to registry B: every layer must be uploaded, so
   MOUNTED is 0 and SAVED is 0 B. Print the table again.
6. Apply a third from registry A to another repository on registry B: the operator-wide
   blob-location index knows B's ``dr/web`` holds every blob, so they are all mounted.
7. Tear everything down (also on Ctrl-C or failure).
"""

from __future__ import annotations

import sys
import time

import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import push_image
from testkit.registry import RegistryServer, find_registry_binary
from testkit.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "imagecopy.yaml"
NAMESPACE = "demo"
PLACEHOLDER = "registry.example.com"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    cp: ControlPlane | None = None
    operator: OperatorProcess | None = None
    registries: list[RegistryServer] = []
    try:
        say("starting a control plane (etcd + kube-apiserver)")
        cp = ControlPlane().start()
        cp.apply_crds()
        cp.create_namespace(NAMESPACE)

        say("starting two registries")
        reg_a = RegistryServer(impl="v2").start()
        registries.append(reg_a)
        reg_b = RegistryServer(impl="v3" if find_registry_binary("v3") else "v2").start()
        registries.append(reg_b)
        print(
            f"    registry A: {reg_a.url} ({reg_a.impl})\n    registry B: {reg_b.url} ({reg_b.impl})"
        )

        say("seeding dev/web:1.4.2 (4 layers) into registry A")
        image = push_image(reg_a, "dev/web", "1.4.2", layers=4, layer_size=3 * 1024 * 1024, seed=42)
        print(
            f"    {image.ref} = {image.digest}, {len(image.unique_blobs)} blobs, "
            f"{image.total_blob_bytes / 1024 / 1024:.1f} MiB"
        )

        say("starting the operator")
        operator = OperatorProcess(cp).start()
        print(f"    log: {operator.log_path}")

        icp = ImageCopies(cp, NAMESPACE)
        say(f"applying {EXAMPLE.relative_to(REPO_ROOT)} with {PLACEHOLDER} -> {reg_a.host}")
        manifest = EXAMPLE.read_text().replace(PLACEHOLDER, reg_a.host)
        cp.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=manifest)
        name = yaml.safe_load(manifest)["metadata"]["name"]
        cp.kubectl(
            "wait",
            "--for=condition=Ready",
            f"imagecopy/{name}",
            "-n",
            NAMESPACE,
            "--timeout=120s",
            timeout=130,
        )
        print(cp.kubectl("get", "imagecopies", "-n", NAMESPACE, "-o", "wide").stdout)

        say("a second ImageCopy across two registries: every layer is uploaded")
        icp.apply(
            "web-to-dr",
            {
                "source": {"image": f"{reg_a.host}/dev/web:1.4.2"},
                "destination": {"image": f"{reg_b.host}/dr/web:1.4.2"},
            },
        )
        cp.kubectl(
            "wait",
            "--for=condition=Ready",
            "imagecopy/web-to-dr",
            "-n",
            NAMESPACE,
            "--timeout=120s",
            timeout=130,
        )
        print(cp.kubectl("get", "imagecopies", "-n", NAMESPACE, "-o", "wide").stdout)

        say(
            "a third ImageCopy, A -> another repository on B: the operator remembers that "
            "B's dr/web holds these blobs and mounts them from there"
        )
        icp.apply(
            "web-to-backup",
            {
                "source": {"image": f"{reg_a.host}/dev/web:1.4.2"},
                "destination": {"image": f"{reg_b.host}/backup/web:1.4.2"},
            },
        )
        cp.kubectl(
            "wait",
            "--for=condition=Ready",
            "imagecopy/web-to-backup",
            "-n",
            NAMESPACE,
            "--timeout=120s",
            timeout=130,
        )
        print(cp.kubectl("get", "imagecopies", "-n", NAMESPACE, "-o", "wide").stdout)
        for obj_name in (name, "web-to-dr", "web-to-backup"):
            status = icp.get(obj_name)["status"]
            blobs = status["lastCopy"]["blobs"]
            print(
                f"    {obj_name}: {status['destinationImage']}\n"
                f"      blobs mounted={blobs['mounted']} uploaded={blobs['uploaded']} "
                f"existing={blobs['existing']}, saved {status['lastCopy']['saved']}, "
                f"{status['lastCopy']['requests']} requests"
            )
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        if operator is not None:
            print(operator.log_tail(), file=sys.stderr)
        return 1
    finally:
        say("tearing down")
        if operator is not None:
            operator.stop()
        for reg in registries:
            reg.stop()
        if cp is not None:
            cp.stop()
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
