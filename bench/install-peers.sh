#!/usr/bin/env bash
# Benchmark-only peers on top of scripts/install-tools.sh: regctl (regclient), built once per
# version into the per-user tool cache and linked into .tools/bin. Failure is not fatal: the
# benchmark then skips the regctl rows and says so.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
REGCTL_VERSION="${REGCTL_VERSION:-v0.11.7}"
if ! bash "$here/../scripts/go-tool.sh" regctl github.com/regclient/regclient/cmd/regctl "$REGCTL_VERSION"; then
  echo "install-peers: regctl $REGCTL_VERSION could not be built; its rows will be skipped" >&2
  exit 0
fi
