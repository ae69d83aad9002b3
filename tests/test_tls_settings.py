"""TLS=, CERTFILE=, KEYFILE=, CCAFILE=, CIPHERS= in an env file: read by the settings
table, written into qboot-tcpsrv's command line (-S -E -K -A -F), and certificate files
that cannot serve found before the settings are applied (the reconcile refuses them and
keeps the last good ones, as for an unknown USER=), each as one line at file:line."""

from __future__ import annotations

import os
from pathlib import Path

from qboot_systemd import bootctrl
from qboot_systemd.units import Paths, tcpsrv_argv

from .bootctrl_trees import make_directory
from .tls_harness import make_pair


def load(tmp_path: Path, env: str, accounts: bool = False) -> bootctrl.Bootctrl:
    return bootctrl.load(make_directory(tmp_path, env), "/q", check_accounts=accounts)


def flags_after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_tls_settings_become_qboot_tcpsrv_flags(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        "PORT=465\nTLS=implicit\nCERTFILE=/etc/ssl/mail.pem\nKEYFILE=/etc/ssl/mail.key\n"
        "CCAFILE=/etc/ssl/ca.pem\nCIPHERS=ECDHE+AESGCM\n",
    )
    assert model.problems == ()
    argv = tcpsrv_argv(model.services[0], Paths())
    chain = argv.index("-")
    assert flags_after(argv[:chain], "-S") == "implicit"
    assert flags_after(argv[:chain], "-E") == "/etc/ssl/mail.pem"
    assert flags_after(argv[:chain], "-K") == "/etc/ssl/mail.key"
    assert flags_after(argv[:chain], "-A") == "/etc/ssl/ca.pem"
    assert flags_after(argv[:chain], "-F") == "ECDHE+AESGCM"


def test_sslserver_setenv_lines_count_and_the_key_defaults_to_the_certificate(
    tmp_path: Path,
) -> None:
    model = load(tmp_path, "PORT=587\nTLS=starttls\nsetenv CERTFILE /etc/ssl/both.pem\n")
    assert model.problems == ()
    argv = tcpsrv_argv(model.services[0], Paths())
    assert flags_after(argv, "-S") == "starttls" and flags_after(argv, "-E") == "/etc/ssl/both.pem"
    assert "-K" not in argv[: argv.index("-")]


def test_without_tls_no_flags_and_certfile_stays_an_exported_variable(tmp_path: Path) -> None:
    model = load(tmp_path, "PORT=2525\nsetenv CERTFILE /etc/ssl/x.pem\n")
    service = model.services[0]
    assert "-S" not in tcpsrv_argv(service, Paths())
    assert ("CERTFILE", "/etc/ssl/x.pem") in service.environment


def test_tls_without_a_certificate_is_refused_at_its_line(tmp_path: Path) -> None:
    model = load(tmp_path, "PORT=465\n\nTLS=implicit\n")
    assert model.services == ()
    assert [str(problem) for problem in model.problems] == [
        f"{tmp_path}/b/qmail-x.env:3: TLS='implicit': set CERTFILE too "
        "(the certificate chain, PEM); service x skipped"
    ]


def test_bad_values_name_their_line(tmp_path: Path) -> None:
    for number, (env, line, word) in enumerate(
        (
            ("TLS=yes\n", 1, "implicit"),
            ("TLS=implicit\nCERTFILE=mail.pem\n", 2, "absolute path"),
            ("TLS=implicit\nCERTFILE=/m.pem\nCIPHERS='A B'\n", 3, "cipher list"),
        )
    ):
        root = tmp_path / str(number)
        root.mkdir()
        model = load(root, env)
        assert model.services == ()
        (problem,) = model.problems
        assert problem.line == line and word in problem.message, problem


def test_unusable_certificate_files_are_one_line_at_the_setting(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "server")
    other = make_pair(tmp_path, "other")
    loose = make_pair(tmp_path, "loose")
    loose.key.chmod(0o644)  # a world-readable key is refused, whatever else is right
    mine = make_pair(tmp_path, "mine")
    os.chown(mine.key, 65534, 0)  # the program's user owns it
    cases = (
        ("missing", f"CERTFILE={tmp_path}/nosuch.pem\nKEYFILE={pair.key}\n", 3, "nosuch.pem"),
        ("mismatch", f"CERTFILE={pair.cert}\nKEYFILE={other.key}\n", 4, str(other.key)),
        ("world-readable", f"CERTFILE={loose.cert}\nKEYFILE={loose.key}\n", 4, str(loose.key)),
        # qmail-smtpd's account could read it: as qboot-tcpsrv would refuse it
        ("the program's", f"CERTFILE={mine.cert}\nKEYFILE={mine.key}\nUSER=65534\n", 4, "uid"),
    )
    for name, settings, line, word in cases:
        root = tmp_path / name
        root.mkdir()
        model = load(root, f"PORT=465\nTLS=implicit\n{settings}", accounts=True)
        assert [service.name for service in model.services] == ["x"]  # refused later
        problems = bootctrl.start_problems(model.services[0])
        assert len(problems) == 1, (name, problems)
        assert word in problems[0].message and "\n" not in problems[0].message, (name, problems)
        assert problems[0].line == line, (name, problems)
        assert problems[0] in model.problems  # qbootctl's load reports it too


def test_good_certificate_files_give_no_problem(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "server")
    model = load(
        tmp_path, f"PORT=465\nTLS=implicit\nCERTFILE={pair.cert}\nKEYFILE={pair.key}\n", True
    )
    assert bootctrl.start_problems(model.services[0]) == []


def test_ucspi_is_a_tls_mode_of_its_own(tmp_path: Path) -> None:
    model = load(tmp_path, "PORT=587\nTLS=ucspi\nCERTFILE=/etc/ssl/mail.pem\n")
    assert model.problems == ()
    argv = tcpsrv_argv(model.services[0], Paths())
    assert flags_after(argv[: argv.index("-")], "-S") == "ucspi"
