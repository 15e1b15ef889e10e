"""``imagecopy operator [kopf run options]``: validate settings, then ``kopf run`` the handlers."""

from __future__ import annotations

import sys

from .settings import Settings, SettingsError

__all__ = ["HANDLERS_MODULE", "run_operator"]

HANDLERS_MODULE = "imagecopy.controller.handlers"


def run_operator(argv: list[str]) -> int:
    """Run the operator until it is stopped; returns the exit code.

    Accepts every ``kopf run`` option (``--standalone``, ``-A``, ``-n NS``, ``--liveness URL``,
    ``--verbose``, ``--log-format json`` …). The metrics endpoint starts with the operator
    (``IMAGECOPY_METRICS_PORT``, see ``handlers.startup``).
    """
    try:
        Settings.from_env()
    except SettingsError as exc:
        print(f"imagecopy operator: {exc}", file=sys.stderr)
        return 2

    from kopf import cli as kopf_cli

    args = ["run", "-m", HANDLERS_MODULE, *argv]
    if not any(
        a in ("-A", "--all-namespaces") or a.startswith(("-n", "--namespace")) for a in argv
    ):
        args.append("--all-namespaces")
    try:
        kopf_cli.main.main(args=args, prog_name="imagecopy operator", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 130
    return 0
