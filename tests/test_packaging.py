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

from .conftest import ROOT, require_tool
from .e2e_stage import SPOOL, add_stand_ins, booted_sandbox
from .sandbox import Sandbox

pytestmark = pytest.mark.slow
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3, not a pyenv one


def clean_tree(target: Path) -> Path:
    """The tracked files of the checkout, as a release tarball would have them."""
    files = (
        subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
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
    done = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=tree,
        env={**os.environ, "PATH": CLEAN_PATH},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (package,) = work.glob("qboot-systemd_*.deb")
    return package


def deb_files(package: Path) -> set[str]:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split()[5].lstrip(".") for line in listing.splitlines() if not line.startswith("d")
    }


def test_deb_contents_and_lintian(deb: Path) -> None:
    files = deb_files(deb)
    for expected in (
        "/usr/bin/qbootctl",
        "/usr/bin/qboot-tcpsrv",
        "/usr/bin/eqmaild",
        "/usr/lib/systemd/system-generators/qboot-systemd-generator",
        "/usr/lib/systemd/system/qmail-tcpd@.service",
        "/usr/lib/systemd/system/qmail-send.service",
        "/usr/share/man/man8/qbootctl.8.gz",
        "/usr/share/qboot-systemd/bootctrl/qmail-smtp.env",
        "/usr/lib/qboot-systemd/vendor/cdblib/cdblib.py",
    ):
        assert expected in files, expected
    lintian = subprocess.run(
        [require_tool("lintian"), "--tag-display-limit", "0", str(deb)],
        env={**os.environ, "PATH": CLEAN_PATH},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    findings = [line for line in lintian.stdout.splitlines() if line[:2] in ("E:", "W:")]
    print("lintian:", findings or "clean")
    assert findings == []


@pytest.fixture(scope="module")
def box(deb: Path) -> Iterator[Sandbox]:
    def stage_with_deb(stage: Path) -> None:
        add_stand_ins(stage)
        shutil.copy(deb, stage / "qboot-systemd.deb")

    with booted_sandbox(stage_with_deb) as sandbox:
        yield sandbox


def test_deb_installs_boots_serves_and_purges(box: Sandbox) -> None:
    done = box.run("dpkg", "-i", "/qboot-systemd.deb", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        box.run("readlink", "/var/qmail/etc/bootctrl/qmail-smtp.rc").stdout.strip() == "qmail-tcpd"
    )
    # postinst ran daemon-reload: the generator already made the units
    assert (
        box.run(
            "test",
            "-L",
            "/run/systemd/generator/sockets.target.wants/qmail-tcpd@smtp.socket",
            check=False,
        ).returncode
        == 0
    )
    done = box.run("/usr/bin/qbootctl", "start", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    status = box.run("/usr/bin/qbootctl", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    mail = box.run(
        "/usr/bin/python3",
        "-c",
        "import smtplib; s=smtplib.SMTP('127.0.0.1', 25, timeout=20); "
        "s.sendmail('a@example.org', ['b@example.net'], 'Subject: deb\\r\\n\\r\\nx');"
        " s.quit()",
        check=False,
    )
    assert mail.returncode == 0, mail.stderr
    assert (
        box.run("sh", "-c", f"grep -l 'Subject: deb' {SPOOL}/queue/new/*", check=False).returncode
        == 0
    )
    box.run("/usr/bin/qbootctl", "stop")
    box.run("sh", "-c", "echo '# admin edit' >> /var/qmail/etc/bootctrl/qmail-smtp.env")
    done = box.run("dpkg", "--purge", "qboot-systemd", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for gone in (
        "/usr/bin/qbootctl",
        "/usr/lib/systemd/system/qmail-tcpd@.service",
        "/usr/lib/systemd/system-generators/qboot-systemd-generator",
        "/usr/lib/python3/dist-packages/qboot_systemd",
    ):
        assert box.run("test", "-e", gone, check=False).returncode == 1, gone
    edited = box.run("cat", "/var/qmail/etc/bootctrl/qmail-smtp.env").stdout
    assert "# admin edit" in edited  # the admin's bootctrl stays


def debian_pip_install(*args: str) -> subprocess.CompletedProcess[str]:
    """pip of Debian's python3, installing in the distribution's layout."""
    return subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--break-system-packages",
            *args,
        ],
        env={**os.environ, "PATH": CLEAN_PATH, "DEB_PYTHON_INSTALL_LAYOUT": "deb_system"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


RPM_MACROS = {
    # What Fedora's python3-devel, pyproject-rpm-macros and systemd-rpm-macros define,
    # emulated with Debian's python3 and pip for this smoke build.
    "python3": "/usr/bin/python3",
    # Debian's pip installs to /usr/local unless told the distribution's layout.
    "python3_sitelib": "/usr/lib/python3/dist-packages",
    "_unitdir": "/usr/lib/systemd/system",
    "dist": ".smoke",
    "pyproject_wheel": "%{python3} -m pip wheel --no-deps --no-build-isolation --no-index "
    "--wheel-dir %{_builddir}/pyproject-wheeldir .",
    "pyproject_install": "%{python3} -m pip install --no-deps --no-index --no-compile "
    "--break-system-packages --root %{buildroot} --prefix %{_prefix} "
    "%{_builddir}/pyproject-wheeldir/*.whl",
    "pyproject_save_files()": "echo '%{python3_sitelib}/%{1}' > %{_builddir}/pyproject-files; "
    "echo '%{python3_sitelib}/%{1}-%{version}.dist-info' "
    ">> %{_builddir}/pyproject-files",
    "pyproject_files": "%{_builddir}/pyproject-files",
}


def rpm_files(package: Path) -> set[str]:
    listing = subprocess.run(
        ["rpm", "-qlp", str(package)], capture_output=True, text=True, check=True
    ).stdout
    return set(listing.split())


def test_rpm_spec_smoke_build(tmp_path: Path) -> None:
    rpmbuild = require_tool("rpmbuild")
    tree = clean_tree(tmp_path / "src")
    for sub in ("SOURCES", "BUILD", "RPMS", "SRPMS", "SPECS"):
        (tmp_path / sub).mkdir()
    subprocess.run(
        [
            "tar",
            "-czf",
            str(tmp_path / "SOURCES" / "qboot-systemd-0.1.0.tar.gz"),
            "-C",
            str(tree.parent),
            tree.name,
        ],
        check=True,
    )
    # Fedora has python3dist(pure-cdb) for the BuildRequires; here it comes from PyPI.
    deps = tmp_path / "deps"
    done = debian_pip_install("--target", str(deps), "pure-cdb==4.0.0")
    assert done.returncode == 0, done.stderr
    defines = [arg for name, value in RPM_MACROS.items() for arg in ("--define", f"{name} {value}")]
    done = subprocess.run(
        [
            rpmbuild,
            "-bb",
            "--nodeps",
            "--define",
            f"_topdir {tmp_path}",
            *defines,
            str(tree / "packaging/rpm/qboot-systemd.spec"),
        ],
        env={
            **os.environ,
            "PATH": CLEAN_PATH,
            "PYTHONPATH": str(deps),
            "DEB_PYTHON_INSTALL_LAYOUT": "deb_system",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (package,) = (tmp_path / "RPMS" / "noarch").glob("qboot-systemd-0.1.0-1.smoke.noarch.rpm")
    files = rpm_files(package)
    assert "/usr/lib/systemd/system-generators/qboot-systemd-generator" in files
    assert "/usr/lib/systemd/system/qmail-tcpd@.service" in files
    assert "/usr/bin/qbootctl" in files


def test_arch_pkgbuild_ships_what_the_deb_ships(deb: Path) -> None:
    """The PKGBUILD cannot be built here: run its package() steps by hand against the
    same tree and compare the file list (python's own files aside) with the deb's."""
    text = (ROOT / "packaging/arch/PKGBUILD").read_text()
    assert "qboot_systemd.cli install" in text and "cp -a etc/bootctrl" in text
    for name in ("python-jinja", "python-click", "python-pystemd", "python-pure-cdb"):
        assert name in text
    root = Path(tempfile.mkdtemp(prefix="qboot-arch."))
    try:
        site = root / "usr/lib/python3/dist-packages"
        wheel = debian_pip_install(
            "--no-compile", "--root", str(root), "--prefix", "/usr", str(ROOT)
        )
        assert wheel.returncode == 0, wheel.stderr
        install = subprocess.run(
            [
                "/usr/bin/python3",
                "-m",
                "qboot_systemd.cli",
                "install",
                "--root",
                str(root),
                "--prefix",
                "/usr",
                "--unit-dir",
                "/usr/lib/systemd/system",
                "--qmail-home",
                "/var/qmail",
                "--no-bootctrl",
                "--no-byte-compile",
                "--python",
                "/usr/bin/python",
            ],
            env={
                **os.environ,
                "PATH": CLEAN_PATH,
                "PYTHONPATH": f"{site}:{ROOT / '.venv/lib/python3.11/site-packages'}",
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert install.returncode == 0, install.stderr
        shutil.copytree(
            ROOT / "etc/bootctrl", root / "usr/share/qboot-systemd/bootctrl", symlinks=True
        )
        arch = {
            "/" + str(p.relative_to(root))
            for p in root.rglob("*")
            if (p.is_file() or p.is_symlink())
            and "dist-packages" not in str(p)
            and "__pycache__" not in str(p)
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    debian = {
        name.removesuffix(".gz")
        for name in deb_files(deb)
        if "dist-packages" not in name
        and "/usr/lib/qboot-systemd/vendor" not in name
        and not name.startswith("/usr/share/doc/")
        and not name.startswith("/usr/share/python3/")
    }
    assert arch == debian
