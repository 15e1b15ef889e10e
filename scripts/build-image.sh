#!/usr/bin/env bash
# build-image.sh: build the operator image from the repository's Dockerfile without a container
# daemon or a pullable base image, and write it as an OCI archive.   make image
#
#  1. base root filesystem: Debian bookworm minbase + python3, python3-venv, ca-certificates,
#     made by mmdebstrap without docs, man pages, locales or apt lists; cached as a tarball in the
#     per-user tool cache (~/.cache/imagecopy/tools/rootfs-bookworm-HASH.tar), keyed by a hash
#     of this script's package list and options, like the Go tools.
#  2. that tarball as a local base image (buildah from scratch + add), passed to the Dockerfile
#     as PYTHON_IMAGE (a user with a registry builds on python:3.11-slim-bookworm instead).
#  3. wheels for the package and its runtime dependencies, built on the host (pip wheel) into
#     dist/wheels/: the build container has no CA the host trusts beyond Debian's.
#  4. buildah build --isolation chroot --storage-driver vfs, then buildah push to
#     dist/imagecopy-image.tar (oci-archive); prints compressed and uncompressed sizes.
#
# Environment: IMAGE_TAG (default localhost/imagecopy:dev), IMAGE_ARCHIVE (default
# dist/imagecopy-image.tar), BUILDAH_ROOT (image storage; default in the tool cache),
# IMAGE_REBUILD=1 (build even when no input changed since the archive was written).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
apt_install buildah mmdebstrap

IMAGE_TAG="${IMAGE_TAG:-localhost/imagecopy:dev}"
IMAGE_ARCHIVE="${IMAGE_ARCHIVE:-$REPO_ROOT/dist/imagecopy-image.tar}"
BUILDAH_ROOT="${BUILDAH_ROOT:-$TOOL_CACHE/buildah-vfs}"
PY="${PY:-$REPO_ROOT/.venv/bin/python}"
buildah_() {
  buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_ROOT/run" --storage-driver vfs "$@"
}
now() { date +%s.%N; }
elapsed() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }

