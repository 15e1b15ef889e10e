"""The memory of registry auth: bearer tokens and challenges, as explicit objects.

A pool (or any process-wide owner) makes one ``TokenCache`` and one ``ChallengeCache`` and
hands them to every ``RegistryAuth`` it creates. Tokens are keyed by registry, credential
fingerprint (``Credential.cache_key``) and grants, so a token fetched with one credential is
never served to a request made with another, anonymous included. Challenges are not secret
and are remembered per registry only, so the first request of a later copy carries a token
instead of paying a 401 round trip. Both caches are bounded. No I/O here: the fetch is the
caller's.

``RefusedScopes`` remembers, per registry and credential, the optional scopes (a mount
source's ``pull``) a token service refused, so a token request that names them is not made
again for a while (Docker Hub refuses a whole token request for one such scope).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagecopy.oci.auth.challenge import Challenge
from imagecopy.oci.auth.scopes import Grant
from imagecopy.oci.credentials import CredentialKey
from imagecopy.oci.reference import Registry

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "MAX_CHALLENGES",
    "MAX_EXPIRES_IN",
    "MAX_TOKENS",
    "REFUSED_SCOPE_SECONDS",
    "ChallengeCache",
    "RefusedScopes",
    "Token",
    "TokenCache",
    "TokenKey",
    "token_lifetime",
]

#: Seconds a token lives when its answer names no ``expires_in`` (the distribution spec's 60).
DEFAULT_EXPIRES_IN = 60.0
#: The longest a token is kept, whatever its answer says: a day.
MAX_EXPIRES_IN = 86400.0
#: Default bound of a ``TokenCache``: beyond it the oldest tokens are dropped.
MAX_TOKENS = 4096
#: Default bound of a ``ChallengeCache``.
MAX_CHALLENGES = 1024
#: Seconds a refused optional scope is remembered before a token request may name it again.
REFUSED_SCOPE_SECONDS = 600.0
#: Default bound of a ``RefusedScopes`` (grants remembered, all owners together).
MAX_REFUSED = 4096


def token_lifetime(
    answer: Mapping[str, Any], *, wall_clock: Callable[[], float] = time.time
) -> float:
    """Seconds a token stays valid from now, per the answer's ``expires_in`` and
    ``issued_at``: at most ``MAX_EXPIRES_IN`` (a huge integer or ``1e400`` included), and
    ``DEFAULT_EXPIRES_IN`` when ``expires_in`` is not a positive number (NaN, ``true``, text).
    """
    raw = answer.get("expires_in")
    lifetime = DEFAULT_EXPIRES_IN
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        # ``float(10**400)`` raises OverflowError; ``1e400`` parses as infinity.
        if isinstance(raw, int) or math.isfinite(raw):
            if raw > 0:
                lifetime = float(min(raw, MAX_EXPIRES_IN))
        elif raw > 0:  # +infinity
            lifetime = MAX_EXPIRES_IN
    issued = answer.get("issued_at")
    if isinstance(issued, str) and issued:
        try:
            issued_at = datetime.fromisoformat(issued).timestamp()
        except (ValueError, OverflowError, OSError):
            # OverflowError/OSError: a date the platform's clock cannot represent.
            return lifetime
        age = wall_clock() - issued_at
        # A negative or huge age means clock skew between us and the token service.
        if 0 <= age < lifetime:
            lifetime -= age
    return lifetime


@dataclass(frozen=True, eq=False)
class Token:
    """A bearer token and what it grants; compared by identity."""

    value: str = field(repr=False)
    grants: frozenset[Grant]
    #: Clock value after which the token is fetched again.
    refresh_at: float

    @classmethod
    def from_answer(
        cls, value: str, grants: frozenset[Grant], answer: Mapping[str, Any], *, now: float
    ) -> Token:
        """The token a token-service ``answer`` carries, fetched at clock value ``now``."""
        lifetime = token_lifetime(answer)
        # Fetch again a little before expiry so a request never carries a dying token.
        margin = min(10.0, lifetime / 6)
        return cls(value=value, grants=grants, refresh_at=now + lifetime - margin)


@dataclass(frozen=True)
class TokenKey:
    """What a token is asked for: on ``registry``, with ``credential``, for ``grants``."""

    registry: Registry
    credential: CredentialKey
    grants: frozenset[Grant]


_Owner = tuple[Registry, CredentialKey]


@dataclass
class _Flight:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class TokenCache:
    """Bearer tokens by (registry, credential, grants), with expiry and single-flight fetches.

    A lookup returns the newest fresh token of the same registry and credential whose grants
    cover the key's (a ``push,pull`` token serves a ``pull`` request). Expired tokens of that
    registry and credential are dropped on every lookup; past ``max_entries`` the oldest
    tokens go first. Meant to be owned by one pool and shared by every ``RegistryAuth`` it
    creates, inside one event loop; those flows read one clock (``refresh_at`` and ``now``
    are values of it).
    """

    def __init__(self, *, max_entries: int = MAX_TOKENS) -> None:
        if max_entries < 1:
            raise ValueError("a token cache holds at least one token")
        self._max = max_entries
        # Tokens per owner, oldest first, and every stored key, oldest first (for the bound).
        self._owners: dict[_Owner, dict[frozenset[Grant], Token]] = {}
        self._order: OrderedDict[TokenKey, None] = OrderedDict()
        self._flights: dict[TokenKey, _Flight] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return f"TokenCache(tokens={len(self)}, max_entries={self._max})"

    def lookup(self, key: TokenKey, now: float) -> Token | None:
        """The newest token fresh at clock value ``now`` that covers ``key``, if any."""
        owner = (key.registry, key.credential)
        tokens = self._owners.get(owner)
        if not tokens:
            return None
        for grants, token in list(tokens.items()):
            if token.refresh_at <= now:
                self._remove(TokenKey(key.registry, key.credential, grants))
        for token in reversed(tokens.values()):  # newest first
            if key.grants <= token.grants:
                return token
        return None

    def store(self, key: TokenKey, token: Token) -> None:
        """Remember ``token``, fetched for ``key``'s registry and credential."""
        stored = TokenKey(key.registry, key.credential, token.grants)
        self._remove(stored)
        self._owners.setdefault((key.registry, key.credential), {})[token.grants] = token
        self._order[stored] = None
        while len(self._order) > self._max:
            oldest = next(iter(self._order))
            self._remove(oldest)

    def discard(self, key: TokenKey, token: Token) -> None:
        """Forget ``token`` (the registry refused it), if it is still the one stored."""
        stored = TokenKey(key.registry, key.credential, token.grants)
        if self._owners.get((key.registry, key.credential), {}).get(token.grants) is token:
            self._remove(stored)

    async def get(
        self, key: TokenKey, fetch: Callable[[], Awaitable[Token]], *, clock: Callable[[], float]
    ) -> Token:
        """A token covering ``key``: a cached one, else ``fetch()``'s, stored.

        Concurrent callers with one key wait for a single fetch (single flight); when it
        fails, the next waiter fetches in turn.
        """
        token = self.lookup(key, clock())
        if token is not None:
            return token
        flight = self._flights.setdefault(key, _Flight())
        flight.users += 1
        try:
            async with flight.lock:
                # Whoever held the lock may have fetched what we need.
                token = self.lookup(key, clock())
                if token is not None:
                    return token
                token = await fetch()
                self.store(key, token)
                return token
        finally:
            flight.users -= 1
            if flight.users == 0 and self._flights.get(key) is flight:
                del self._flights[key]

    def _remove(self, stored: TokenKey) -> None:
        owner = (stored.registry, stored.credential)
        tokens = self._owners.get(owner)
        if tokens is not None:
            tokens.pop(stored.grants, None)
            if not tokens:
                del self._owners[owner]
        self._order.pop(stored, None)


