"""Registry authentication, one concern per module.

- ``challenge``: ``WWW-Authenticate`` parsing, the challenge to answer, the realm check.
- ``scopes``: the scopes a request needs (``request.extensions[SCOPES]``), merged, as grants.
- ``tokens``: ``TokenCache`` and ``ChallengeCache``, explicit objects a pool owns and shares.
- ``flow``: ``RegistryAuth``, the ``httpx.Auth`` flow for one registry and one credential.
"""

from imagecopy.oci.auth.challenge import (
    Challenge,
    checked_realm,
    parse_www_authenticate,
    usable_challenge,
)
from imagecopy.oci.auth.flow import CLIENT_ID, MAX_TOKEN_RESPONSE_BYTES, RegistryAuth
from imagecopy.oci.auth.scopes import (
    MOUNT_SOURCE,
    OPTIONAL_SCOPES,
    SCOPES,
    Grant,
    grants,
    merge_scopes,
    scopes_for_request,
)
from imagecopy.oci.auth.tokens import (
    MAX_CHALLENGES,
    MAX_EXPIRES_IN,
    MAX_TOKENS,
    ChallengeCache,
    RefusedScopes,
    Token,
    TokenCache,
    TokenKey,
    token_lifetime,
)

__all__ = [
    "CLIENT_ID",
    "MAX_CHALLENGES",
    "MAX_EXPIRES_IN",
    "MAX_TOKENS",
    "MAX_TOKEN_RESPONSE_BYTES",
    "MOUNT_SOURCE",
    "OPTIONAL_SCOPES",
    "SCOPES",
    "Challenge",
    "ChallengeCache",
    "Grant",
    "RefusedScopes",
    "RegistryAuth",
    "Token",
    "TokenCache",
    "TokenKey",
    "checked_realm",
    "grants",
    "merge_scopes",
    "parse_www_authenticate",
    "scopes_for_request",
    "token_lifetime",
    "usable_challenge",
]
