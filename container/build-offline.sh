#!/usr/bin/env bash
# Build the sms-connector OCI image without a container engine, a daemon or a registry:
#
#   1. the wheels: every wheel of container/requirements.txt (pip, hashes checked) and the
#      project's own wheel, built from the work tree's files (tracked and untracked, not ignored);
#   2. the base: a minimal Debian bookworm root filesystem with Debian's python3 (3.11, as
#      requires-python wants) and CA certificates, by debootstrap, cleaned of apt lists, caches,
#      docs (copyright files stay), man pages and translations. Cached, see below;
#   3. the app: container/install-app.sh run in that root filesystem through chroot (the same
#      script the Dockerfile runs): /opt/sms-connector, the user 10001;
#   4. the image: committed with umoci as two layers (base, app), with the image configuration
#      of the Dockerfile (user 10001:10001, entrypoint sms-connector, cmd worker, OCI labels).
#
# Output (IMAGE_OUT, default build/image/):
#   oci/                          OCI image layout, tag $IMAGE_TAG (default: the project version)
#   sms-connector-TAG.oci.tar     the same as one archive (docker load / podman load / skopeo)
#   sbom.txt                      size, digest, and every Debian and Python package inside
#
# The base is cached in $IMAGE_CACHE (default ~/.cache/sms-connector/image), keyed
# by the suite, the package list and this script's base recipe, and rebuilt after
# $BASE_MAX_AGE_DAYS (7) days so that Debian's security updates get in. The app layer is always
# rebuilt. Needs root (debootstrap, chroot, file ownership); installs debootstrap and umoci with
# apt-get when missing.
set -euo pipefail

NAME=image-offline
# shellcheck source=container/lib.sh
source "$(dirname "$0")/lib.sh"
need_root

# 1. Wheels --------------------------------------------------------------------------------------
build_wheels() {
    local wheels=$1 src
    rm -rf "$wheels"; mkdir -p "$wheels"
    log "wheels of $(grep -c '^[A-Za-z]' "$LOCK") locked packages (pip, hashes checked)"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --require-hashes --no-deps \
        --only-binary=:all: -r "$LOCK" -w "$wheels"
    # The project from a clean copy of the work tree: no stale setuptools build/ directory, no
    # ignored files (caches, .venv) can end up in the wheel.
    src=$(mktemp -d)
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
            | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$src"
    else
        tar -C "$ROOT" --exclude-vcs --exclude=./.venv --exclude=./build -cf - . | tar -xf - -C "$src"
    fi
    log "wheel of sms-connector $VERSION"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "$src" -w "$wheels"
    rm -rf "$src"
}

# 3 and 4. App layer and image -------------------------------------------------------------------
commit_image() {
    local base=$1 wheels=$2 layout=$OUT/oci bundle=$OUT/bundle
    rm -rf "$layout" "$bundle"
    umoci init --layout "$layout"
    umoci new --image "$layout:$TAG"
    umoci unpack --image "$layout:$TAG" "$bundle" >/dev/null
    tar --numeric-owner --xattrs -C "$bundle/rootfs" -xf "$base"
    log "layer 1: Debian $SUITE with python3"
    umoci repack --refresh-bundle --history.created_by "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE" \
        --image "$layout:$TAG" "$bundle"

    log "layer 2: sms-connector (container/install-app.sh in chroot)"
    mkdir -p "$bundle/rootfs/tmp/wheels"
    cp "$wheels"/*.whl "$bundle/rootfs/tmp/wheels/"
    cp "$ROOT/container/install-app.sh" "$bundle/rootfs/tmp/install-app.sh"
    chroot "$bundle/rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        /bin/sh /tmp/install-app.sh /tmp/wheels
    rm -rf "$bundle/rootfs"/tmp/* "$bundle/rootfs"/root/.cache
    umoci repack --history.created_by "container/install-app.sh (sms-connector $VERSION, container/requirements.txt)" \
        --image "$layout:$TAG" "$bundle"

    umoci config --image "$layout:$TAG" --no-history \
        --config.user 10001:10001 --config.workingdir / \
        --config.entrypoint sms-connector --config.cmd worker \
        --config.exposedports 8080/tcp --config.stopsignal SIGTERM \
        --config.env PATH=/opt/sms-connector/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 --config.env LANG=C.UTF-8 \
        --config.label org.opencontainers.image.title=sms-connector \
        --config.label "org.opencontainers.image.description=Kafka <-> SMS provider bridge" \
        --config.label "org.opencontainers.image.version=$VERSION" \
        --config.label "org.opencontainers.image.revision=$REVISION" \
        --config.label "org.opencontainers.image.source=$SOURCE_URL" \
        --config.label org.opencontainers.image.licenses=Apache-2.0 \
        --config.label "org.opencontainers.image.base.name=debian:$SUITE (debootstrap)" \
        --manifest.annotation "org.opencontainers.image.version=$VERSION" \
        --manifest.annotation "org.opencontainers.image.revision=$REVISION"
    umoci gc --layout "$layout"
    chmod -R a+rX "$layout"   # umoci writes blobs 0600; the layout and its archive are for anyone
}

write_sbom() {
    local rootfs=$OUT/bundle/rootfs layout=$OUT/oci sbom=$OUT/sbom.txt manifest compressed unpacked
    manifest=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json")
    compressed=$(du -sb --apparent-size "$layout/blobs" | cut -f1)
    unpacked=$(du -sb --apparent-size "$rootfs" | cut -f1)
    {
        echo "# sms-connector image $TAG: packages inside (generated by container/build-offline.sh)"
        echo "image:        oci:$layout:$TAG"
        echo "manifest:     $manifest"
        echo "revision:     $REVISION"
        echo "compressed:   $compressed bytes ($(numfmt --to=iec "$compressed")), every blob of the layout"
        echo "unpacked:     $unpacked bytes ($(numfmt --to=iec "$unpacked")), the root filesystem"
        echo
        echo "## Debian packages ($SUITE): name version"
        dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Package} ${Version}\n' | sort
        echo
        echo "## Python packages in /opt/sms-connector: name version"
        chroot "$rootfs" /opt/sms-connector/bin/python -I -c \
            'import importlib.metadata as m; print("\n".join(sorted(f"{d.name} {d.version}" for d in m.distributions())))'
    } > "$sbom"
    log "image oci:$layout:$TAG  manifest $manifest"
    log "size: $(numfmt --to=iec "$compressed") compressed, $(numfmt --to=iec "$unpacked") unpacked; packages: $sbom"
}

main() {
    local started=$SECONDS base
    ensure_tools debootstrap:debootstrap umoci:umoci
    mkdir -p "$OUT" "$CACHE"
    build_wheels "$OUT/wheels"
    base=$(base_tarball)
    commit_image "$base" "$OUT/wheels"
    write_sbom
    rm -rf "$OUT/bundle"
    log "archive $OUT/sms-connector-$TAG.oci.tar"
    tar -C "$OUT/oci" -cf "$OUT/sms-connector-$TAG.oci.tar" .
    log "done in $((SECONDS - started))s"
}

main "$@"; exit   # one line: bash reads no further, even if the file changes meanwhile
