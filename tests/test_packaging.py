"""packaging/: the tests' oracle Debian 12 lacks (pure-cdb) builds from its upstream sdist;
the Debian package builds without network from the tree and from its source package, and
without pure-cdb when its tests are off (nocheck), is lintian-clean, installs into a real
systemd without pure-cdb and serves; the RPM spec smoke-builds and runs
its %check; the PKGBUILD's build(), check() and package() run and ship what the deb ships.
One build of each Debian package per session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .admin_sandbox import listening_on, reload_and_settle
from .build_root import run_in_build_root
from .conftest import ROOT, require_tool
from .e2e_stage import LOCAL_RCPT, MAILDIR, add_real_qmail, booted_sandbox
from .sandbox import Sandbox
from .source_tree import VERSION, clean_tree

pytestmark = pytest.mark.slow
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3, not a pyenv one


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


@dataclass(frozen=True)
class Packages:
    """What one pytest session builds: python3-pure-cdb and qboot-systemd, each as a
    binary package and a source package, and qboot-systemd once more with nocheck."""

    dependency_deb: Path
    dependency_dsc: Path
    deb: Path  # built from the .dsc
    dsc: Path
    tree_deb: Path  # built from the tracked tree, as the README says
    nocheck_deb: Path  # from the tree, nocheck, without python3-pure-cdb in the build root
    dependency_log: str
    build_log: str


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    require_tool("dpkg-buildpackage")
    require_tool("unshare")
    work = tmp_path_factory.mktemp("packages")
    # With network: fetch pure-cdb's sdist, check its pinned hash, build python3-pure-cdb.
    deps = work / "deps"
    dependency = subprocess.run(
        [str(ROOT / "packaging/build-deps.sh"), str(deps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert dependency.returncode == 0, dependency.stdout[-6000:]
    dependency_deb = only(deps, "python3-pure-cdb_*.deb")
    dependency_dsc = only(deps, "python-pure-cdb_*.dsc")
    # Without network, in a build root: a nocheck binary package before python3-pure-cdb
    # is there (only the tests need it); then, with it installed from that .deb, the
    # dependency's autopkgtest command against the installed package, qboot-systemd's
    # source and binary packages from the tracked tree, and a binary package from the .dsc.
    tree = clean_tree(work / "src")
    (tree / "packaging" / "debian").rename(tree / "debian")
    script = f"""
        if python3 -c 'import cdblib' 2>/dev/null; then echo 'cdblib in the root' >&2; exit 1; fi
        mkdir nocheck && cp -a src/{tree.name} nocheck/
        (cd nocheck/{tree.name} && DEB_BUILD_PROFILES=nocheck DEB_BUILD_OPTIONS=nocheck \\
            dpkg-buildpackage -b -us -uc)
        dpkg -i deps/{dependency_deb.name} >/dev/null
        dpkg-source -x deps/{dependency_dsc.name} dependency-source >/dev/null
        (cd dependency-source && sh -ec "$(sed -n 's/^Test-Command: //p' debian/tests/control)")
        (cd src/{tree.name} && dpkg-buildpackage -S -us -uc && dpkg-buildpackage -b -us -uc)
        mkdir bin && cd bin && dpkg-source -x ../src/qboot-systemd_{VERSION}.dsc >/dev/null
        cd qboot-systemd-{VERSION} && dpkg-buildpackage -b -us -uc
    """
    done = run_in_build_root(work, script)
    assert done.returncode == 0, done.stdout[-6000:]
    return Packages(
        dependency_deb=dependency_deb,
        dependency_dsc=dependency_dsc,
        deb=only(work / "bin", "qboot-systemd_*.deb"),
        dsc=only(work / "src", "qboot-systemd_*.dsc"),
        tree_deb=only(work / "src", "qboot-systemd_*.deb"),
        nocheck_deb=only(work / "nocheck", "qboot-systemd_*.deb"),
        dependency_log=dependency.stdout,
        build_log=done.stdout,
    )


def deb_files(package: Path) -> set[str]:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split()[5].lstrip(".") for line in listing.splitlines() if not line.startswith("d")
    }


def deb_field(package: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(package), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_dependency_checked_at_build_time_and_installed(packages: Packages) -> None:
    """debian/tests/cdb-check ran in dh_auto_test and as the autopkgtest command."""
    assert "pure-cdb built: 3004 records identical to tinycdb" in packages.dependency_log
    assert "pure-cdb installed: 3004 records identical to tinycdb" in packages.build_log
    files = deb_files(packages.dependency_deb)
    assert any(
        name.startswith("/usr/lib/python3/dist-packages/cdblib/_djb_hash.") for name in files
    )
    assert deb_field(packages.dependency_deb, "Architecture") != "all"  # the C hash


def test_deb_builds_offline_from_tree_and_dsc_alike_running_its_tests(packages: Packages) -> None:
    for other in (packages.tree_deb, packages.nocheck_deb):
        assert deb_files(other) == deb_files(packages.deb)
        assert deb_field(other, "Depends") == deb_field(packages.deb, "Depends")
    # dh_auto_test ran the python-only tests against the built package, in both builds
    # with tests (nocheck ran none)
    assert len(re.findall(r"^=+ \d+ passed in ", packages.build_log, re.MULTILINE)) == 2
    # the source package holds every file of the C extension (the header too)
    (tarball,) = packages.dsc.parent.glob(f"qboot-systemd_{VERSION}.tar.*")
    listing = subprocess.run(
        ["tar", "-tf", str(tarball)], capture_output=True, text=True, check=True
    ).stdout.split()
    for source in ("_core.c", "_loop.c", "_core.h"):
        assert f"qboot-systemd-{VERSION}/qboot_systemd/tcpsrv/{source}" in listing


def test_deb_contents_depends_and_lintian(packages: Packages) -> None:
    files = deb_files(packages.deb)
    for expected in (
        "/usr/bin/qbootctl",
        "/usr/bin/qboot-tcpsrv",
        "/usr/bin/eqmaild",
        "/usr/lib/systemd/system-generators/qboot-systemd-generator",
        "/usr/lib/systemd/system/qmail-tcpd@.service",
        "/usr/lib/systemd/system/qmail-send.service",
        "/usr/share/man/man8/qbootctl.8.gz",
        "/usr/share/qboot-systemd/bootctrl/qmail-smtp.env",
        "/usr/lib/python3/dist-packages/qboot_systemd/cdb.py",
    ):
        assert expected in files, expected
    # qboot-tcpsrv's compiled per-connection path, hence an architecture-specific package
    extension = "/usr/lib/python3/dist-packages/qboot_systemd/tcpsrv/_core."
    assert any(name.startswith(extension) and name.endswith(".so") for name in files)
    assert not [name for name in files if "vendor" in name or name.endswith(".pth")]
    assert deb_field(packages.deb, "Architecture") not in ("", "all")
    depends = {item.split()[0] for item in deb_field(packages.deb, "Depends").split(", ")}
    assert {"python3-click", "python3-jinja2", "python3-pystemd"} <= depends
    assert "python3-pure-cdb" not in depends  # the tests' oracle: Build-Depends <!nocheck>
    dsc = packages.dsc.read_text()
    assert "python3-pure-cdb <!nocheck>" in dsc
    lintian = subprocess.run(
        [
            require_tool("lintian"),
            "--tag-display-limit",
            "0",
            str(packages.deb),
            str(packages.dsc),
            str(packages.dependency_deb),
            str(packages.dependency_dsc),
        ],
        env={**os.environ, "PATH": CLEAN_PATH},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    findings = [line for line in lintian.stdout.splitlines() if line[:2] in ("E:", "W:")]
    print("lintian:", findings or "clean")
    assert lintian.returncode == 0 and findings == [], lintian.stdout + lintian.stderr


@pytest.fixture(scope="module")
def box(packages: Packages) -> Iterator[Sandbox]:
    def stage_with_debs(stage: Path) -> None:
        add_real_qmail(stage)
        shutil.copy(packages.deb, stage / "qboot-systemd.deb")

    with booted_sandbox(stage_with_debs) as sandbox:
        yield sandbox


def test_deb_installs_boots_serves_and_purges(box: Sandbox) -> None:
    # No pure-cdb on this system: the package needs none to install, boot and deliver.
    assert box.run("/usr/bin/python3", "-c", "import cdblib", check=False).returncode == 1
    done = box.run("dpkg", "-i", "/qboot-systemd.deb", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # It starts nothing by itself: it says how.
    assert "start mail with: eqmaild start (or: qbootctl start)" in done.stdout + done.stderr
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
        f"s.sendmail('a@example.org', ['{LOCAL_RCPT}'], 'Subject: deb\\r\\n\\r\\nx');"
        " s.quit()",
        check=False,
    )
    assert mail.returncode == 0, mail.stderr
    # Real qmail: qmail-smtpd (as qmaild) queued it, qmail-send had qmail-local deliver it.
    deadline = time.monotonic() + 30
    delivered = ""
    while time.monotonic() < deadline and not delivered:
        delivered = box.run(
            "sh", "-c", f"grep -l 'Subject: deb' {MAILDIR}/new/* 2>/dev/null", check=False
        ).stdout
        time.sleep(0.2)
    assert delivered, box.run("journalctl", "-u", "qmail-send", "-n", "20", check=False).stdout
    box.run("sh", "-c", "echo '# admin edit' >> /var/qmail/etc/bootctrl/qmail-smtp.env")
    # subm by the seed's links, on 2587, then a broken edit: degraded, on its last good
    # settings, still serving.
    bootctrl = "/var/qmail/etc/bootctrl"
    box.run("ln", "-s", "qmail-tcpd", f"{bootctrl}/qmail-subm.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{bootctrl}/tcprules-subm.cdb")
    box.run("sed", "-i", "s/^PORT=587/PORT=2587/", f"{bootctrl}/qmail-subm.env")
    reload_and_settle(box)
    assert listening_on(box, 2587)
    box.run("sh", "-c", f"echo 'BANNER=\"unterminated' >> {bootctrl}/qmail-subm.env")
    reload_and_settle(box)
    status = box.run("/usr/bin/qbootctl", "status", check=False)
    assert status.returncode == 150, status.stdout + status.stderr
    assert listening_on(box, 2587)
    # Purged while mail runs: prerm stops the units, whose programs are about to go,
    # degraded or not.
    done = box.run("dpkg", "--purge", "qboot-systemd", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for unit in ("qmail-send.service", "qmail-tcpd@smtp.socket", "qmail-tcpd@smtp.service"):
        state = box.run("systemctl", "is-active", unit, check=False).stdout.strip()
        assert state in ("inactive", "unknown"), (unit, state)
    assert not listening_on(box, 25) and not listening_on(box, 2587)
    left = box.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "qmail-*")
    assert [row for row in left.stdout.splitlines() if " active " in row] == [], left.stdout
    for gone in (
        "/usr/bin/qbootctl",
        "/usr/lib/systemd/system/qmail-tcpd@.service",
        "/usr/lib/systemd/system-generators/qboot-systemd-generator",
        "/usr/lib/python3/dist-packages/qboot_systemd",
    ):
        assert box.run("test", "-e", gone, check=False).returncode == 1, gone
    edited = box.run("cat", "/var/qmail/etc/bootctrl/qmail-smtp.env").stdout
    assert "# admin edit" in edited  # the admin's bootctrl stays


RPM_MACROS = {
    # What Fedora's python3-devel, pyproject-rpm-macros and systemd-rpm-macros define,
    # emulated with Debian's python3 and pip for this smoke build.
    "python3": "/usr/bin/python3",
    # Debian's pip installs to /usr/local unless told the distribution's layout.
    "python3_sitelib": "/usr/lib/python3/dist-packages",
    "python3_sitearch": "/usr/lib/python3/dist-packages",
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
    # Fedora's runs /usr/bin/pytest with the buildroot's site directories in PYTHONPATH.
    "pytest": "PYTHONPATH=%{buildroot}%{python3_sitelib}:$PYTHONPATH %{python3} -P -m pytest",
}


def rpm_files(package: Path) -> set[str]:
    listing = subprocess.run(
        ["rpm", "-qlp", str(package)], capture_output=True, text=True, check=True
    ).stdout
    return set(listing.split())


def test_rpm_spec_smoke_build(tmp_path: Path, packages: Packages) -> None:
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
    # %check's python3-pure-cdb (Fedora's for the BuildRequires) is our Debian package's here.
    deps = tmp_path / "deps"
    subprocess.run(["dpkg-deb", "-x", str(packages.dependency_deb), str(deps)], check=True)
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
            "PYTHONPATH": str(deps / "usr/lib/python3/dist-packages"),
            "DEB_PYTHON_INSTALL_LAYOUT": "deb_system",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (package,) = (tmp_path / "RPMS").glob("*/qboot-systemd-0.1.0-1.smoke.*.rpm")
    assert package.parent.name != "noarch"  # it ships the _core extension
    files = rpm_files(package)
    assert any("/qboot_systemd/tcpsrv/_core." in name for name in files), sorted(files)
    assert "/usr/lib/systemd/system-generators/qboot-systemd-generator" in files
    assert "/usr/lib/systemd/system/qmail-tcpd@.service" in files
    assert "/usr/bin/qbootctl" in files
    assert re.search(r"^=+ \d+ passed in ", done.stdout, re.MULTILINE), done.stdout[-3000:]
    requires = subprocess.run(
        ["rpm", "-qpR", str(package)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for needed in ("python3-click", "python3-jinja2", "systemd"):
        assert needed in requires, requires
    assert "python3-pystemd >= 0.11" in requires, requires
    assert not [name for name in requires if "pure-cdb" in name], requires


def test_rpm_needs_pure_cdb_only_for_its_check() -> None:
    """pure-cdb is the tests' oracle: a BuildRequires while %check runs, else nothing."""
    rpmspec = require_tool("rpmspec")
    spec = str(ROOT / "packaging/rpm/qboot-systemd.spec")

    def query(*args: str) -> set[str]:
        done = subprocess.run(
            [rpmspec, "-q", *args, spec], capture_output=True, text=True, check=True
        )
        assert "warning" not in done.stderr, done.stderr
        return {line.split()[0] for line in done.stdout.splitlines()}

    assert "python3-pure-cdb" in query("--buildrequires")
    assert "python3-pure-cdb" not in query("--buildrequires", "--without", "check")
    assert "python3-pure-cdb" not in query("--requires")


