"""A short summary of a ``py-spy record --format raw`` profile (collapsed stacks), for
``bench/scale.md``: where the samples are by package at the top of the stack, and the
functions most often on the stack (inclusive) and at its top (self).

    .venv/bin/python -m bench.profile profile.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
#: Leaves that are a thread waiting, which py-spy does not always see as idle: an idle
#: worker of a thread pool, a selector's poll, a condition wait.
_WAITING = (
    "_worker (concurrent/futures/thread.py)",
    "select (selectors.py)",
    "_PollLikeSelector.select (selectors.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
)
#: Packages of the frames every stack starts with (the event loop, the thread pool, the CLI):
#: left out of the inclusive list, which would otherwise open with them.
_TRUNK = ("click", "threading", "asyncio", "concurrent", "runpy", "<module>", "kopf/cli.py")


def _frame(text: str) -> tuple[str, str]:
    """(``function (short path)``, package) of one collapsed frame."""
    match = _FRAME.match(text)
    if match is None:
        return text, "-"
    path = match["path"]
    if "site-packages/" in path:
        short = path.split("site-packages/", 1)[1]
    elif "/imagecopy/" in path:
        short = "imagecopy/" + path.split("/imagecopy/", 1)[1]
    else:
        short = re.sub(r"^.*/python3\.\d+/", "", path)
    package = short.split("/", 1)[0].removesuffix(".py")
    return f"{match['func']} ({short})", package


def summarize(raw: str, top: int = 15) -> str:
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames or _frame(frames[-1])[0] in _WAITING:
            continue
        total += count
        seen = set()
        for text in frames:
            name, _ = _frame(text)
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        leaf, package = _frame(frames[-1])
        own[leaf] += count
        packages[package] += count
    if total == 0:
        return "(no samples)"

    def pct(value: int) -> str:
        return f"{100 * value / total:.1f} %"

    lines = [
        f"{total} samples (busy threads only, waits left out).",
        "",
        "At the top of the stack, by package:",
        "",
    ]
    lines += [f"- {pct(c)} `{p}`" for p, c in packages.most_common(12)]
    lines += ["", "On the stack (inclusive):", ""]
    branches = [
        (n, c)
        for n, c in inclusive.most_common()
        if not n.split(" (", 1)[-1].startswith(_TRUNK)
        and not n.startswith(("<module>", "main (imagecopy/cli.py", "run_operator ("))
        and "kopf/_core/reactor/running.py" not in n
    ]
    lines += [f"- {pct(c)} `{n}`" for n, c in branches[: top * 2]]
    lines += ["", "At the top of the stack (self):", ""]
    lines += [f"- {pct(c)} `{n}`" for n, c in own.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]).read_text()))
