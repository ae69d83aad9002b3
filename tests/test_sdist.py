"""The sdist `python -m build` makes holds every tracked file of the package (the C
extension's header too), a wheel builds from it alone with the compiled _core, and the
wheel's runtime requirements leave out the test oracle pure-cdb."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from .source_tree import VERSION, clean_tree, tracked_files

pytestmark = pytest.mark.slow
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3 and its python3-build


def python_build(source: Path, kind: str, outdir: Path) -> Path:
    """Debian's `python3 -m build` without network; Debian 12's setuptools (66) is older
    than pyproject.toml's floor, hence no dependency check."""
    done = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "build",
            f"--{kind}",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(outdir),
            str(source),
        ],
        env={**os.environ, "PATH": CLEAN_PATH},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    pattern = "*.tar.gz" if kind == "sdist" else "*.whl"
    (built,) = outdir.glob(pattern)
    return built


def test_sdist_holds_the_package_and_builds_the_extension(tmp_path: Path) -> None:
    tree = clean_tree(tmp_path / "src")
    sdist = python_build(tree, "sdist", tmp_path / "dist")
    prefix = f"qboot-systemd-{VERSION}/"
    with tarfile.open(sdist) as archive:
        members = {member.name.removeprefix(prefix) for member in archive.getmembers()}
        archive.extractall(tmp_path / "unpacked", filter="data")
    package = {name for name in tracked_files() if name.startswith("qboot_systemd/")}
    for source in ("_core.c", "_loop.c", "_core.h"):
        assert f"qboot_systemd/tcpsrv/{source}" in package  # what setup.py names
    assert package - members == set()

    # Only what the sdist holds: no checkout next to it.
    wheel = python_build(tmp_path / "unpacked" / prefix, "wheel", tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        requirements = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert any(
        name.startswith("qboot_systemd/tcpsrv/_core.") and name.endswith(".so") for name in names
    ), names
    # "click>=8.1" or, from older setuptools, "click (>=8.1)"; extras after ";"
    runtime = {
        re.split(r"[\s(<>=;]", requirement)[0]
        for requirement in requirements
        if "extra ==" not in requirement
    }
    assert runtime == {"jinja2", "pystemd", "click"}, requirements
    # the tests' oracle, in the dev extra only (quotes differ between setuptools versions)
    assert any(re.match(r"pure-cdb\b.*; *extra == .dev.$", r) for r in requirements), requirements
