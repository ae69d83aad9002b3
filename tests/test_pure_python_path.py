"""The pure-Python path (no _core extension) passes qboot-tcpsrv's own and differential
tests too: they run again here with QBOOT_NO_EXTENSION=1, so CI covers both paths."""

from __future__ import annotations

import os
import subprocess

from .conftest import ROOT


def test_tcpsrv_tests_pass_without_the_extension() -> None:
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_tcpsrv.py",
            "tests/test_tcpsrv_compat.py",
        ],
        cwd=ROOT,
        env={**os.environ, "QBOOT_NO_EXTENSION": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert " skipped" in done.stdout  # the extension's own tests: the variable took effect
