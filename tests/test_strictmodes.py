"""StrictModes: what the generator refuses to trust in bootctrl, and that refusing one
service never costs the others.

The generator runs as a subprocess with a deadline (a FIFO must not hang it) and logs to
a file. Runs as root: files are handed to uid 65534 with os.chown.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from qboot_systemd import bootctrl

from .conftest import ROOT, STRICT

NOBODY = 65534
SECRET = "SECRET-KEY-MATERIAL-6f1d"
RUN_GENERATOR = (
    "import sys; from pathlib import Path; from qboot_systemd import generator, units; "
    "sys.exit(generator.run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "
    "units.Paths(), sys.argv[4]))"
)


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        message = "StrictModes tests chown files to another uid: run them as root"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)


def stage(tmp_path: Path) -> Path:
    """A bootctrl with services `good` and `x`, modes set explicitly (never the umask's);
    `x` has its own script and rules so each can be broken alone."""
    top = tmp_path / "top"
    directory = top / "bootctrl"
    other = tmp_path / "other"
    for path in (top, directory, other):
        path.mkdir()
        path.chmod(0o755)
    files = {
        "qmail-tcpd": ("#!/bin/sh\n", 0o755),
        "qmail-good.env": ("PORT=2525\n", 0o644),
        "qmail-x.env": ("PORT=2526\nsetenv NOTE 'x env'\n", 0o644),
        "tcprules-default.cdb": ("\0" * 2048, 0o644),
        "tcprules-x.cdb": ("\0" * 2048, 0o644),
        "shared.env": ("PORT=2527\n", 0o644),
    }
    for name, (text, mode) in files.items():
        write(directory / name, text, mode)
    write(other / "qmail-tcpd", "#!/bin/sh\n", 0o755)
    write(other / "rules.cdb", "\0" * 2048, 0o644)
    write(other / "key", f"{SECRET}\nPORT=1\n", 0o600)
    (directory / "qmail-good.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-good.cdb").symlink_to("tcprules-default.cdb")
    (directory / "qmail-x.rc").symlink_to(other / "qmail-tcpd")
    return directory


def write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def generate(directory: Path, home: Path | None = None) -> tuple[set[str], str]:
    """Run the generator as systemd would; the enabled services and the problems logged."""
    output = directory.parent.parent / "out"
    log = directory.parent.parent / "generator.log"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_GENERATOR,
            str(output),
            str(directory),
            str(home or directory.parent.parent / "qmail"),
            str(log),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    wants = output / "sockets.target.wants"
    enabled = {re.sub(r"qmail-tcpd@(.*)\.socket", r"\1", p.name) for p in wants.iterdir()}
    return enabled, log.read_text() if log.exists() else ""


def chown_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o644)


def device(path: Path) -> None:
    path.unlink()
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers


def directory_instead(path: Path) -> None:
    path.unlink()
    path.mkdir(mode=0o755)


def link(target: str | Path) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        path.unlink()
        path.symlink_to(target)

    return change


def chmod(mode: int) -> Callable[[Path], None]:
    return lambda path: path.chmod(mode)


ENV_CASES: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "owner": (chown_nobody, "owned by uid 65534; run chown root "),
    "group-writable": (chmod(0o664), "writable by group; run chmod go-w "),
    "world-writable": (chmod(0o646), "writable by others; run chmod go-w "),
    "both": (chmod(0o666), "writable by group and others"),
    "fifo": (fifo, "a FIFO, not a regular file"),
    "device": (device, "a character device, not a regular file"),
    "directory": (directory_instead, "a directory, not a regular file"),
    "dev-zero": (link("/dev/zero"), "leaves"),
    "key-file": (link("../../other/key"), "leaves"),
    "absolute-link": (link("/etc/passwd"), "leaves"),
    "huge": (lambda p: write(p, "# " + "x" * 70_000 + "\n", 0o644), "larger than 64 KiB"),
    "link-inside": (link("shared.env"), None),
    "link-chain-inside": (link("qmail-good.env"), "2525 is already used by service good"),
    "link-dangling": (link("nowhere.env"), "No such file or directory"),
    "link-loop": (link("qmail-x.env"), "Too many levels of symbolic links"),
    "readonly": (chmod(0o400), None),
    "owner-root-other-group": (lambda p: os.chown(p, 0, NOBODY), None),
}


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_env_file_matrix(case: str, tmp_path: Path) -> None:
    directory = stage(tmp_path)
    change, fragment = ENV_CASES[case]
    change(directory / "qmail-x.env")
    enabled, log = generate(directory)
    assert "good" in enabled, log
    assert SECRET not in log
    if fragment is None:
        assert "x" in enabled and log == ""
        return
    assert "x" not in enabled
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"{directory}/qmail-x.env" in line
    assert fragment in line


def test_symlink_inside_bootctrl_to_an_untrusted_file_is_refused(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    chown_nobody(directory / "shared.env")
    link("shared.env")(directory / "qmail-x.env")
    enabled, log = generate(directory)
    assert enabled == {"good"}
    assert f"{directory}/qmail-x.env: symlink to shared.env: owned by uid 65534" in log


RULES_CASES: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "owner": (chown_nobody, "owned by uid 65534"),
    "group-writable": (chmod(0o664), "writable by group"),
    "world-writable": (chmod(0o646), "writable by others"),
    "fifo": (fifo, "a FIFO, not a regular file"),
    "directory": (directory_instead, "a directory, not a regular file"),
    "dev-zero": (link("/dev/zero"), "a character device"),
    "link-inside": (link("tcprules-default.cdb"), None),
    "link-out-trusted": (link("../../other/rules.cdb"), None),
    "link-dangling": (link("nowhere.cdb"), "dangling symlink"),
}


@pytest.mark.parametrize("case", sorted(RULES_CASES))
def test_rules_file_matrix(case: str, tmp_path: Path) -> None:
    directory = stage(tmp_path)
    change, fragment = RULES_CASES[case]
    change(directory / "tcprules-x.cdb")
    enabled, log = generate(directory)
    assert "good" in enabled, log
    if fragment is None:
        assert "x" in enabled and log == ""
        return
    assert "x" not in enabled
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"{directory}/tcprules-x.cdb" in line and fragment in line


def test_rules_link_out_to_an_untrusted_directory_is_refused(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    (tmp_path / "other").chmod(0o777)
    link("../../other/rules.cdb")(directory / "tcprules-x.cdb")
    enabled, log = generate(directory)
    # qmail-x.rc also points into that directory: either refusal names it
    assert enabled == {"good"}
    assert f"{tmp_path}/other: writable by group and others; run chmod go-w" in log


RC_CASES: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "owner": (chown_nobody, "owned by uid 65534"),
    "group-writable": (chmod(0o775), "writable by group"),
    "fifo": (fifo, "a FIFO"),
    "directory": (directory_instead, "a directory"),
}


@pytest.mark.parametrize("case", sorted(RC_CASES))
def test_rc_link_target_matrix(case: str, tmp_path: Path) -> None:
    directory = stage(tmp_path)
    change, fragment = RC_CASES[case]
    change(tmp_path / "other" / "qmail-tcpd")
    enabled, log = generate(directory)
    assert enabled == {"good"}
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"{tmp_path}/other/qmail-tcpd" in line and fragment in line


def test_shared_script_untrusted_skips_every_service_that_uses_it(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    (directory / "qmail-tcpd").chmod(0o777)
    enabled, log = generate(directory)
    assert enabled == {"x"}  # x's link points to its own, trusted script
    assert "qmail-tcpd: writable by group and others; run chmod go-w" in log


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: os.chown(d, NOBODY, NOBODY), "bootctrl: owned by uid 65534; run chown root"),
        (lambda d: d.chmod(0o775), "bootctrl: writable by group; run chmod go-w"),
        (lambda d: d.chmod(0o1777), "bootctrl: writable by group and others"),
        (lambda d: d.parent.chmod(0o777), "top: writable by group and others"),
        (lambda d: os.chown(d.parent, NOBODY, 0), "top: owned by uid 65534"),
    ],
)
def test_untrusted_bootctrl_or_parent_gives_nothing(
    tmp_path: Path, change: Callable[[Path], None], fragment: str
) -> None:
    directory = stage(tmp_path)
    change(directory)
    model = bootctrl.load(directory, tmp_path / "qmail")
    assert model.services == () and model.send is None
    (problem,) = model.problems
    assert fragment in str(problem) and "nothing in" in problem.message


def test_sticky_parent_is_fine(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    directory.parent.chmod(0o1777)  # like /tmp: nobody else can rename bootctrl away
    enabled, log = generate(directory)
    assert enabled == {"good", "x"} and log == ""


def test_symlinked_bootctrl_is_checked_where_it_leads(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(directory)
    assert {s.name for s in bootctrl.load(alias, tmp_path / "q").services} == {"good", "x"}
    directory.chmod(0o777)
    assert "writable by group and others" in str(bootctrl.load(alias, tmp_path / "q").problems[0])


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("/etc/shadow", "name a .cdb file in the bootctrl directory"),
        ("../../..", "name a .cdb file"),
        ("../other/rules.cdb", "name a .cdb file in the bootctrl directory"),
        ("tcprules-x.txt", "name a .cdb file"),
        ("x" * 296 + ".cdb", "File name too long"),
        ("/" + "y" * 5000 + ".cdb", "File name too long"),
        ("nowhere.cdb", "missing"),
    ],
)
def test_cdb_outside_bootctrl_or_not_a_cdb_is_refused_at_its_line(
    tmp_path: Path, value: str, fragment: str
) -> None:
    directory = stage(tmp_path)
    write(directory / "qmail-x.env", f"PORT=2526\nCDB={value}\n", 0o644)
    enabled, log = generate(directory)
    assert enabled == {"good"}
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"{directory}/qmail-x.env:2: " in line and fragment in line
    assert len(line) < 400  # the value is cut, not echoed whole


def test_cdb_absolute_path_that_passes_the_checks(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    rules = tmp_path / "other" / "rules.cdb"
    write(directory / "qmail-x.env", f"PORT=2526\nCDB={rules}\n", 0o644)
    model = bootctrl.load(directory, tmp_path / "q")
    service = model.service("x")
    assert service is not None and service.rules == str(rules)
    rules.chmod(0o666)
    model = bootctrl.load(directory, tmp_path / "q")
    assert model.service("x") is None
    assert f"{rules}: writable by group and others" in model.problems[0].message


def test_untrusted_or_fifo_defaultdelivery_falls_back(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    write(directory / "qmail-init.rc", "", 0o755)
    control = tmp_path / "qmail" / "control"
    control.mkdir(parents=True)
    for path in (control.parent, control):
        path.chmod(0o755)
    os.mkfifo(control / "defaultdelivery", 0o644)
    enabled, log = generate(directory, control.parent)
    assert enabled == {"good", "x"}
    assert "defaultdelivery: a FIFO, not a regular file; refused; using ./Maildir/" in log
    (control / "defaultdelivery").unlink()
    write(control / "defaultdelivery", "|evil\n", 0o666)
    model = bootctrl.load(directory, control.parent)
    assert model.send is not None and model.send.default_delivery == "./Maildir/"
    assert "writable by group and others" in str(model.problems)


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def runs_as_nobody(python: str) -> bool:
    """The generator needs nothing but the standard library: any Python 3.11 will do."""
    try:
        return as_nobody([python, "-c", "import qboot_systemd.generator"]).returncode == 0
    except PermissionError:
        return False


def test_unreadable_env_file_skips_only_its_service() -> None:
    """EACCES needs a reader that is not root: the generator runs as uid 65534 here,
    on a bootctrl outside pytest's private (mode 700) temporary directory."""
    python = next((p for p in (sys.executable, "/usr/bin/python3") if runs_as_nobody(p)), None)
    if python is None:
        pytest.skip("uid 65534 can run no Python that imports this checkout")
    base = Path(tempfile.mkdtemp(prefix="qboot-strictmodes."))
    try:
        base.chmod(0o755)
        directory = stage(base)
        (directory / "qmail-x.env").chmod(0o600)
        output, log = base / "out", base / "generator.log"
        output.mkdir()
        log.write_text("")
        for path in (output, log):
            os.chown(path, NOBODY, NOBODY)
        done = as_nobody(
            [python, "-c", RUN_GENERATOR, str(output), str(directory), "/none", str(log)]
        )
        assert done.returncode == 0, done.stderr
        wants = output / "sockets.target.wants"
        assert [p.name for p in wants.iterdir()] == ["qmail-tcpd@good.socket"]
        assert (
            f"{directory}/qmail-x.env: cannot read: Permission denied; service x skipped"
            in log.read_text()
        )
    finally:
        shutil.rmtree(base)


def swappable_link(tmp_path: Path, target: Path) -> Path:
    """The review's repro: a link to a good cdb, in a directory uid 65534 owns; that
    user could point it at rules of their own (`:allow,RELAYCLIENT=""`) after the check."""
    evil = tmp_path / "rev" / "evil"
    evil.mkdir(parents=True)
    for path in (evil.parent, evil):
        path.chmod(0o755)
    chown_nobody(evil)
    link_path = evil / "link.cdb"
    link_path.symlink_to(target)
    chown_nobody(link_path)
    return link_path


@pytest.mark.parametrize("how", ["cdb-setting", "rules-link"])
def test_cdb_reached_through_a_link_another_user_can_swap_is_refused(
    tmp_path: Path, how: str
) -> None:
    directory = stage(tmp_path)
    good = tmp_path / "rev" / "good.cdb"
    link_path = swappable_link(tmp_path, good)
    write(good, "\0" * 2048, 0o644)
    if how == "cdb-setting":
        write(directory / "qmail-x.env", f"PORT=2526\nCDB={link_path}\n", 0o644)
    else:
        link(link_path)(directory / "tcprules-x.cdb")
    enabled, log = generate(directory)
    assert enabled == {"good"}, log
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"{link_path}: leads through {link_path.parent}: owned by uid 65534" in line
    assert f"run chown root {link_path.parent}" in line


def test_link_owned_by_another_user_in_a_sticky_shared_directory_is_refused(
    tmp_path: Path,
) -> None:
    directory = stage(tmp_path)
    good = tmp_path / "rev" / "good.cdb"
    link_path = swappable_link(tmp_path, good)
    write(good, "\0" * 2048, 0o644)
    os.chown(link_path.parent, 0, 0)
    link_path.parent.chmod(0o1777)  # like /tmp: its owner may still replace the link
    write(directory / "qmail-x.env", f"PORT=2526\nCDB={link_path}\n", 0o644)
    model = bootctrl.load(directory, tmp_path / "q")
    assert model.service("x") is None
    assert (
        f"symlink owned by uid 65534 in a directory others can write; run chown -h root {link_path}"
        in str(model.problems)
    )
    os.chown(link_path, 0, 0, follow_symlinks=False)
    model = bootctrl.load(directory, tmp_path / "q")
    assert model.problems == () and model.service("x") is not None


def test_links_through_trusted_directories_keep_the_path_as_given(tmp_path: Path) -> None:
    """Only root can change where such a path leads, so the unit keeps it: a later
    `ln -sf` or mktcprules' rename in bootctrl reaches qboot-tcpsrv at its next connection."""
    directory = stage(tmp_path)
    hop = tmp_path / "hop"
    hop.mkdir(mode=0o755)
    (hop / "rules.cdb").symlink_to("../other/rules.cdb")
    (hop / "up").symlink_to("..")
    given = f"{hop}/up/hop/rules.cdb"
    write(directory / "qmail-x.env", f"PORT=2526\nCDB={given}\n", 0o644)
    model = bootctrl.load(directory, tmp_path / "q")
    assert model.problems == ()
    assert model.service("x").rules == given  # type: ignore[union-attr]
    assert model.service("good").rules == f"{directory}/tcprules-good.cdb"  # type: ignore[union-attr]
    (tmp_path / "other").chmod(0o777)  # now the target's directory fails, via both links
    model = bootctrl.load(directory, tmp_path / "q")
    assert model.service("x") is None
    assert f"leads through {tmp_path}/other: writable by group and others" in str(model.problems)


def test_link_loop_outside_bootctrl_is_a_problem(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    (tmp_path / "loop.cdb").symlink_to("loop.cdb")
    link(tmp_path / "loop.cdb")(directory / "tcprules-x.cdb")
    enabled, log = generate(directory)
    assert enabled == {"good"} and "Too many levels of symbolic links" in log


def test_rc_script_reached_through_a_swappable_link_is_refused(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    link_path = swappable_link(tmp_path, tmp_path / "other" / "qmail-tcpd")
    link_path.rename(link_path.with_name("qmail-tcpd"))
    link(link_path.with_name("qmail-tcpd"))(directory / "qmail-x.rc")
    enabled, log = generate(directory)
    assert enabled == {"good"}
    (line,) = [line for line in log.splitlines() if "service x skipped" in line]
    assert f"leads through {link_path.parent}: owned by uid 65534" in line


def test_bootctrl_reached_through_a_swappable_link_gives_nothing(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    alias = swappable_link(tmp_path, directory)
    model = bootctrl.load(alias, tmp_path / "q")
    assert model.services == () and model.send is None
    (problem,) = model.problems
    assert problem.file == str(alias.parent) and "owned by uid 65534" in problem.message


def test_defaultdelivery_through_a_swappable_link_falls_back(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    write(directory / "qmail-init.rc", "", 0o755)
    control = qmail_control(tmp_path)
    good = tmp_path / "rev" / "delivery"
    link_path = swappable_link(tmp_path, good)
    write(good, "|/usr/bin/procmail\n", 0o644)
    (control / "defaultdelivery").symlink_to(link_path)
    model = bootctrl.load(directory, control.parent)
    assert model.send is not None and model.send.default_delivery == "./Maildir/"
    assert f"leads through {link_path.parent}: owned by uid 65534" in str(model.problems)


def qmail_control(tmp_path: Path) -> Path:
    control = tmp_path / "qmail" / "control"
    control.mkdir(parents=True)
    for path in (control.parent, control):
        path.chmod(0o755)
    return control


def local_names(directory: Path, home: Path) -> tuple[set[str], str]:
    model = bootctrl.load(directory, home)
    return {service.local_name for service in model.services}, "\n".join(map(str, model.problems))


ME_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "owner": (chown_nobody, "owned by uid 65534"),
    "writable": (chmod(0o666), "writable by group and others"),
    "shadow-link": (link("../../other/shadow"), "not a host name"),
    "directory-link-swappable": (link("../../rev/evil/me"), "leads through"),
    "spaces": (lambda p: write(p, "mx example\n", 0o644), "not a host name"),
    "control-char": (lambda p: write(p, "mx\x1b[2J\n", 0o644), "not a host name"),
    "too-long": (lambda p: write(p, "a" * 256 + "\n", 0o644), "not a host name"),
    "empty": (lambda p: write(p, "", 0o644), "not a host name"),
    "huge": (lambda p: write(p, "a" * 70_000, 0o644), "larger than 64 KiB"),
    "device": (device, "a character device"),
}


@pytest.mark.parametrize("case", sorted(ME_CASES))
def test_control_me_that_fails_gives_l_0_and_names_the_file(case: str, tmp_path: Path) -> None:
    directory = stage(tmp_path)
    control = qmail_control(tmp_path)
    write(control / "me", "mx.example.org\n", 0o644)
    assert local_names(directory, control.parent) == ({"mx.example.org"}, "")
    write(tmp_path / "other" / "shadow", f"root:*:{SECRET}:0:99999:7:::\n", 0o600)
    swappable_link(tmp_path, tmp_path / "other" / "key").rename(tmp_path / "rev" / "evil" / "me")
    change, fragment = ME_CASES[case]
    change(control / "me")
    names, problems = local_names(directory, control.parent)
    assert names == {"0"}
    assert problems.startswith(f"{control}/me") and fragment in problems
    assert "; using -l 0" in problems and problems.count("\n") == 0
    for secret in (SECRET, "example", "\x1b", "aaaa"):
        assert secret not in problems


def test_control_me_fifo_does_not_hang_the_generator(tmp_path: Path) -> None:
    directory = stage(tmp_path)
    control = qmail_control(tmp_path)
    os.mkfifo(control / "me", 0o644)
    enabled, log = generate(directory, control.parent)
    assert enabled == {"good", "x"}
    assert f"{control}/me: a FIFO, not a regular file; refused; using -l 0" in log
    unit = directory.parent.parent / "out" / "qmail-tcpd@good.service.d" / "qboot.conf"
    assert " -l 0 " in unit.read_text()
