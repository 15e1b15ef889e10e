#!/usr/bin/env bash
# build-control-plane.sh: provide etcd, kube-apiserver and kubectl for the end-to-end tests
# (the controller-runtime "envtest" layout: the three binaries in one folder).
#
# Resolution order:
#   1. KUBEBUILDER_ASSETS set and holding the three binaries            -> nothing to do.
#   2. TEST_ASSET_KUBE_APISERVER / TEST_ASSET_ETCD / TEST_ASSET_KUBECTL  -> those are used as is;
#      only the binaries they do not name are built.
#   3. The per-user cache ($TOOL_CACHE/k8s-<v>-etcd-<v>-<os>-<arch>/)    -> reused in seconds.
#   4. Otherwise build from Go modules into that cache (takes minutes; a few GiB of module cache):
#        - k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules
#          with local paths), so a wrapper module requires it and replaces every staging module
#          with its published v0.x.y version;
#        - etcd is built from go.etcd.io/etcd/server/v3 through a second wrapper module.
# Finally the binaries are linked into .tools/k8s/<k8s-version>-<os>-<arch>/ with the stable alias
# .tools/k8s/current, and kubectl into .tools/bin/.
#
# Environment: K8S_VERSION (default 1.34.4), ETCD_VERSION (default 3.6.16), BUILD_JOBS (go build -p,
# default: number of CPUs).
source "$(dirname "$0")/../../scripts/lib.sh"

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
BINARIES=(etcd kube-apiserver kubectl)

case "$(uname -m)" in
  x86_64 | amd64) ARCH=amd64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) ARCH="$(uname -m)" ;;
esac
OS="$(uname -s | tr '[:upper:]' '[:lower:]')"
PLATFORM="$OS-$ARCH"

