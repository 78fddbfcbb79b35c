#!/bin/sh
# Give stockade a working CRIU 4.2.1 in /opt/stockade-criu, as root, on Debian 12.
#
# Why not Debian 12's own `criu` package: CRIU 3.17 fails `criu check` on kernels >= 6.13 (the vDSO
# was split; fixed in CRIU 4.1). Why 4.2 and not 4.1: Linux >= 6.16 refuses
# getsockopt(SO_PASSCRED/SO_PASSSEC) on sockets other than unix and netlink, and CRIU < 4.2 asks
# for both on every socket it dumps, so an instance holding a TCP or UDP socket could not be
# checkpointed. Why not a newer suite's binary package: it needs a newer glibc. So this builds the
# SOURCE package of Debian forky (criu 4.2.1-1, also in sid) against bookworm's libraries, into a
# prefix stockade owns, and leaves the system's own criu untouched. An install whose
# `criu --version` is not $WANT (an older setup's 4.1.1, say) is rebuilt. Idempotent: a second run
# with a working build returns in well under a second.
#
# Apt changes it makes (and nothing else):
#   * /etc/apt/sources.list.d/stockade-forky-src.sources: a deb-src (SOURCE only) entry for
#     Debian forky main, so no forky binary can ever be installed from it. The trixie deb-src
#     entry an older version of this script added (stockade-trixie-src.sources) is removed.
#   * installs bookworm's build dependencies listed in BUILD_DEPS below (plus dpkg-dev to unpack).
#
# Environment: STOCKADE_CRIU_PREFIX (default /opt/stockade-criu),
#              STOCKADE_CRIU_CACHE (default /var/cache/stockade-criu: the unpacked source + build).
set -eu

WANT=4.2.1     # upstream version; any Debian revision of it (4.2.1-1, ...) will do
SUITE=forky    # a Debian suite whose Sources has criu $WANT
PREFIX="${STOCKADE_CRIU_PREFIX:-/opt/stockade-criu}"
CACHE="${STOCKADE_CRIU_CACHE:-/var/cache/stockade-criu}"
CRIU="$PREFIX/sbin/criu"
SRC_LIST=/etc/apt/sources.list.d/stockade-$SUITE-src.sources
OLD_SRC_LISTS=/etc/apt/sources.list.d/stockade-trixie-src.sources

# Build dependencies of `make criu` (debian/control's Build-Depends of criu 4.2.1-1 less the
# packaging, docs and python bindings; the GPU plugins and the test suite, which want libdrm-dev
# and libaio-dev, are not built), all satisfied by bookworm's own packages.
BUILD_DEPS="dpkg-dev gcc make pkg-config python3 protobuf-c-compiler protobuf-compiler
libprotobuf-c-dev libprotobuf-dev libnl-3-dev libnet1-dev libcap-dev libgnutls28-dev
libbsd-dev libnftables-dev uuid-dev"
# Run-time libraries the built binary links against (kept when build deps are not wanted).
RUN_DEPS="libprotobuf-c1 libnl-3-200 libnet1 libcap2 libgnutls30 libbsd0 libnftables1 libuuid1"

log() { echo "setup-criu: $*" >&2; }

working() {
    [ -x "$CRIU" ] || return 1
    # The wanted version ("Version: 4.2.1" on the first line), not merely one that works.
    [ "$("$CRIU" --version 2>/dev/null | head -n 1)" = "Version: $WANT" ] || return 1
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

# The Debian version (4.2.1-1, ...) of criu $WANT in apt's Sources index, highest first; empty
# when the index has none.
debian_version() {
    apt-cache showsrc criu 2>/dev/null | awk -v w="$WANT" \
        '/^Package: /{p=($2=="criu")} p && /^Version: / && index($2, w "-")==1 {print $2}' |
        sort -rV | head -n 1
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

need_update=0
for old in $OLD_SRC_LISTS; do
    if [ -f "$old" ] && grep -q "^# stockade:" "$old"; then
        log "removing the deb-src entry an older setup-criu.sh added ($old)"
        rm -f "$old"
        need_update=1
    fi
done
if ! [ -f "$SRC_LIST" ]; then
    log "adding a deb-src entry for $SUITE ($SRC_LIST)"
    cat >"$SRC_LIST" <<EOS
# stockade: SOURCE packages of Debian $SUITE, to build CRIU $WANT (scripts/setup-criu.sh).
# deb-src only: nothing from $SUITE is installed as a binary.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    need_update=1
fi
# The entry may be there with its index gone (apt lists cleaned) or older than the entry.
[ "$need_update" = 1 ] || [ -n "$(debian_version)" ] || need_update=1

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
srcdir="criu-$WANT"
# Sources and builds of other versions (an older setup's criu-4.1.1) are never used again.
for old in criu-* criu_*; do
    [ -e "$old" ] || continue
    case "$old" in
        "criu-$WANT" | "criu_$WANT".* | "criu_$WANT"-*) ;;
        *) log "removing $CACHE/$old (not $WANT)"; rm -rf "$old" ;;
    esac
