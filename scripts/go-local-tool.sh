#!/usr/bin/env bash
# go-local-tool.sh NAME DIR: build the Go program kept in the repository at DIR (its own go.mod
# and go.sum, dependencies from the Go module proxy) once per content hash into the per-user
# cache (~/.cache/imagecopy/tools/NAME-<hash>/) and link it into .tools/bin/NAME.
#   scripts/go-local-tool.sh ggcr-registry testkit/ggcr-registry
source "$(dirname "$0")/lib.sh"
name="$1"; src="$REPO_ROOT/$2"
hash="$(cat "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -c1-12)"
dest="$TOOL_CACHE/$name-$hash"
[ -x "$dest/$name" ] || tool_lock "$name-$hash"
if [ ! -x "$dest/$name" ]; then
  log "building $name from $2 ($hash)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly retry go build -o "$dest.tmp/$name" .)
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sf "$dest/$name" "$TOOLS_BIN/$name"
