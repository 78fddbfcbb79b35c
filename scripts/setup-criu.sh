#!/bin/sh
# Give stockade a working CRIU in /opt/stockade-criu, as root, on Debian 12.
#
# Why not Debian 12's own `criu` package: CRIU 3.17 fails `criu check` on kernels >= 6.13 (the vDSO
# was split; fixed in CRIU 4.1). Why not trixie's binary package: it needs glibc 2.38. So this
# builds trixie's SOURCE package against bookworm's libraries, into a prefix stockade owns, and
# leaves the system's own criu untouched. Idempotent: a second run with a working build returns
# in well under a second.
#
# Apt changes it makes (and nothing else):
#   * /etc/apt/sources.list.d/stockade-trixie-src.sources: a deb-src (SOURCE only) entry for
#     Debian trixie main, so no trixie binary can ever be installed from it.
#   * installs bookworm's build dependencies listed in BUILD_DEPS below (plus dpkg-dev to unpack).
#
# Environment: STOCKADE_CRIU_PREFIX (default /opt/stockade-criu),
#              STOCKADE_CRIU_CACHE (default /var/cache/stockade-criu: the unpacked source + build).
set -eu

PREFIX="${STOCKADE_CRIU_PREFIX:-/opt/stockade-criu}"
CACHE="${STOCKADE_CRIU_CACHE:-/var/cache/stockade-criu}"
CRIU="$PREFIX/sbin/criu"
SRC_LIST=/etc/apt/sources.list.d/stockade-trixie-src.sources

# Build dependencies of criu 4.1 (debian/control's Build-Depends, less docs and the GPU plugins),
# all satisfied by bookworm's own packages.
BUILD_DEPS="dpkg-dev gcc make pkg-config python3 protobuf-c-compiler protobuf-compiler
libprotobuf-c-dev libprotobuf-dev libnl-3-dev libnet1-dev libcap-dev libaio-dev libgnutls28-dev
libbsd-dev libnftables-dev uuid-dev libdrm-dev"
# Run-time libraries the built binary links against (kept when build deps are not wanted).
RUN_DEPS="libprotobuf-c1 libnl-3-200 libnet1 libcap2 libaio1 libgnutls30 libbsd0 libnftables1"

log() { echo "setup-criu: $*" >&2; }

working() {
    [ -x "$CRIU" ] || return 1
    # `criu check` exits 0 only when every feature CRIU needs for a basic dump/restore is there.
    "$CRIU" check >/dev/null 2>&1
}

# Post-copy migration: CRIU's lazy-pages daemon moves pages through pipes of up to 4 MiB,
# past the default fs.pipe-max-size (1 MiB) that a process without CAP_SYS_RESOURCE in the
# initial user namespace may not exceed. Raising the ceiling changes no pipe's size by itself.
raise_pipe_max() {
    cur=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
    if [ "$cur" -lt 4194304 ] 2>/dev/null; then
        echo 4194304 > /proc/sys/fs/pipe-max-size 2>/dev/null || log "could not raise fs.pipe-max-size (post-copy migration falls back to stop-and-copy)"
    fi
}

if working; then
    raise_pipe_max
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "must run as root (installs build dependencies and writes $PREFIX)"
    exit 1
fi

missing=""
for p in $BUILD_DEPS $RUN_DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if ! [ -f "$SRC_LIST" ]; then
    log "adding a deb-src entry for trixie ($SRC_LIST)"
    cat >"$SRC_LIST" <<'EOF'
# stockade: SOURCE packages of Debian trixie, to build CRIU >= 4.1 (scripts/setup-criu.sh).
# deb-src only: nothing from trixie is installed as a binary.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    need_update=1
else
    need_update=0
fi

if [ -n "$missing" ] || [ "$need_update" = 1 ]; then
    apt-get update -qq -o DPkg::Lock::Timeout=600
fi
if [ -n "$missing" ]; then
    log "installing build dependencies:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 $missing >/dev/null
fi

mkdir -p "$CACHE"
cd "$CACHE"
srcdir=$(find . -maxdepth 1 -type d -name 'criu-4.*' | sort | tail -n 1)
if [ -z "$srcdir" ]; then
    log "fetching criu's source package from trixie"
    # apt-get source runs as the _apt user for the download: let it write here.
    chown _apt "$CACHE" 2>/dev/null || true
    if ! apt-get source -qq criu/trixie >/dev/null 2>apt-source.err; then
        # A mirror may lag behind its own index for the Debian revision (.dsc, .debian.tar.xz)
        # while it has the upstream tarball: take that, checked against the signed index.
        apt-get source -qq --download-only criu/trixie >/dev/null 2>>apt-source.err || true
        orig=$(find . -maxdepth 1 -name 'criu_4.*.orig.tar.*' | sort | tail -n 1)
        [ -n "$orig" ] || { cat apt-source.err >&2; log "could not fetch criu's source from trixie"; exit 1; }
        want=$(apt-cache showsrc criu 2>/dev/null | awk -v f="$(basename "$orig")" \
            '/^Checksums-Sha256:/{s=1; next} /^[^ ]/{s=0} s && $3==f {print $1; exit}')
        have=$(sha256sum "$orig" | cut -d' ' -f1)
        if [ -z "$want" ] || [ "$want" != "$have" ]; then
            log "$orig: sha256 $have does not match trixie's Sources index (${want:-no entry})"
            exit 1
        fi
        log "using the upstream tarball of trixie's source package ($(basename "$orig"), sha256 verified)"
        tar -xf "$orig"
    fi
    srcdir=$(find . -maxdepth 1 -type d -name 'criu-4.*' | sort | tail -n 1)
    [ -n "$srcdir" ] || { log "apt-get source criu/trixie gave no criu-4.* tree"; exit 1; }
fi

cd "$srcdir"
log "building $(basename "$srcdir") (a few minutes on 2 cores)"
jobs=$(nproc 2>/dev/null || echo 2)
# No documentation (asciidoc/xmlto are not needed) and no GPU plugins.
make -j"$jobs" criu >build.log 2>&1 || { tail -n 40 build.log >&2; log "build failed (log: $CACHE/$srcdir/build.log)"; exit 1; }
make PREFIX="$PREFIX" install-criu >>build.log 2>&1 || { tail -n 20 build.log >&2; log "install failed"; exit 1; }

if ! working; then
    "$CRIU" check >&2 || true
    log "$CRIU was built but \`criu check\` fails on this kernel"
    exit 1
fi
raise_pipe_max
log "$("$CRIU" --version | head -n 1) installed in $PREFIX"
