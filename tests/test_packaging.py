"""packaging/: the Debian package builds from a clean tree, is lintian-clean, installs
into a real systemd and serves; the RPM spec smoke-builds; the PKGBUILD ships the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, STRICT, require_tool
from .e2e_stage import QMAIL_SMTPD, QMAIL_START, SPOOL, write
from .sandbox import Sandbox, missing_requirements

pytestmark = pytest.mark.slow
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3, not a pyenv one


def clean_tree(target: Path) -> Path:
    """The tracked files of the checkout, as a release tarball would have them."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    tree = target / "qboot-systemd-0.1.0"
    for name in filter(None, files):
        source, destination = ROOT / name, tree / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            destination.symlink_to(os.readlink(source))
        elif source.exists():
            shutil.copy2(source, destination)
    return tree


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("dpkg-buildpackage")
    work = tmp_path_factory.mktemp("deb")
    tree = clean_tree(work)
    (tree / "packaging" / "debian").rename(tree / "debian")
    done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree,
                          env={**os.environ, "PATH": CLEAN_PATH}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (package,) = work.glob("qboot-systemd_*.deb")
    return package


def deb_files(package: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True,
                             check=True).stdout
    return {line.split()[5].lstrip(".") for line in listing.splitlines()
            if not line.startswith("d")}


def test_deb_contents_and_lintian(deb: Path) -> None:
    files = deb_files(deb)
    for expected in ("/usr/bin/qbootctl", "/usr/bin/qboot-tcpsrv", "/usr/bin/eqmaild",
                     "/usr/lib/systemd/system-generators/qboot-systemd-generator",
                     "/usr/lib/systemd/system/qmail-tcpd@.service",
                     "/usr/lib/systemd/system/qmail-send.service",
                     "/usr/share/man/man8/qbootctl.8.gz",
                     "/usr/share/qboot-systemd/bootctrl/qmail-smtp.env",
                     "/usr/lib/qboot-systemd/vendor/cdblib/cdblib.py"):
        assert expected in files, expected
    lintian = subprocess.run([require_tool("lintian"), "--tag-display-limit", "0", str(deb)],
                             env={**os.environ, "PATH": CLEAN_PATH}, capture_output=True,
                             text=True, timeout=300, check=False)
    findings = [line for line in lintian.stdout.splitlines() if line[:2] in ("E:", "W:")]
    print("lintian:", findings or "clean")
    assert findings == []


@pytest.fixture(scope="module")
def box(deb: Path) -> Iterator[Sandbox]:
    reason = missing_requirements()
    if reason:
        if STRICT:
            pytest.fail(f"sandbox unavailable: {reason}")
        pytest.skip(f"sandbox unavailable: {reason}")
    stage = Path(tempfile.mkdtemp(prefix="qboot-deb-stage."))
    write(stage / "var/qmail/bin/qmail-smtpd", QMAIL_SMTPD, 0o755)
    write(stage / "var/qmail/bin/qmail-start", QMAIL_START, 0o755)
    for sub in ("queue/tmp", "queue/new", "env"):
        (stage / SPOOL.lstrip("/") / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, stage / "qboot-systemd.deb")
    sandbox = Sandbox(stage, ROOT)
    try:
        sandbox.start()
        yield sandbox
    finally:
        left = sandbox.stop()
        shutil.rmtree(stage, ignore_errors=True)
        assert left == []


def test_deb_installs_boots_serves_and_purges(box: Sandbox) -> None:
    done = box.run("dpkg", "-i", "/qboot-systemd.deb", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert box.run("readlink", "/var/qmail/etc/bootctrl/qmail-smtp.rc").stdout.strip() == \
        "qmail-tcpd"
    # postinst ran daemon-reload: the generator already made the units
    assert box.run("test", "-L", "/run/systemd/generator/sockets.target.wants/"
                   "qmail-tcpd@smtp.socket", check=False).returncode == 0
    done = box.run("/usr/bin/qbootctl", "start", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    status = box.run("/usr/bin/qbootctl", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    mail = box.run("/usr/bin/python3", "-c",
                   "import smtplib; s=smtplib.SMTP('127.0.0.1', 25, timeout=20); "
                   "s.sendmail('a@example.org', ['b@example.net'], 'Subject: deb\\r\\n\\r\\nx');"
                   " s.quit()", check=False)
    assert mail.returncode == 0, mail.stderr
    assert box.run("sh", "-c", f"grep -l 'Subject: deb' {SPOOL}/queue/new/*",
                   check=False).returncode == 0
    box.run("/usr/bin/qbootctl", "stop")
    box.run("sh", "-c", "echo '# admin edit' >> /var/qmail/etc/bootctrl/qmail-smtp.env")
    done = box.run("dpkg", "--purge", "qboot-systemd", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for gone in ("/usr/bin/qbootctl", "/usr/lib/systemd/system/qmail-tcpd@.service",
                 "/usr/lib/systemd/system-generators/qboot-systemd-generator",
                 "/usr/lib/python3/dist-packages/qboot_systemd"):
        assert box.run("test", "-e", gone, check=False).returncode == 1, gone
    edited = box.run("cat", "/var/qmail/etc/bootctrl/qmail-smtp.env").stdout
    assert "# admin edit" in edited  # the admin's bootctrl stays