has_all() { # has_all DIR: the three binaries are present and executable in DIR
  local b
  for b in "${BINARIES[@]}"; do [ -x "$1/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  if has_all "$KUBEBUILDER_ASSETS"; then
    log "control plane: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of ${BINARIES[*]}; building instead"
fi

# Binaries named by TEST_ASSET_* are not built.
provided() { # provided NAME: the TEST_ASSET_* override for NAME, if it names an executable
  local var
  var="TEST_ASSET_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')"
  [ -n "${!var:-}" ] && [ -x "${!var}" ]
}
if provided etcd && provided kube-apiserver && provided kubectl; then
  log "control plane: using TEST_ASSET_ETCD, TEST_ASSET_KUBE_APISERVER, TEST_ASSET_KUBECTL"
  exit 0
fi

CACHE_DIR="$TOOL_CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$PLATFORM"
SRC_DIR="$TOOL_CACHE/src"
LINK_DIR="$TOOLS_DIR/k8s/$K8S_VERSION-$PLATFORM"
mkdir -p "$CACHE_DIR" "$SRC_DIR"

# One build at a time per cache (two `make` runs, or two clones, on the same machine).
exec 9>"$CACHE_DIR.lock"
if ! flock -n 9; then
  log "another build of $CACHE_DIR is running; waiting for it"
  flock 9
fi

started=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }

# heartbeat LABEL CMD...: run CMD, printing a line every 30 s so a long build is visibly alive.
heartbeat() {
  local label="$1"
  shift
  (
    # ends by itself if the script is killed ($$ is the script, even in subshells)
    while sleep 30 && kill -0 $$ 2>/dev/null; do log "  ... still $label ($(elapsed) so far)"; done
  ) &
  local beat=$! rc=0
  "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false"
JOBS="${BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

build_kubernetes() {
  local mod="$SRC_DIR/kubernetes-$K8S_VERSION" staging_version="v0.${K8S_VERSION#1.}"
  log "[k8s] wrapper module for k8s.io/kubernetes v$K8S_VERSION in $mod"
  rm -rf "$mod" && mkdir -p "$mod" || return 1
  (
    cd "$mod" || exit 1
    go mod init imagecopy.dev/build/kubernetes >/dev/null 2>&1 || exit 1
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [ -f "$gomod" ] || { log "cannot read the go.mod of k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
    # Lines like "	k8s.io/api => ./staging/src/k8s.io/api" -> k8s.io/api
    local staged
    staged="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$gomod")"
    [ -n "$staged" ] || { log "no staging replace lines found in $gomod"; exit 1; }
    log "[k8s] replacing $(echo "$staged" | wc -l) staging modules with their $staging_version releases"
    local m args=()
    for m in $staged; do args+=("-replace=$m=$m@$staging_version"); done
    go mod edit "${args[@]}" "-require=k8s.io/kubernetes@v$K8S_VERSION" || exit 1
    cat >tools.go <<'EOF' || exit 1
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
    log "[k8s] go mod tidy (downloads the modules on the first run)"
    heartbeat "resolving modules" go mod tidy
  )
}

compile_kubernetes() {
  local mod="$SRC_DIR/kubernetes-$K8S_VERSION" out="$CACHE_DIR.k8s.tmp"
  local minor="${K8S_VERSION#*.}"
  minor="${minor%%.*}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  rm -rf "$out" && mkdir -p "$out" || return 1
  log "[k8s] go build kube-apiserver kubectl (-p $JOBS; the long part: ~10-20 min on 2 cores)"
  (cd "$mod" && heartbeat "compiling kube-apiserver and kubectl" \
    go build -p "$JOBS" -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) || return 1
  mv -f "$out/kube-apiserver" "$out/kubectl" "$CACHE_DIR/" || return 1
  rm -rf "$out"
}

build_etcd() {
  local mod="$SRC_DIR/etcd-$ETCD_VERSION" out="$CACHE_DIR.etcd.tmp"
  log "[etcd] wrapper module for go.etcd.io/etcd/server/v3 v$ETCD_VERSION in $mod"
  rm -rf "$mod" "$out" && mkdir -p "$mod" "$out" || return 1
  (
    cd "$mod" || exit 1
    go mod init imagecopy.dev/build/etcd >/dev/null 2>&1 || exit 1
    cat >tools.go <<'EOF' || exit 1
//go:build tools

// Package tools pins the command this module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    go mod edit "-require=go.etcd.io/etcd/server/v3@v$ETCD_VERSION" || exit 1
    heartbeat "resolving etcd modules" go mod tidy || exit 1
    log "[etcd] go build etcd"
    heartbeat "compiling etcd" go build -p "$JOBS" -ldflags "-s -w" -o "$out/etcd" \
      go.etcd.io/etcd/server/v3
  ) || return 1
  mv -f "$out/etcd" "$CACHE_DIR/etcd" || return 1
  rm -rf "$out"
}

need_k8s=false
need_etcd=false
if ! provided kube-apiserver || ! provided kubectl; then
  { [ -x "$CACHE_DIR/kube-apiserver" ] && [ -x "$CACHE_DIR/kubectl" ]; } || need_k8s=true
fi
if ! provided etcd; then
  [ -x "$CACHE_DIR/etcd" ] || need_etcd=true
fi

if $need_k8s || $need_etcd; then
  command -v go >/dev/null || { log "go is needed to build the control plane; install Go >= 1.24"; exit 1; }
  log "building the control plane (kubernetes v$K8S_VERSION, etcd v$ETCD_VERSION) into $CACHE_DIR"
  log "this happens once per machine; later runs reuse the cache"
fi
if $need_etcd; then
  retry build_etcd
  log "[etcd] done after $(elapsed)"
fi
if $need_k8s; then
  retry build_kubernetes
  retry compile_kubernetes
  log "[k8s] done after $(elapsed)"
fi

# Link into the repository: .tools/k8s/<version>-<platform>/{etcd,kube-apiserver,kubectl},
# .tools/k8s/current -> that folder, .tools/bin/kubectl. Overrides win over the cache.
mkdir -p "$LINK_DIR"
for b in "${BINARIES[@]}"; do
  var="TEST_ASSET_$(echo "$b" | tr '[:lower:]-' '[:upper:]_')"
  if provided "$b"; then src="${!var}"; else src="$CACHE_DIR/$b"; fi
  [ -x "$src" ] || { log "missing $src"; exit 1; }
  ln -sfn "$src" "$LINK_DIR/$b"
done
ln -sfn "$K8S_VERSION-$PLATFORM" "$TOOLS_DIR/k8s/current"
ln -sfn "$LINK_DIR/kubectl" "$TOOLS_BIN/kubectl"

log "control plane ready in $TOOLS_DIR/k8s/current ($(elapsed)):"
log "  $("$LINK_DIR/kube-apiserver" --version 2>&1 | head -n1)"
log "  etcd $("$LINK_DIR/etcd" --version 2>&1 | sed -n 's/^etcd Version: //p')"
log "  kubectl $("$LINK_DIR/kubectl" version --client 2>&1 | sed -n 's/^Client Version: //p')"
log "  (KUBEBUILDER_ASSETS=$TOOLS_DIR/k8s/current)"
