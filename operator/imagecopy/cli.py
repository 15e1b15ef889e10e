"""The `imagecopy` command line: argument parsing and progress rendering over the engine.

Start-up is most of a CLI copy's time (issue 14; docs/reference.md §6 "Start-up"), so:
modules are imported only on the path that needs them (asyncio, httpx and the engine only by
``copy``; rich only on a terminal; cryptography only with ``--verify-key``; kopf, kubernetes and
prometheus never), the cyclic garbage collector is off while a copy starts (the imports leave
some 26 000 tracked objects and no garbage cycle worth a collection) and back on, with the
start-up objects frozen out of its reach, before the first request; and the program (``run``,
the console script) leaves with ``os._exit`` once its output is flushed, skipping the
interpreter's teardown of every module (about 15% of a no-op copy's CPU).

Every failure ends in one line on stderr (``imagecopy: <label>: <message>``), an unexpected
exception included (``imagecopy: internal error: <Type>: <message>``); ``--debug`` adds the
traceback. SIGINT and SIGTERM cancel the copy cleanly: its open upload sessions are
cancelled (``oci.blobs``) before the process exits; a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import types
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from . import __version__

if TYPE_CHECKING:
    from .copy.options import CopyOptions
    from .copy.report import CopyReport
    from .copy.verify import VerifyPolicy
    from .oci.blobs import BlobOutcome
    from .oci.bounds import Bounds
    from .oci.credentials import CredentialStore
    from .oci.descriptor import Descriptor
    from .oci.errors import ImageCopyError
    from .oci.reference import Reference

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: 128 + the signal's number, as shells report a process a signal ended.
EXIT_SIGNALLED = 128

#: Longest message of an unexpected exception on the one error line.
_INTERNAL_MESSAGE_LIMIT = 200

T = TypeVar("T")


#: ``(flag, metavar, help)`` of the graph limits; each maps to the ``Bounds`` field named
#: like the flag (``--max-index-children`` → ``max_index_children``).
_LIMIT_FLAGS = (
    ("--max-index-children", "N", "child manifests one index may list (default 256)"),
    ("--max-index-depth", "N", "levels of manifests below the root (default 8)"),
    ("--max-manifests", "N", "manifests per copy: root, children, referrers (default 1024)"),
    ("--max-manifest-bytes", "SIZE", "bytes of all manifests of a copy, e.g. 16MiB (default)"),
    ("--max-blobs", "N", "distinct blobs per copy (default 10000)"),
    ("--max-referrers", "N", "referrers of one manifest (default 256)"),
)


def _bounds(args: argparse.Namespace) -> Bounds:
    """The ``Bounds`` the limit flags ask for; ``InvalidSpec`` for a value that is not one."""
    from .oci.bounds import Bounds, parse_size
    from .oci.errors import InvalidSpec

    values: dict[str, int] = {}
    for flag, _metavar, _help in _LIMIT_FLAGS:
        name = flag[2:].replace("-", "_")
        raw = getattr(args, name)
        if raw is None:
            continue
        try:
            value = parse_size(raw) if name == "max_manifest_bytes" else int(raw.strip())
        except ValueError:
            what = "a size like 16MiB" if name == "max_manifest_bytes" else "a whole number"
            raise InvalidSpec(f"{flag} {raw!r} is not {what}") from None
        if value < 1:
            raise InvalidSpec(f"{flag} must be at least 1")
        values[name] = value
    return Bounds(**values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagecopy",
        description="Copy OCI images between registries, mounting blobs instead of moving them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    cp = sub.add_parser("copy", help="copy an image (and optionally its referrers)")
    cp.add_argument("source", metavar="SOURCE", help="image to copy: repo:tag, repo@digest or both")
    cp.add_argument("destination", metavar="DESTINATION", help="where to: repo:tag or repo@digest")
    cp.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="copy only these platforms of an index (repeatable)",
    )
    cp.add_argument(
        "--referrers", action="store_true", help="also copy signatures/SBOMs/attestations"
    )
    cp.add_argument(
        "--additional-tag", action="append", default=[], metavar="TAG", help="extra destination tag"
    )
    cp.add_argument(
        "--tag-policy",
        choices=["Overwrite", "IfNotPresent", "Immutable"],
        default="Overwrite",
        help="what to do when a destination tag exists (default Overwrite)",
    )
    cp.add_argument("--no-mount", action="store_true", help="never use cross-repository mounts")
    cp.add_argument(
        "--check-first",
        action="store_true",
        help="HEAD the destination and the source before any GET: a re-run that is usually a "
        "no-op then pulls nothing (Docker Hub counts manifest GETs), at one round trip more "
        "when there is work",
    )
    cp.add_argument(
        "--mount-from",
        action="append",
        default=[],
        metavar="REPO",
        help="extra mount source repository on the destination registry (repeatable)",
    )
    cp.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel uploads")
    cp.add_argument(
        "--plain-http",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this exact host (repeatable; no port: every port)",
    )
    cp.add_argument(
        "--insecure",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="skip TLS verification for this exact host; never plain HTTP (repeatable)",
    )
    cp.add_argument(
        "--blocked-network",
        action="append",
        default=[],
        metavar="CIDR",
        help=(
            "never connect to this network, in addition to IMAGECOPY_BLOCKED_NETWORKS or the "
            "default (link-local, cloud metadata); 'none' drops those (repeatable)"
        ),
    )
    cp.add_argument(
        "--verify-key",
        action="append",
        default=[],
        metavar="PATH",
        help=(
            "copy only if the source is cosign-signed by this PEM public key; exit 1 when "
            "its signature is missing or invalid (repeatable: any key may match)"
        ),
    )
    cp.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to open a connection to a registry (default 10)",
    )
    cp.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds one read or write may wait for the network (default 60)",
    )
    cp.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up when the copy makes no progress for this long (default 120)",
    )
    limits = cp.add_argument_group(
        "limits", "bounds on the image graph a registry may send (docs/reference.md §4)"
    )
    for flag, metavar, help_text in _LIMIT_FLAGS:
        limits.add_argument(flag, metavar=metavar, help=help_text)
    cp.add_argument("--ca-file", metavar="PEM", help="extra CA bundle to trust")
    cp.add_argument("--docker-config", metavar="PATH", help="docker config.json with credentials")
    cp.add_argument("--dry-run", action="store_true", help="plan and count; write nothing")
    cp.add_argument("--json", action="store_true", help="print one JSON object with the report")
    cp.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    cp.add_argument(
        "--debug",
        action="store_true",
        help="log retries and decisions on stderr; print a traceback with a failure",
    )

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf run options follow)")
    op.add_argument("kopf_args", nargs=argparse.REMAINDER)

    sub.add_parser("version", help="print the version")
    return parser


def run() -> NoReturn:
    """The ``imagecopy`` program: ``main`` on ``sys.argv``, then exit at once.

    Once stdout and stderr are flushed nothing is left to do: the copy closed its connections
    and upload sessions, no file is open for writing and no thread runs (``asyncio.run`` shut
    its executor down). So the interpreter's teardown (finalizing some 350 modules) is skipped
    with ``os._exit``. A flush that fails (a closed pipe) takes the ordinary exit instead,
    which reports it as Python always does. ``operator`` (a long-running process whose
    libraries may rely on exit hooks) always takes the ordinary exit."""
    if sys.argv[1:2] == ["operator"]:
        raise SystemExit(main())
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        raise SystemExit(code) from None
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["operator"]:
        from .controller.main import run_operator

        return run_operator(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "version":
        print(f"imagecopy {__version__}")
        return EXIT_OK
    return _copy_command(args)


def _skip_httpx_cli() -> None:
    """httpx imports its own command-line client (click, rich, pygments: about 0.1 s of start-up)
    whenever those happen to be installed; we never use it, so let that import fail softly."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))