# makepkg's part: the PKGBUILD's functions in its order, each from $srcdir, errexit.
MAKEPKG_STEPS = """
set -e
source "$1"
for step in build check package; do (cd "$srcdir" && "$step"); done
"""


# Arch's python, played by Debian's. Debian 12's setuptools (66) is older than the floor
# in pyproject.toml (Arch's is newer), so `python -m build` skips that check here.
PYTHON_SHIM = """#!/bin/sh
if [ "$1 $2" = "-m build" ]; then
    shift 2; exec /usr/bin/python3 -m build --skip-dependency-check "$@"
fi
exec /usr/bin/python3 "$@"
"""


def test_arch_pkgbuild_builds_checks_and_ships_what_the_deb_ships(
    tmp_path: Path, packages: Packages
) -> None:
    """makepkg is not here: bash runs the PKGBUILD's build(), check() and package() as
    makepkg does, with Debian's python3 as `python` installing in a /usr layout like
    Arch's, and the file list (python's own files aside) must equal the deb's."""
    print_arrays = 'source "$1"; echo "${depends[*]}"; echo "${checkdepends[*]}"'
    arrays = subprocess.run(
        ["bash", "-c", print_arrays, "pkgbuild", str(ROOT / "packaging/arch/PKGBUILD")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    depends, checkdepends = (set(line.split()) for line in arrays)
    assert {"python-jinja", "python-click", "python-pystemd"} <= depends
    # the tests' oracle: needed by check() only
    assert "python-pure-cdb" in checkdepends - depends
    srcdir, pkgdir, shims, deps = (tmp_path / name for name in ("src", "pkg", "bin", "deps"))
    clean_tree(srcdir)
    pkgdir.mkdir()
    shims.mkdir()
    (shims / "python").write_text(PYTHON_SHIM)
    (shims / "python").chmod(0o755)
    subprocess.run(["dpkg-deb", "-x", str(packages.dependency_deb), str(deps)], check=True)
    done = subprocess.run(
        ["bash", "-c", MAKEPKG_STEPS, "makepkg", str(ROOT / "packaging/arch/PKGBUILD")],
        env={
            "PATH": f"{shims}:{CLEAN_PATH}",
            "HOME": str(tmp_path),
            "srcdir": str(srcdir),
            "pkgdir": str(pkgdir),
            # check()'s python-pure-cdb (Arch's checkdepends), here our Debian package's files
            "PYTHONPATH": str(deps / "usr/lib/python3/dist-packages"),
            # installer then uses /usr/bin and /usr/lib/python3/dist-packages, not /usr/local
            "DEB_PYTHON_INSTALL_LAYOUT": "deb_system",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert re.search(r"^=+ \d+ passed in ", done.stdout, re.MULTILINE), done.stdout[-4000:]
    arch = {
        "/" + str(path.relative_to(pkgdir))
        for path in pkgdir.rglob("*")
        if (path.is_file() or path.is_symlink())
        and "dist-packages" not in str(path)
        and "__pycache__" not in str(path)
    }
    debian = {
        name.removesuffix(".gz")
        for name in deb_files(packages.deb)
        if "dist-packages" not in name
        and not name.startswith("/usr/share/doc/")
        and not name.startswith("/usr/share/python3/")
    }
    assert arch - {"/usr/share/licenses/qboot-systemd/LICENSE"} == debian
