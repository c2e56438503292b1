# Shared by container/build-offline.sh and container/build-dockerfile.sh (sourced, not run):
# the build settings, and the Debian base root filesystem both start from. Needs NAME set.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=${IMAGE_OUT:-$ROOT/build/image}
CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sms-connector/image}
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

log() { echo "$NAME [$((SECONDS))s]: $*"; }
die() { echo "$NAME: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and the image's file ownership): sudo make $NAME"
    [ -n "$VERSION" ] || die "no version in pyproject.toml"
}

# ensure_tools COMMAND:PACKAGE...: apt-get install the packages whose command is missing.
ensure_tools() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null; apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

# The Debian base ---------------------------------------------------------------------------------
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

