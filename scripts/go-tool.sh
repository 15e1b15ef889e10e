#!/usr/bin/env bash
# go-tool.sh NAME PACKAGE VERSION: build a Go command once per version into the per-user cache
# (~/.cache/imagecopy/tools/NAME-VERSION/) and link it into .tools/bin/NAME.
#   scripts/go-tool.sh crane github.com/google/go-containerregistry/cmd/crane v0.22.1
source "$(dirname "$0")/lib.sh"
name="$1"; pkg="$2"; version="$3"
dest="$TOOL_CACHE/$name-$version"
[ -x "$dest/$name" ] || tool_lock "$name-$version"
if [ ! -x "$dest/$name" ]; then
  log "building $name $version (go install $pkg@$version)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  GOBIN="$dest.tmp" CGO_ENABLED=0 retry go install "$pkg@$version"
  built="$(ls "$dest.tmp" | head -n1)"
  mv "$dest.tmp/$built" "$dest.tmp/$name" 2>/dev/null || true
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sf "$dest/$name" "$TOOLS_BIN/$name"
