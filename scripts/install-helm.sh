#!/usr/bin/env bash
# install-helm.sh: build helm (v3) from the Go module proxy into .tools/bin/helm, once per version
# (cached under ~/.cache/imagecopy/tools/helm-VERSION/). Used by the chart tests and e2e/test_rbac.py.
#   bash scripts/install-helm.sh            # HELM_VERSION overrides the pinned version
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
exec "$(dirname "$0")/go-tool.sh" helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
