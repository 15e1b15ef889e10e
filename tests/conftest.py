"""Shared fixtures: real registries, the token issuer, peers and the net proxy.

The fixtures live in :mod:`tests.support.fixtures` so ``e2e/conftest.py`` can import the same
ones. Names: ``registry_v2``, ``registry_v3``, ``registry_v2_basic``, ``registry_v3_token``,
``registry_tls``, ``token_issuer``, ``start_registry``, ``netproxy``, ``peer_tools``,
``unique_repo``, ``docker_config_dir``, ``tools_on_path`` (autouse).
"""

from tests.support.fixtures import *  # noqa: F403
