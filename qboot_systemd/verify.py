"""qbootctl verify: generated drop-ins + templates, checked by systemd-analyze verify, and
each service's chain and rules checked as its user would meet them."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import generator, install, units
from .apply import health
from .bootctrl import Bootctrl
from .run import run


@dataclass(frozen=True)
class Report:
    ok: bool
    lines: tuple[str, ...]


def concrete_units(files: dict[str, str], links: dict[str, str]) -> list[str]:
    """Unit instances the generator configured (qmail-tcpd@smtp.socket, ...)."""
    names = {relative.split("/")[0].removesuffix(".d") for relative in files if "/" in relative}
    names |= {relative.split("/")[1] for relative in links}
    return sorted(names)


def verify(model: Bootctrl, tcpsrv: str, unit_dir: Path | None = None) -> Report:
    lines = [f"problem: {problem}" for problem in model.problems]
    paths = units.Paths(tcpsrv=tcpsrv)
    files, links, problems = generator.plan(model, paths)
    lines += [f"problem: {p}" for p in problems if p not in model.problems]
    # Units systemd accepts can still serve nobody: a chain that cannot run, rules that
    # cannot be read. Judged as `qbootctl status` judges a running service.
    unserving = [
        f"problem: {service.name}: {finding}"
        for service in model.services
        for finding in health.assess(health.static_facts(service, tcpsrv)).findings
    ]
    lines += unserving
    with tempfile.TemporaryDirectory(prefix="qboot-verify.") as scratch:
        directory = Path(scratch)
        if unit_dir is not None:
            for name in install.UNIT_NAMES:
                shutil.copy(unit_dir / name, directory / name)
        else:
            layout = install.Layout(
                Path("/"),
                Path(tcpsrv).parent,
                Path("/usr/lib/systemd/system"),
                Path(model.qmail_home),
            )
            for name, text in install.render_units(layout).items():
                (directory / name).write_text(text)
        generator.write(directory, files, {})
        names = concrete_units(files, links)
        for name in names:
            if "@" in name:  # an instance: point it at its template, as systemd would
                prefix, suffix = name.split("@")[0], name.rsplit(".", 1)[1]
                os.symlink(f"{prefix}@.{suffix}", directory / name)
        if names:
            done = run(
                [
                    "systemd-analyze",
                    "verify",
                    "--man=no",
                    *(str(directory / name) for name in names),
                ],
                env={
                    **os.environ,
                    "SYSTEMD_UNIT_PATH": f"{directory}:",
                    "SYSTEMD_LOG_LEVEL": "notice",
                },
            )
            findings = [line for line in (done.stderr + done.stdout).splitlines() if line]
            lines += [f"systemd-analyze: {line}" for line in findings]
            if done.returncode != 0 and not findings:
                lines.append(f"systemd-analyze: exit status {done.returncode}")
            failed = done.returncode != 0 or bool(findings)
        else:
            failed = False
    ok = not failed and not problems and not unserving
    verdict = f"verified {len(names)} units" if ok else "verify found problems"
    return Report(ok, (*lines, verdict))
