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
# The base is cached in $SMS_CONNECTOR_IMAGE_CACHE (default ~/.cache/sms-connector/image), keyed
# by the suite, the package list and this script's base recipe, and rebuilt after
# $BASE_MAX_AGE_DAYS (7) days so that Debian's security updates get in. The app layer is always
# rebuilt. Needs root (debootstrap, chroot, file ownership); installs debootstrap and umoci with
# apt-get when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=${IMAGE_OUT:-$ROOT/build/image}
CACHE=${SMS_CONNECTOR_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sms-connector/image}
BASE_MAX_AGE_DAYS=${BASE_MAX_AGE_DAYS:-7}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
LOCK=$ROOT/container/requirements.txt
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n1)
TAG=${IMAGE_TAG:-$VERSION}
# The repository URL for the source label: set it for a release build (no credentials in it).
SOURCE_URL=${IMAGE_SOURCE:-unknown}
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then REVISION="$REVISION-dirty"; fi

log() { echo "image-offline [$((SECONDS))s]: $*"; }
die() { echo "image-offline: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and the image's file ownership): sudo make image-offline"
[ -n "$VERSION" ] || die "no version in pyproject.toml"

ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v umoci >/dev/null 2>&1 || missing+=(umoci)
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null; apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

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
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) \
        | tar -xf - -C "$src"
    log "wheel of sms-connector $VERSION"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "$src" -w "$wheels"
    rm -rf "$src"
}

# 2. Base ----------------------------------------------------------------------------------------
# The recipe of the base, hashed into the cache key: change it and the base is rebuilt.
clean_rootfs() {
    local r=$1
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
        "$r"/usr/share/man "$r"/usr/share/info "$r"/usr/share/locale/* "$r"/usr/share/lintian \
        "$r"/root/.cache "$r"/tmp/* "$r"/var/tmp/* "$r"/etc/resolv.conf "$r"/etc/machine-id
    find "$r"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find "$r"/usr/share/doc -mindepth 1 -type d -empty -delete
    find "$r"/var/log -type f -delete
    echo localhost > "$r"/etc/hostname
}

build_base() {
    local tarball=$1 tmp
    tmp=$(mktemp -d "$CACHE/base-XXXXXX")
    log "debootstrap $SUITE ($BASE_PACKAGES) from $MIRROR"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" --cache-dir="$CACHE/debs" \
            "$SUITE" "$tmp/rootfs" "$MIRROR" > "$tmp/debootstrap.log" 2>&1; then
        tail -n 20 "$tmp/debootstrap.log" >&2
        die "debootstrap failed (log: $tmp/debootstrap.log)"
    fi
    clean_rootfs "$tmp/rootfs"
    tar --numeric-owner --xattrs -C "$tmp/rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$tmp"
}

base_tarball() {
    local key tarball
    key=$( { echo "$SUITE $BASE_PACKAGES"; declare -f build_base clean_rootfs; } | sha256sum | cut -c1-16)
    tarball=$CACHE/base-$SUITE-$key.tar
    mkdir -p "$CACHE/debs"
    if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -"$BASE_MAX_AGE_DAYS")" ]; then
        log "base from cache: $tarball" >&2
    else
        build_base "$tarball" >&2
        find "$CACHE" -maxdepth 1 -name "base-$SUITE-*.tar" ! -name "$(basename "$tarball")" -delete
    fi
    echo "$tarball"
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
    ensure_tools
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

main "$@"
