#!/usr/bin/env bash
# sync-crds.sh: copy the canonical CRD(s) of deploy/crds/ into the Helm chart's crds/ folder, byte
# for byte (tests/unit/test_chart.py checks they are identical). Run it after editing a CRD.
#   deploy/sync-crds.sh           # copy
#   deploy/sync-crds.sh --check   # exit 1 and name the files that differ; copy nothing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/crds"
dst="$here/helm/imagecopy-operator/crds"
check=false
[ "${1:-}" = "--check" ] && check=true
mkdir -p "$dst"
status=0
for f in "$src"/*.yaml; do
  name="$(basename "$f")"
  if cmp -s "$f" "$dst/$name"; then
    continue
  fi
  if $check; then
    echo "differs: $dst/$name (run deploy/sync-crds.sh)" >&2
    status=1
  else
    cp "$f" "$dst/$name"
    echo "synced: $name"
  fi
done
exit "$status"
