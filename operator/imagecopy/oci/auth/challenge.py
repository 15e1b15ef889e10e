"""``WWW-Authenticate`` challenges: parsing, choosing the one to answer, checking its realm.

Pure functions over header text and a ``Registry``: no I/O. ``checked_realm`` is where a
token realm the egress rule (``oci.egress``) does not allow credentials to go to is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from imagecopy.oci.egress import EgressRule, HostList
from imagecopy.oci.errors import Unauthorized
from imagecopy.oci.reference import Registry

__all__ = ["Challenge", "checked_realm", "parse_www_authenticate", "usable_challenge"]

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` is lower-case, param keys too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm") or None

    @property
    def service(self) -> str | None:
        return self.params.get("service") or None

    @property
    def scopes(self) -> tuple[str, ...]:
        """The ``scope`` parameter, split on spaces (it may name several)."""
        return tuple(self.params.get("scope", "").split())


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; tolerates a missing closing quote."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    return "".join(out), pos


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 9110 §11.6.1) into challenges.

    Handles several challenges per value, quoted values with commas and escapes, unquoted
    values and any letter case of schemes and parameter names. Malformed parts are skipped
    rather than raised on: a challenge that lacks what its scheme needs is ignored later.
    """
    if isinstance(values, str):
        values = [values]
    challenges: list[tuple[str, dict[str, str]]] = []
    for text in values:
        pos = 0
        current: dict[str, str] | None = None
        while pos < len(text):
            pos = _skip(text, pos, " \t,")
            if pos >= len(text):
                break
            word, after = _read_token(text, pos)
            if not word:
                # Garbage: drop everything up to the next comma.
                while after < len(text) and text[after] != ",":
                    after = _read_quoted(text, after)[1] if text[after] == '"' else after + 1
                pos = after
                continue
            look = _skip(text, after, " \t")
            if look < len(text) and text[look] == "=" and current is not None:
                # ``key=value`` of the current challenge (``key==`` is a token68 tail: skip).
                look = _skip(text, look + 1, " \t")
                if look < len(text) and text[look] == '"':
                    value, pos = _read_quoted(text, look)
                else:
                    end = look
                    while end < len(text) and text[end] not in ", \t":
                        end += 1
                    value, pos = text[look:end], end
                current.setdefault(word.lower(), value)
            elif look < len(text) and text[look] == "=":
                # A parameter before any scheme: malformed, skip it.
                pos = look + 1
            else:
                current = {}
                challenges.append((word.lower(), current))
                pos = after
    return [Challenge(scheme, params) for scheme, params in challenges]


def usable_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer with a realm beats Basic; others are not supported."""
    candidates = list(challenges)
    for challenge in candidates:
        if challenge.scheme == "bearer" and challenge.realm:
            return challenge
    for challenge in candidates:
        if challenge.scheme == "basic":
            return challenge
    return None


def checked_realm(
    challenge: Challenge, registry: Registry, *, scheme: str, plain_http: HostList | None = None
) -> Challenge:
    """The Bearer ``challenge`` with its realm resolved against ``registry`` (reached under
    ``scheme``); raises ``Unauthorized`` for a realm credentials may not be sent to.

    The egress rule decides (``EgressRule.realm_refusal``): an HTTPS realm on any host; a
    plain-HTTP realm only on a host ``plain_http`` names — not because the registry is plain
    HTTP or insecure, nor because the realm is on the registry's host under another port.
    """
    realm_text = challenge.realm or ""
    try:
        realm = httpx.URL(registry.origin(scheme) + "/").join(realm_text)
        refusal = EgressRule(plain_http=plain_http or HostList()).realm_refusal(realm)
        realm.host  # noqa: B018 (decodes punycode: an invalid A-label raises here, not later)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        # UnicodeError: idna's error for a host such as ``xn--`` that no URL can carry.
        raise Unauthorized(
            f"registry {registry} sent a token realm that is not a valid URL",
            status=401,
            operation="token request",
            registry=str(registry),
        ) from None
    if refusal is not None:
        raise Unauthorized(
            f"registry {registry} asked for credentials to be sent to the token "
            f"realm {realm.scheme}://{realm.netloc.decode('ascii', 'replace')}, {refusal}; "
            "refusing to send them",
            status=401,
            operation="token request",
            registry=str(registry),
        )
    params = dict(challenge.params)
    params["realm"] = str(realm)
    return Challenge(challenge.scheme, params)
