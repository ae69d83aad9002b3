"""A throwaway build root without network, as sbuild or pbuilder gives a package build.

An overlay of the host's / over a tmpfs, in a private mount and network namespace:
build dependencies installed there with dpkg (our own .debs, not in Debian 12) vanish
with it, the host's package database is untouched, and the only network device is a
loopback that is down, so a build that fetches anything fails.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

BUILD_ROOT_SCRIPT = r"""
set -eu
work="$1"; build="$2"; command="$3"
if tail -n +3 /proc/net/dev | grep -qv '^ *lo:'; then
    echo "build root: a network device other than lo" >&2; exit 1
fi
mount -t tmpfs -o mode=0755 tmpfs "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
root="$work/root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
for dir in tmp run; do mount -t tmpfs -o mode=1777 tmpfs "$root/$dir"; done
mkdir -p "$root/build"
mount --bind "$build" "$root/build"
exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/build LC_ALL=C.UTF-8 \
    sh -euc "cd /build; $command"
"""


def run_in_build_root(
    build: Path, command: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the shell `command` as root in a fresh build root, offline, with `build`
    (read-write, the host's directory) as /build and the working directory; its output
    and errors as one log in stdout."""
    with tempfile.TemporaryDirectory(prefix="qboot-buildroot.") as work:
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                "sh",
                "-c",
                BUILD_ROOT_SCRIPT,
                "build-root",
                work,
                str(build),
                command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one log, in order
            text=True,
            timeout=timeout,
            check=False,
        )
