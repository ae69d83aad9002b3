"""The one subprocess wrapper: commands with a timeout, output captured as text."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from .errors import UserError


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not installed", "apt-get install systemd") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        raise UserError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done
