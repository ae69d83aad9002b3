#!/usr/bin/env bash
# Build the Debian packages that qboot-systemd's build needs and Debian 12 lacks, from
# their upstream release, and write them (binary and source packages) to OUTDIR.
#   packaging/build-deps.sh OUTDIR
# Today: python3-pure-cdb from pure-cdb's sdist on PyPI (packaging/deps/pure-cdb/debian),
# the oracle of the tests dh_auto_test runs (Build-Depends <!nocheck>): qboot-systemd does
# not use it at run time, and a nocheck build needs nothing from here.
# Needs the network only to fetch the sdist (skipped when OUTDIR already holds it); the
# build itself runs without network when root (unshare -n). Build dependencies: see
# packaging/deps/*/debian/control (dpkg-buildpackage checks them).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
outdir=$(cd "$1" && pwd)

name=pure-cdb
version=4.0.0
sha256=8c44801e281f029769ef1cf2a53cfeec67bc962d595b83365c0463daea95b08c
source=python-pure-cdb
orig="$outdir/${source}_${version}.orig.tar.gz"

work=$(mktemp -d "${TMPDIR:-/tmp}/qboot-build-deps.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! echo "$sha256  $orig" | sha256sum -c --status 2>/dev/null; then
    # The sdist, not a wheel; pip checks the pinned hash before it runs anything of it.
    echo "$name==$version --hash=sha256:$sha256" > "$work/requirements.txt"
    python3 -m pip download --quiet --no-binary :all: --no-deps --require-hashes \
        --dest "$work/download" --requirement "$work/requirements.txt"
    cp "$work/download/$name-$version.tar.gz" "$orig"
    echo "$sha256  $orig" | sha256sum -c --quiet || { rm -f "$orig"; exit 1; }
fi

tree="$work/$source-$version"
mkdir "$tree"
tar -xzf "$orig" -C "$tree" --strip-components=1
cp -a "$here/deps/$name/debian" "$tree/debian"
ln -s "$orig" "$work/"

offline=()
[ "$(id -u)" -eq 0 ] && offline=(unshare --net)
# Debian's python3, whatever python3 comes first in the caller's PATH.
(cd "$tree" && PATH=/usr/sbin:/usr/bin:/sbin:/bin "${offline[@]}" \
    dpkg-buildpackage -us -uc --build=full)

for file in "$work"/*.deb "$work"/*.dsc "$work"/*.debian.tar.* "$work"/*.changes \
    "$work"/*.buildinfo; do
    cp "$file" "$outdir/"
done
ls "$outdir"/*.deb
