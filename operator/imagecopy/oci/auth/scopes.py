"""Token scopes a request needs, merged, and the grants they stand for.

Scope strings are built by ``Repository.scope`` (reference.py); this module only merges
already-built ones and compares what they grant. Requests name the scopes they need in
``request.extensions[SCOPES]`` (push scope first); a request without it gets scopes inferred
from its ``/v2/<name>/...`` path.

Some scopes are *optional*: a mount source's ``pull`` helps a request (the mount) but a
token without it still serves the copy. ``extensions[OPTIONAL_SCOPES]`` names them for any
request; ``extensions[MOUNT_SOURCE]`` names the one scope a mount request is pointless
without (also optional: the blob can be uploaded instead).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from imagecopy.oci.reference import Registry, Repository

__all__ = [
    "MOUNT_SOURCE",
    "OPTIONAL_SCOPES",
    "SCOPES",
    "Grant",
    "OptionalScopes",
    "drop_grants",
    "grants",
    "merge_scopes",
    "optional_scopes",
    "scopes_for_request",
]

#: Key in ``request.extensions``: ``tuple[str, ...]`` of token scopes, push scope first.
SCOPES = "imagecopy.scopes"
#: Key in ``request.extensions``: ``tuple[str, ...]`` of scopes the request can do without.
OPTIONAL_SCOPES = "imagecopy.optional-scopes"
#: Key in ``request.extensions``: the mount source's ``pull`` scope of a mount request.
MOUNT_SOURCE = "imagecopy.mount-source"

#: One action on one resource: ``(type, name, action)``; a scope of an unknown shape is
#: ``(scope, "", "")``.
Grant = tuple[str, str, str]

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_MARKERS = ("/manifests/", "/blobs/", "/tags/", "/referrers/")


def _split_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``type:name:a,b`` → (type, name, [a, b]); ``None`` for scopes of another shape."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, [a for a in actions.split(",") if a]


def _order_actions(actions: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(actions))
    rank = {"push": 0, "pull": 1}
    return sorted(unique, key=lambda a: rank.get(a, 2))  # sorted() is stable for the rest


def merge_scopes(*groups: Iterable[str]) -> tuple[str, ...]:
    """Merge token scopes: one scope per resource with the union of actions, deduplicated.

    ``repository:a:pull`` + ``repository:a:push`` → ``repository:a:push,pull``. Scopes that
    carry ``push`` come first; otherwise first-seen order is kept. Scopes of an unknown shape
    are kept verbatim.
    """
    merged: dict[tuple[str, str], list[str]] = {}
    for group in groups:
        for scope in group:
            parsed = _split_scope(scope)
            if parsed is None:
                if scope:
                    merged.setdefault((scope, ""), [])
                continue
            kind, name, actions = parsed
            merged.setdefault((kind, name), []).extend(actions)
    rendered: list[tuple[bool, str]] = []
    for (kind, name), actions in merged.items():
        if not name:  # verbatim scope
            rendered.append((False, kind))
            continue
        ordered = _order_actions(actions)
        rendered.append(("push" in ordered, f"{kind}:{name}:{','.join(ordered)}"))
    return tuple(text for push, text in rendered if push) + tuple(
        text for push, text in rendered if not push
    )


def grants(scopes: Iterable[str]) -> frozenset[Grant]:
    """What ``scopes`` grant, one ``(type, name, action)`` each: a token asked for scopes
    whose grants include another set's covers that set too."""
    out: set[Grant] = set()
    for scope in scopes:
        parsed = _split_scope(scope)
        if parsed is None:
            out.add((scope, "", ""))
            continue
        kind, name, actions = parsed
        out.update((kind, name, action) for action in actions)
    return frozenset(out)


def drop_grants(scopes: Iterable[str], drop: frozenset[Grant]) -> tuple[str, ...]:
    """``scopes`` without the actions ``drop`` names; a scope left with none goes."""
    kept: list[str] = []
    for scope in scopes:
        parsed = _split_scope(scope)
        if parsed is None:
            if (scope, "", "") not in drop:
                kept.append(scope)
            continue
        kind, name, actions = parsed
        left = [a for a in actions if (kind, name, a) not in drop]
        if left:
            kept.append(f"{kind}:{name}:{','.join(left)}")
    return merge_scopes(kept)


@dataclass(frozen=True)
class OptionalScopes:
    """What a request's token may go without (``optional``), and what of that the request
    itself is pointless without (``essential``: a mount's source)."""

    optional: frozenset[Grant] = frozenset()
    essential: frozenset[Grant] = frozenset()


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return ()


def optional_scopes(request: httpx.Request) -> tuple[tuple[str, ...], OptionalScopes]:
    """The optional scopes a request names (to ask for along with its own) and, as grants,
    what of them may be dropped: never a grant its own ``SCOPES`` require."""
    listed = _strings(request.extensions.get(OPTIONAL_SCOPES))
    source = _strings(request.extensions.get(MOUNT_SOURCE))
    if not listed and not source:
        return (), OptionalScopes()
    required = grants(_strings(request.extensions.get(SCOPES)))
    optional = grants((*listed, *source)) - required
    return merge_scopes(listed, source), OptionalScopes(optional, grants(source) & optional)


def _registry_of(url: httpx.URL) -> Registry:
    """The registry a URL names, from the host and port httpx has already parsed (a scope
    names only the repository path, but a ``Repository`` belongs to a registry)."""
    host = url.host.lower()
    return Registry(f"[{host}]" if ":" in host else host, url.port)


def scopes_for_request(request: httpx.Request) -> tuple[str, ...]:
    """The scopes a request needs: ``extensions[SCOPES]``, else inferred from its path.

    Inference covers ``/v2/<name>/{manifests,blobs,tags,referrers}/…``: ``pull`` for reads,
    ``push,pull`` for writes, plus ``pull`` on the ``from`` repository of a mount.
    """
    explicit = request.extensions.get(SCOPES)
    if isinstance(explicit, str):
        return merge_scopes([explicit])
    if isinstance(explicit, Iterable):
        return merge_scopes(str(s) for s in explicit)
    path = request.url.path
    if not path.startswith("/v2/"):
        return ()
    positions = [path.rfind(marker) for marker in _PATH_MARKERS]
    end = max(positions)
    if end <= len("/v2/"):
        return ()
    registry = _registry_of(request.url)
    actions = ("push", "pull") if request.method.upper() in _WRITE_METHODS else ("pull",)
    scopes = [Repository(registry, path[len("/v2/") : end]).scope(*actions)]
    mount_from = request.url.params.get("from")
    if mount_from and request.method.upper() == "POST":
        scopes.append(Repository(registry, mount_from).scope("pull"))
    return merge_scopes(scopes)