done
# A tree is used only once wholly unpacked (the marker is written last).
if [ -d "$srcdir" ] && ! [ -f "$srcdir/.stockade-unpacked" ]; then
    rm -rf "$srcdir"
fi
if ! [ -d "$srcdir" ]; then
    debver=$(debian_version)
    if [ -z "$debver" ]; then
        apt-cache showsrc criu 2>/dev/null | grep '^Version:' >&2 || true
        log "apt's Sources index has no criu $WANT (Debian $SUITE may have moved on): set WANT/SUITE in scripts/setup-criu.sh"
        exit 1
    fi
    log "fetching criu $debver's source package (Debian $SUITE)"
    # apt-get source runs as the _apt user for the download: let it write here.
    chown _apt "$CACHE" 2>/dev/null || true
    if ! { apt-get source -qq "criu=$debver" >/dev/null 2>apt-source.err && [ -d "$srcdir" ]; }; then
        # A mirror may lag behind its own index for the Debian revision (.dsc, .debian.tar.xz)
        # while it has the upstream tarball: take that, checked against the signed index.
        rm -rf "$srcdir"
        apt-get source -qq --download-only "criu=$debver" >/dev/null 2>>apt-source.err || true
        orig=$(find . -maxdepth 1 -name "criu_$WANT.orig.tar.*" | sort | tail -n 1)
        [ -n "$orig" ] || { cat apt-source.err >&2; log "could not fetch criu $debver's source"; exit 1; }
        want=$(apt-cache showsrc criu 2>/dev/null | awk -v f="$(basename "$orig")" \
            '/^Checksums-Sha256:/{s=1; next} /^[^ ]/{s=0} s && $3==f {print $1; exit}')
        have=$(sha256sum "$orig" | cut -d' ' -f1)
        if [ -z "$want" ] || [ "$want" != "$have" ]; then
            log "$orig: sha256 $have does not match $SUITE's Sources index (${want:-no entry})"
            exit 1
        fi
        log "using the upstream tarball of criu $debver's source package ($(basename "$orig"), sha256 verified)"
        tar -xf "$orig"
    fi
    [ -d "$srcdir" ] || { log "criu $debver's source gave no $srcdir tree"; exit 1; }
    touch "$srcdir/.stockade-unpacked"
fi

cd "$srcdir"
log "building $srcdir (a few minutes on 2 cores)"
jobs=$(nproc 2>/dev/null || echo 2)
# No documentation (asciidoc/xmlto are not needed) and no GPU plugins.
make -j"$jobs" criu >build.log 2>&1 || { tail -n 40 build.log >&2; log "build failed (log: $CACHE/$srcdir/build.log)"; exit 1; }
# Staged, then each file renamed into place: a criu started meanwhile (another user of
# $PREFIX) runs either the old binary or the new one, never a half-written file.
stage="$CACHE/stage"
rm -rf "$stage"
make DESTDIR="$stage" PREFIX="$PREFIX" install-criu >>build.log 2>&1 || { tail -n 20 build.log >&2; log "install failed"; exit 1; }
(cd "$stage$PREFIX" && find . -type f) | while read -r f; do
    mkdir -p "$(dirname "$PREFIX/$f")"
    cp -p "$stage$PREFIX/$f" "$PREFIX/$f.stockade-new"
    mv -f "$PREFIX/$f.stockade-new" "$PREFIX/$f"
done
rm -rf "$stage"
# The list of local patches an older setup-criu.sh recorded: no build has any now.
rm -f "$PREFIX/share/stockade-criu/patches"
rmdir "$PREFIX/share/stockade-criu" 2>/dev/null || true

if ! working; then
    "$CRIU" --version >&2 || true
    "$CRIU" check >&2 || true
    log "$CRIU was built but is not a working criu $WANT on this kernel"
    exit 1
fi
raise_pipe_max
log "$("$CRIU" --version | head -n 1) installed in $PREFIX"
