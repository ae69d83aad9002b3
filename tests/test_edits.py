"""What an admin's edits do to the model and the generator's output, without systemd: port
clashes, the last good drop-ins of a broken service, TCPFLAGS -I, papercuts in env files."""

from __future__ import annotations

from pathlib import Path

import pytest

from qboot_systemd import admin, bootctrl, generator, units
from qboot_systemd.apply import observe, stamps
from qboot_systemd.errors import UserError
from qboot_systemd.problems import Problem


def clash_bootctrl(directory: Path) -> Path:
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("")
    (directory / "tcprules-default.cdb").write_bytes(b"")
    (directory / "qmail-smtp.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtp.cdb").symlink_to("tcprules-default.cdb")
    (directory / "qmail-smtp.env").write_text("PORT=25\n")
    return directory


def test_a_named_port_wins_against_the_default_one(tmp_path: Path) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    (directory / "qmail-nosuch.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-nosuch.cdb").symlink_to("tcprules-default.cdb")
    model = bootctrl.load(directory, "/q")
    assert [service.name for service in model.services] == ["smtp"]
    assert "25 is already used by service smtp; service nosuch skipped" in str(model.problems[0])


def test_enable_refuses_a_clash_before_any_link(tmp_path: Path) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    with pytest.raises(UserError, match="nosuch would listen on 25, which service smtp uses"):
        admin.enable(directory, "nosuch")
    assert sorted(p.name for p in directory.iterdir() if "nosuch" in p.name) == []
    (directory / "qmail-subm.env").write_text("PORT=587\n")
    assert admin.enable(directory, "subm")[0] == "created qmail-subm.rc -> qmail-tcpd"


def test_generator_keeps_a_broken_service_on_its_last_good_drop_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    state = tmp_path / "state"
    monkeypatch.setenv("QBOOT_STATE_DIR", str(state))
    paths = units.Paths()
    files, links, problems = generator.plan(stamps.load(directory, "/q"), paths)
    assert problems == []
    stamp = files["qmail-tcpd@smtp.service.d/qboot-config.conf"]
    assert stamp.endswith("[Service]\nEnvironment=QBOOT_CONFIG=" + stamp[-17:])
    assert files[stamps.TRIGGER] and links["paths.target.wants/qboot-reconcile.path"]
    for relative in stamps.service_files("smtp"):  # what reconcile remembers
        (state / "last-good" / "smtp" / relative).parent.mkdir(parents=True, exist_ok=True)
        (state / "last-good" / "smtp" / relative).write_text(files[relative])
    (directory / "qmail-smtp.env").write_text('PORT=2525\nBANNER="oops\n')
    broken = stamps.load(directory, "/q")
    assert broken.services == ()
    again, links, problems = generator.plan(broken, paths)
    assert {k: v for k, v in again.items() if k != stamps.TRIGGER} == {
        k: v for k, v in files.items() if k != stamps.TRIGGER
    }
    assert links["sockets.target.wants/qmail-tcpd@smtp.socket"].endswith("qmail-tcpd@.socket")
    assert any("service smtp keeps its last good settings" in str(p) for p in problems)
    unreadable = bootctrl.Bootctrl(
        str(directory), "/q", None, (), (Problem(str(directory), 0, "cannot read directory"),)
    )
    kept, links, _ = generator.plan(unreadable, paths)
    assert stamps.TRIGGER not in kept  # no reconcile: it would stop everything
    dropin = "qmail-tcpd@smtp.service.d/qboot.conf"
    assert kept[dropin] == files[dropin]
    found = observe.service_problems(broken, "smtp")
    assert [str(p) for p in found] == [
        f"{directory}/qmail-smtp.env:2: newline inside a quoted value (unterminated double quote?)"
    ]


def test_holders_keep_their_port_against_an_edit(tmp_path: Path) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    (directory / "qmail-abc.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-abc.cdb").symlink_to("tcprules-default.cdb")
    (directory / "qmail-abc.env").write_text("PORT=25\n")
    assert [s.name for s in bootctrl.load(directory, "/q").services] == ["abc"]
    held = bootctrl.load(directory, "/q", holders={"smtp": frozenset({"25"})})
    assert [s.name for s in held.services] == ["smtp"]
    assert "25 is already used by service smtp; service abc skipped" in str(held.problems[0])


def test_tcpflags_interface_becomes_bind_to_device(tmp_path: Path) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    (directory / "qmail-smtp.env").write_text('PORT=25\nTCPFLAGS="-vR -I eth0.1"\n')
    model = bootctrl.load(directory, "/q")
    (smtp,) = model.services
    assert smtp.interface == "eth0.1" and smtp.tcpflags == ("-v", "-R")
    assert "BindToDevice=eth0.1\n" in units.socket_dropin(smtp)
    assert "-I" not in units.tcpsrv_argv(smtp, units.Paths())
    for bad in ("-I", "-I a/b", "-I 0123456789abcdef"):
        (directory / "qmail-smtp.env").write_text(f'TCPFLAGS="{bad}"\n')
        problem = str(bootctrl.load(directory, "/q").problems[0])
        assert "qmail-smtp.env:1: TCPFLAGS: " in problem and "-I" in problem


def test_papercuts_in_env_files(tmp_path: Path) -> None:
    directory = clash_bootctrl(tmp_path / "b")
    env = directory / "qmail-smtp.env"

    def load(data: bytes) -> bootctrl.Bootctrl:
        env.write_bytes(data)
        return bootctrl.load(directory, "/q")

    bom = load(b"\xef\xbb\xbfPORT=25\n")
    assert "qmail-smtp.env:1: starts with a UTF-8 byte order mark (BOM)" in str(bom.problems[0])
    crlf = load(b"PORT=25\nIP=0\r\n")
    assert "qmail-smtp.env:2: carriage return (a DOS/Windows line end)" in str(crlf.problems[0])
    for name, port in (("smtp", 25), ("submission", 587), ("mail", 25)):
        assert load(f"PORT={name}\n".encode()).services[0].listen[0].port == port
    unknown = load(b"PORT=nosuch\n")
    assert "PORT='nosuch': not a port number, nor a tcp service in /etc/services" in str(
        unknown.problems[0]
    )
    typo = load(b"PORT=25\nPROT=2588\nRBL=x\nPRESMTPD=$RBL\n")
    assert [s.name for s in typo.services] == ["smtp"]  # a warning: it still runs
    assert [str(p) for p in typo.problems] == [
        f"{env}:2: warning: PROT is not a setting qboot reads; did you mean PORT? "
        "(a variable for $NAME needs no change)"
    ]
