#!/usr/bin/env bash
# Build the Dockerfile here, where no engine runs and no base image can be pulled, to check it:
#
#   - the base: a stand-in for python:3.11-slim-bookworm, made from the offline build's cached
#     Debian base (Debian's python3 3.11 and venv). When the build machine's pip trusts its own CA
#     bundle (PIP_CERT or SSL_CERT_FILE, e.g. behind a TLS-inspecting proxy), the stand-in gets a
#     copy of it and PIP_CERT, so that pip inside the build reaches the same package index;
#   - the build: `buildah bud` with chroot isolation (no OCI runtime, no cgroups), vfs storage in
#     a throwaway directory, the host's network;
#   - the result: pushed to the OCI layout build/image/dockerfile-oci, tag $IMAGE_TAG, which
#     tests/image runs exactly like the offline image.
#
# This is a check of the Dockerfile (stages, bind mounts, install script, configuration), not the
# image to ship: a real `make image` starts from python:3.11-slim-bookworm. Needs root; installs
# buildah, umoci and debootstrap with apt-get when missing.
set -euo pipefail
NAME=image-dockerfile
# shellcheck source=container/lib.sh
source "$(dirname "$0")/lib.sh"
need_root

WORK=/var/tmp/sms-connector-dockerfile-$$   # lowercase: buildah parses the oci: path as a name

main() {
    local base work=$WORK layout=$OUT/dockerfile-oci cert=${PIP_CERT:-${SSL_CERT_FILE:-}}
    ensure_tools debootstrap:debootstrap umoci:umoci buildah:buildah
    mkdir -p "$OUT" "$CACHE"
    base=$(base_tarball)
    rm -rf "$work"; mkdir -p "$work"
    trap 'rm -rf "$WORK"' EXIT

    log "stand-in base image (Debian $SUITE python3)"
    umoci init --layout "$work/base"
    umoci new --image "$work/base:python"
    umoci unpack --image "$work/base:python" "$work/bundle" >/dev/null
    tar --numeric-owner --xattrs -C "$work/bundle/rootfs" -xf "$base"
    local env=(--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.env LANG=C.UTF-8)
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        cp "$cert" "$work/bundle/rootfs/etc/ssl/certs/build-machine-ca.pem"
        env+=(--config.env PIP_CERT=/etc/ssl/certs/build-machine-ca.pem)
    fi
    umoci repack --image "$work/base:python" "$work/bundle"
    umoci config --image "$work/base:python" "${env[@]}" --config.cmd python3
    rm -rf "$work/bundle"

    log "buildah bud (Dockerfile)"
    local storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
    buildah "${storage[@]}" bud --quiet --isolation chroot --network host --layers=false \
        --build-arg "PYTHON_IMAGE=oci:$work/base:python" --build-arg "VERSION=$VERSION" \
        --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE_URL" \
        -t "localhost/sms-connector:$TAG" "$ROOT" >/dev/null
    rm -rf "$layout"
    buildah "${storage[@]}" push --quiet "localhost/sms-connector:$TAG" "oci:$layout:$TAG"
    log "image oci:$layout:$TAG, $(numfmt --to=iec "$(du -sb --apparent-size "$layout/blobs" | cut -f1)") compressed"
}

main "$@"; exit   # one line: bash reads no further, even if the file changes meanwhile
