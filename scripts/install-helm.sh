#!/usr/bin/env bash
# install-helm.sh: build helm v3 from the Go module proxy into .tools/bin/helm, once per version
# (cached under ~/.cache/imagecopy/tools/helm-VERSION/). Used by tests/unit/test_chart.py and
# e2e/test_rbac.py.   bash scripts/install-helm.sh        (HELM_VERSION overrides the pin)
#
# Like scripts/go-tool.sh, but with the -ldflags of helm's own Makefile: a plain `go install`
# leaves helm believing it talks to Kubernetes 1.20 (`helm template` then rejects charts with a
# newer kubeVersion) and reporting no version.
source "$(dirname "$0")/lib.sh"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
K8S_MINOR="${HELM_K8S_MINOR:-34}"   # helm v3.19's client-go is v0.34
dest="$TOOL_CACHE/helm-$HELM_VERSION"
tool_lock "helm-$HELM_VERSION"
if [ ! -x "$dest/helm" ] \
  || [ "$("$dest/helm" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]; then
  log "building helm $HELM_VERSION (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$K8S_MINOR"
  done
  GOBIN="$dest.tmp" CGO_ENABLED=0 retry go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sf "$dest/helm" "$TOOLS_BIN/helm"
"$TOOLS_BIN/helm" version --short >&2
