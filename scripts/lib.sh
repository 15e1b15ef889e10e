# Shared helpers for the install scripts. Source it; do not run it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO_ROOT/.tools}"
TOOLS_BIN="$TOOLS_DIR/bin"
TOOL_CACHE="${IMAGECOPY_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imagecopy/tools}"
mkdir -p "$TOOLS_BIN" "$TOOL_CACHE"

log() { printf '[tools] %s\n' "$*" >&2; }

# retry CMD...: run a download/build step, once more after a pause if it fails.
retry() {
  if "$@"; then return 0; fi
  log "failed: $* — retrying once in 5s"
  sleep 5
  "$@"
}

# tool_lock NAME: hold an exclusive lock on the cache entry NAME until this script exits, so two
# checkouts building the same tool at once wait for each other instead of racing on NAME.tmp.
tool_lock() {
  exec 8>"$TOOL_CACHE/$1.lock"
  flock 8
}

# apt_install PKG...: install Debian packages when a binary is missing (needs root).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "apt-get install ${missing[*]}"
  retry $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive retry $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