class ChallengeCache:
    """The last usable challenge of each registry (not secret), bounded: past
    ``max_entries`` registries, the one remembered longest ago is forgotten."""

    def __init__(self, *, max_entries: int = MAX_CHALLENGES) -> None:
        if max_entries < 1:
            raise ValueError("a challenge cache holds at least one challenge")
        self._max = max_entries
        self._challenges: OrderedDict[Registry, Challenge] = OrderedDict()

    def __len__(self) -> int:
        return len(self._challenges)

    def __repr__(self) -> str:
        return f"ChallengeCache(registries={[str(r) for r in self._challenges]!r})"

    def get(self, registry: Registry) -> Challenge | None:
        return self._challenges.get(registry)

    def remember(self, registry: Registry, challenge: Challenge) -> None:
        self._challenges.pop(registry, None)
        self._challenges[registry] = challenge
        while len(self._challenges) > self._max:
            self._challenges.popitem(last=False)


class RefusedScopes:
    """Optional grants a token service refused, per (registry, credential), each for
    ``seconds`` of the callers' clock; bounded (past ``max_entries`` the oldest go first).

    ``lock(owner)`` serialises the finding-out, so concurrent requests that meet one refusal
    pay for it once.
    """

    def __init__(
        self, *, seconds: float = REFUSED_SCOPE_SECONDS, max_entries: int = MAX_REFUSED
    ) -> None:
        if max_entries < 1:
            raise ValueError("a refused-scope memory holds at least one grant")
        self.seconds = seconds
        self._max = max_entries
        self._until: OrderedDict[tuple[Registry, CredentialKey, Grant], float] = OrderedDict()
        self._locks: dict[_Owner, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __repr__(self) -> str:
        return f"RefusedScopes(grants={len(self)}, seconds={self.seconds})"

    def refused(
        self, registry: Registry, credential: CredentialKey, among: frozenset[Grant], now: float
    ) -> frozenset[Grant]:
        """Which of ``among`` are remembered as refused at clock value ``now``."""
        out: set[Grant] = set()
        for grant in among:
            key = (registry, credential, grant)
            until = self._until.get(key)
            if until is None:
                continue
            if until <= now:
                del self._until[key]
            else:
                out.add(grant)
        return frozenset(out)

    def remember(
        self,
        registry: Registry,
        credential: CredentialKey,
        refused: frozenset[Grant],
        now: float,
    ) -> None:
        for grant in refused:
            key = (registry, credential, grant)
            self._until.pop(key, None)
            self._until[key] = now + self.seconds
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def lock(self, registry: Registry, credential: CredentialKey) -> asyncio.Lock:
        """The lock under which one owner's refusals are found out."""
        return self._locks.setdefault((registry, credential), asyncio.Lock())
