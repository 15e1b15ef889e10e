"""``testkit/netproxy.py`` as a separate process with an on-demand, race-free counter dump.

The benchmark driver (``bench/run.py``) starts this from the repository root so the proxy's
CPU never lands on the measured process::

    python -m testkit.proxy_server --upstream 127.0.0.1:5000 --delay-ms 10

It prints ``READY host:port`` once listening, then answers commands on stdin, one per line:

- ``dump`` — one JSON line ``{"requests": [...], "connections": N}`` with every request the
  proxy finished since the previous dump (then the counters are reset);
- ``quit`` — stop and exit.

A request is logged by netproxy when its response has been relayed, so a dump taken after
the client process exited holds all of that client's requests.

One addition to netproxy: a connection whose first byte is a TLS handshake record (0x16:
skopeo probes HTTPS before falling back to plain HTTP) gets ``400 Bad Request`` and is closed at
once, as the registry itself would answer. netproxy would wait for an HTTP head that never
comes and the client would sit in its TLS handshake timeout (10 s per registry). Those probes
are counted as ``tls_probes``, not as requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys

from testkit.netproxy import NetProxy

TLS_HANDSHAKE = 0x16


class BenchProxy(NetProxy):
    tls_probes = 0

    async def _handle_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        first = await cr.read(1)
        if not first:
            cw.close()
            return
        if first[0] == TLS_HANDSHAKE:
            self.tls_probes += 1
            cw.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await cw.drain()
            cw.close()
            return
        # put the byte back (CPython's StreamReader keeps its buffer in a bytearray)
        cr._buffer[0:0] = first  # type: ignore[attr-defined]
        await super()._handle_client(cr, cw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (default: a free port)")
    args = ap.parse_args()
    proxy = BenchProxy(args.upstream, delay_ms=args.delay_ms, listen=args.listen)
    addr = proxy.start()
    print(f"READY {addr}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "dump":
            stats = proxy.stats
            proxy.reset_stats()
            proxy.tls_probes = 0
            out = {
                "connections": stats.connections,
                "tls_probes": proxy.tls_probes,
                "requests": [dataclasses.asdict(r) for r in stats.log],
            }
            print(json.dumps(out), flush=True)
        elif cmd == "quit":
            break
    proxy.stop()


if __name__ == "__main__":
    main()