def _copy_command(args: argparse.Namespace) -> int:
    """Run ``copy``; any failure becomes one line on stderr and an exit code.

    The garbage collector is off until the copy is about to send its first request
    (``_started``) and on again afterwards whatever happens."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _debug_logging(args.debug):
            return _copy_logged(args)
    finally:
        if collecting:
            gc.enable()


def _started() -> None:
    """Start-up is over (every module the copy needs is imported, the pool is built): what
    exists now lives until the process ends, so it is frozen out of the collector's
    generations (``gc.freeze``) and collection resumes for what the copy allocates."""
    gc.freeze()
    gc.enable()


def _copy_logged(args: argparse.Namespace) -> int:
    import asyncio

    try:
        return _copy(args)
    except KeyboardInterrupt:  # before the event loop handles signals itself
        print("imagecopy: interrupted", file=sys.stderr)
        return EXIT_SIGNALLED + signal.SIGINT
    except _Interrupted as stop:
        print("imagecopy: interrupted", file=sys.stderr)
        return EXIT_SIGNALLED + stop.signum
    except asyncio.CancelledError:  # a signal that came as the copy was returning
        print("imagecopy: interrupted", file=sys.stderr)
        return EXIT_SIGNALLED + signal.SIGINT
    except Exception as exc:
        return _failed(exc, debug=args.debug)


def _failed(exc: Exception, *, debug: bool) -> int:
    from .oci.errors import ImageCopyError, InvalidReference, InvalidSpec

    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ImageCopyError):
        print(f"imagecopy: {_label(exc)}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidSpec | InvalidReference) else EXIT_FAILED
    # A bug, not a registry's or a user's doing: its type and a short first line, which is
    # all a user can report without --debug.
    print(f"imagecopy: internal error: {_short(exc)}", file=sys.stderr)
    return EXIT_FAILED


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > _INTERNAL_MESSAGE_LIMIT:
        text = text[: _INTERNAL_MESSAGE_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _debug_logging(enabled: bool) -> Iterator[None]:
    """With ``enabled``, imagecopy's own log lines (retries, fallbacks; never a credential)
    go to stderr for the duration."""
    if not enabled:
        yield
        return
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("imagecopy")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _copy(args: argparse.Namespace) -> int:
    _skip_httpx_cli()
    import asyncio

    from .copy.options import CopyOptions, TagPolicy
    from .oci.credentials import CredentialStore
    from .oci.egress import HostList
    from .oci.errors import InvalidSpec
    from .oci.reference import Reference, parse_platform

    source = Reference.parse(args.source)
    destination = Reference.parse(args.destination, default_tag=None)
    platforms = tuple(parse_platform(p) for p in args.platform)
    if args.concurrency < 1:
        raise InvalidSpec("--concurrency must be at least 1")
    for flag, value in (
        ("--connect-timeout", args.connect_timeout),
        ("--read-timeout", args.read_timeout),
        ("--stall-timeout", args.stall_timeout),
    ):
        if not value > 0 or value == float("inf"):
            raise InvalidSpec(f"{flag} must be a positive number of seconds")
    for tag in args.additional_tag:
        destination.with_tag(tag)
    for repo in args.mount_from:
        destination.registry.repository(repo)
    args.blocked_networks = _blocked_networks(args.blocked_network, os.environ)
    for flag, hosts in (("--plain-http", args.plain_http), ("--insecure", args.insecure)):
        try:
            HostList.parse(hosts)
        except ValueError as exc:
            raise InvalidSpec(f"{flag}: {exc}") from None
    bounds = _bounds(args)
    credentials = CredentialStore.load(args.docker_config)
    verify = _verify_policy(args.verify_key)

    renderer = None if args.quiet else _Renderer(sys.stderr, json_mode=args.json)
    try:
        options = CopyOptions(
            platforms=platforms,
            referrers=args.referrers,
            additional_tags=tuple(args.additional_tag),
            tag_policy=TagPolicy(args.tag_policy),
            mount=not args.no_mount,
            mount_from=tuple(args.mount_from),
            fetch_source_early=not args.check_first,
            concurrency=args.concurrency,
            bounds=bounds,
            dry_run=args.dry_run,
            progress=renderer,
            verify=verify,
        )
        report = asyncio.run(
            _until_signalled(_run_copy(source, destination, options, credentials, args)),
            debug=False,
        )
    finally:
        if renderer:
            renderer.stop()
    if args.json:
        import json

        print(json.dumps(report.to_json()))
    elif not args.quiet:
        print(f"{report.destination_pinned}: {report.summary()}")
    return EXIT_OK


def _verify_policy(paths: Sequence[str]) -> VerifyPolicy | None:
    """The keys of ``--verify-key`` (each a PEM public key file); None without any."""
    from .copy.verify import VerifyPolicy, load_key
    from .oci.errors import InvalidSpec

    if not paths:
        return None
    keys = []
    for path in dict.fromkeys(paths):
        try:
            with open(path, "rb") as f:
                pem = f.read(64 * 1024)
        except OSError as exc:
            raise InvalidSpec(f"--verify-key {path}: {exc.strerror or exc}") from None
        keys.append(load_key(path, pem))
    return VerifyPolicy(tuple(keys))


class _Interrupted(Exception):
    """The copy was cancelled by a signal (and cleaned up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _until_signalled(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; SIGINT or SIGTERM cancels it, so every task of the copy unwinds and
    cancels the upload sessions it opened, then ``_Interrupted`` is raised. A second signal
    while that runs ends the process at once, as the signal would."""
    import asyncio

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        if received:
            for sig in signals:
                loop.remove_signal_handler(sig)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        main.cancel()

    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signals here: the default handling stays
        installed.append(sig)
    try:
        return await work
    except asyncio.CancelledError:
        if received:
            raise _Interrupted(received[0]) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _run_copy(
    source: Reference,
    destination: Reference,
    options: CopyOptions,
    credentials: CredentialStore,
    args: argparse.Namespace,
) -> CopyReport:
    import dataclasses

    from .controller.deadline import CopyWatchdog, note_request
    from .copy.engine import Copier
    from .copy.refusals import MountRefusals
    from .oci.pool import RegistryPool, TransportSettings

    settings = TransportSettings(
        plain_http=frozenset(args.plain_http),
        insecure=frozenset(args.insecure),
        blocked_networks=args.blocked_networks,
        ca_file=args.ca_file,
        max_connections=options.connections,
        timeout=args.read_timeout,
        connect_timeout=args.connect_timeout,
    )
    # No deadline for the whole copy (a user can interrupt it); only progress is watched.
    watchdog = CopyWatchdog(
        float("inf"), args.stall_timeout, names=("no deadline", "--stall-timeout")
    )
    options = dataclasses.replace(options, progress=_Tee(options.progress, watchdog))
    # One copy per process: no probe (copy/refusals.py, docs/reference.md "One probe first").
    copier_refusals = MountRefusals(probe=False)
    async with RegistryPool(settings, on_request=lambda _r, _m, code: note_request(code)) as pool:
        copier = Copier(pool, refusals=copier_refusals)
        _started()
        return await watchdog.run(copier.copy(source, destination, options, credentials))


class _Tee:
    """Progress to the renderer (if any) and to the stall watchdog."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners = [listener for listener in listeners if listener is not None]

    def blob_started(self, desc: Any) -> None:
        for listener in self.listeners:
            listener.blob_started(desc)

    def blob_advanced(self, desc: Any, nbytes: int) -> None:
        for listener in self.listeners:
            listener.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Any, outcome: Any) -> None:
        for listener in self.listeners:
            listener.blob_finished(desc, outcome)


def _blocked_networks(flags: Sequence[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """The networks the CLI never connects to: ``IMAGECOPY_BLOCKED_NETWORKS`` when set (the
    operator's parser), else the default; each ``--blocked-network`` adds one, and
    ``--blocked-network none`` drops the base list (the other flags still count)."""
    from .oci.errors import InvalidSpec
    from .oci.netguard import DEFAULT_BLOCKED_NETWORKS, parse_blocked_networks

    raw = env.get("IMAGECOPY_BLOCKED_NETWORKS")
    try:
        base = DEFAULT_BLOCKED_NETWORKS if raw is None else parse_blocked_networks(raw)
    except ValueError as exc:
        raise InvalidSpec(f"IMAGECOPY_BLOCKED_NETWORKS: {exc}") from None
    added: list[str] = []
    for flag in flags:
        if flag.strip().lower() == "none":
            base = ()
            continue
        try:
            added.extend(parse_blocked_networks(flag))
        except ValueError as exc:
            raise InvalidSpec(f"--blocked-network: {exc}") from None
    return tuple(dict.fromkeys((*base, *added)))


def _label(exc: ImageCopyError) -> str:
    """What kind of failure, for the one stderr line: a registry error names its side
    when that tells more (``source not found``)."""
    from .oci.errors import NotFound, RegistryError

    if isinstance(exc, NotFound) and isinstance(exc, RegistryError) and exc.side is not None:
        return f"{exc.side.value} {exc.label}"
    return exc.label


class _Renderer:
    """Progress: a rich bar on a TTY, one plain line per blob otherwise."""

    def __init__(self, stream: TextIO, json_mode: bool) -> None:
        self.stream = stream
        self.tty = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.json_mode = json_mode
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                console=Console(file=stream),
                transient=False,
            )
            self._progress.start()

    def blob_started(self, desc: Descriptor) -> None:
        if self._progress is not None:
            self._tasks[desc.digest] = self._progress.add_task(
                desc.digest[7:19], total=desc.size or 1
            )

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        if self._progress is not None and desc.digest in self._tasks:
            self._progress.advance(self._tasks[desc.digest], nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        from .copy.report import human_bytes

        if self._progress is not None:
            task = self._tasks.get(desc.digest)
            if task is not None:
                self._progress.update(
                    task,
                    completed=desc.size or 1,
                    description=f"{desc.digest[7:19]} {outcome.value}",
                )
            return
        if not self.json_mode:
            print(
                f"{outcome.value:<8} {desc.digest} ({human_bytes(desc.size)})",
                file=self.stream,
                flush=True,
            )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


if __name__ == "__main__":  # pragma: no cover
    run()
