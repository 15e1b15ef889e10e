"""Support code shared by the tests, the e2e suite, the demo and the benchmarks.

It owns the real things a test or a benchmark runs against, none of them part of the product
(the wheel ships ``imagecopy`` only):

- :mod:`testkit.registry` — OCI registries (distribution 2.8.2 and v3) as subprocesses, with
  parsed access logs;
- :mod:`testkit.tls` — a throwaway CA and server certificate;
- :mod:`testkit.token_issuer` — a Bearer-token realm for token-auth registries;
- :mod:`testkit.images` — images, indexes and artifacts built and pushed with plain httpx;
- :mod:`testkit.peers` — ``crane`` and ``skopeo`` as independent readers of what a copy wrote;
- :mod:`testkit.netproxy` — a user-space latency/bandwidth/fault proxy, and
  :mod:`testkit.proxy_server`, the same proxy as a process with a counter dump;
- :mod:`testkit.hostile` — a registry that misbehaves on purpose (huge bodies, hostile
  redirects and upload locations, endless indexes, deep JSON, traversal digests, foreign
  token realms), in process or as a process, recording every request;
- :mod:`testkit.tools` — where the repository and its tools are (``find_tool``);
- :mod:`testkit.processes` — ``free_port`` and process groups (start so they die with their
  parent, stop with SIGTERM then SIGKILL).

pytest fixtures over these live in ``tests/support/fixtures.py``. Nothing here imports
``tests``, ``e2e`` or ``bench``; all of them import this package. It is found from the
repository root: pytest's ``pythonpath`` setting, or ``python -m`` run there.
"""