# --- 1. the base root filesystem -------------------------------------------------------------
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates"
MM_OPTS=(
  --variant=minbase --include="$PACKAGES"
  # Merge /usr with mmdebstrap's hook, not the usrmerge package (it pulls in all of perl).
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  # No runtime needs apt's lists and caches, logs, or glibc's iconv modules (Python has its own codecs).
  # Nor apt: the image is never upgraded in place (16 MB with gnutls, gpgv and the keyring).
  --customize-hook='chroot "$1" dpkg --purge apt libapt-pkg6.0 gpgv debian-archive-keyring libgnutls30 libhogweed6 libnettle8 libp11-kit0 libtasn1-6 libidn2-0 libunistring2 libseccomp2 libxxhash0'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/* "$1"/usr/lib/x86_64-linux-gnu/gconv'
)
key="$(printf '%s\n' "$SUITE" "$PACKAGES" "${MM_OPTS[@]}" | sha256sum | cut -c1-16)"
rootfs="$TOOL_CACHE/rootfs-$SUITE-$key.tar"
base_image="localhost/imagecopy-base:$key"
# The archive is rebuilt only when an input changed (IMAGE_REBUILD=1 forces it; the wheels of the
# dependencies are then resolved again).
inputs="$( (echo "$key $IMAGE_TAG"; find Dockerfile .dockerignore pyproject.toml README.md \
  scripts/build-image.sh operator/imagecopy -type f -not -name '*.pyc' | LC_ALL=C sort \
  | xargs sha256sum) | sha256sum | cut -c1-32)"
if [ -z "${IMAGE_REBUILD:-}" ] && [ -s "$IMAGE_ARCHIVE" ] \
  && [ "$(cat "$IMAGE_ARCHIVE.inputs" 2>/dev/null)" = "$inputs" ]; then
  log "image up to date (inputs $inputs): $IMAGE_ARCHIVE"
  "$PY" -m testkit.oci_archive "$IMAGE_ARCHIVE"
  exit 0
fi
rm -f "$IMAGE_ARCHIVE.inputs"

tool_lock "rootfs-$SUITE-$key"
if [ ! -s "$rootfs" ]; then
  log "building the base root filesystem ($SUITE minbase + $PACKAGES) with mmdebstrap"
  t=$(now)
  # SOURCE_DATE_EPOCH: the same inputs give the same tarball.
  SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}" \
    retry mmdebstrap --format=tar "${MM_OPTS[@]}" "$SUITE" "$rootfs.tmp" "$MIRROR" \
    >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  mv "$rootfs.tmp" "$rootfs"
  log "base root filesystem built in $(elapsed "$t")s: $rootfs ($(du -m "$rootfs" | cut -f1) MiB)"
else
  log "base root filesystem cached: $rootfs"
fi

# --- 2. the base image -----------------------------------------------------------------------
mkdir -p "$BUILDAH_ROOT"
exec 9>"$BUILDAH_ROOT.lock"
flock 9   # one build at a time per storage: other checkouts wait here
if ! buildah_ inspect --type image "$base_image" >/dev/null 2>&1; then
  log "importing it as $base_image"
  t=$(now)
  ctr="$(buildah_ from scratch)"
  buildah_ add "$ctr" "$rootfs" / >/dev/null
  buildah_ config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /usr/bin/python3 "$ctr"
  buildah_ commit --quiet --rm "$ctr" "$base_image" >/dev/null
  log "base image imported in $(elapsed "$t")s"
  # Base images of other package lists are stale: vfs keeps full copies.
  for stale in $(buildah_ images --format '{{.Name}}:{{.Tag}}' | grep '/imagecopy-base:' | grep -v ":$key\$"); do
    buildah_ rmi "$stale" >/dev/null 2>&1 || true
  done
fi

# --- 3. the wheels ---------------------------------------------------------------------------
t=$(now)
host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
base_py="$(tar -tf "$rootfs" | grep -oE 'usr/bin/python3\.[0-9]+$' | sort -u | head -n1 | sed 's|usr/bin/python||')"
if [ "$host_py" != "$base_py" ]; then
  log "the host Python is $host_py, the image's is $base_py: the wheels would not match"; exit 1
fi
find dist/wheels -name '*.whl' -delete
retry "$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir dist/wheels . >&2
log "wheels built in $(elapsed "$t")s ($(ls dist/wheels/*.whl | wc -l) wheels)"

# --- 4. the image ----------------------------------------------------------------------------
t=$(now)
# A context of only what the Dockerfile copies: buildah walks the whole context directory before
# it applies .dockerignore, and .tools/ and .venv/ cost it half a minute.
ctx="$REPO_ROOT/dist/context"
rm -rf "$ctx" && mkdir -p "$ctx/operator" "$ctx/dist"
cp pyproject.toml README.md .dockerignore "$ctx/"
cp -r operator/imagecopy "$ctx/operator/"
cp -r dist/wheels "$ctx/dist/"
buildah_ build --quiet --isolation chroot --layers=false \
  --build-arg PYTHON_IMAGE="$base_image" -f Dockerfile -t "$IMAGE_TAG" "$ctx" >/dev/null
rm -rf "$ctx"
mkdir -p "$(dirname "$IMAGE_ARCHIVE")"
rm -f "$IMAGE_ARCHIVE"
buildah_ push --quiet "$IMAGE_TAG" "oci-archive:$IMAGE_ARCHIVE:$IMAGE_TAG"
log "image built in $(elapsed "$t")s"
# Keep the base image (the next build reuses it), drop the rest: vfs stores every layer in full,
# and the archive is the build's output.
buildah_ rmi "$IMAGE_TAG" >/dev/null 2>&1 || true
buildah_ rmi --prune >/dev/null 2>&1 || true
echo "$inputs" >"$IMAGE_ARCHIVE.inputs"
"$PY" -m testkit.oci_archive "$IMAGE_ARCHIVE"
