"""The STARTTLS shim alone: transcripts in, what the server (chain) and the client get."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qboot_systemd.tcpsrv.tls.smtp import LINE_CAP, MUST_530, READY_220, SmtpShim

GREETING = b"220 mail.example.org ESMTP\r\n"
EHLO_REPLY = b"250-mail.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def greeted(require: bool = False) -> SmtpShim:
    shim = SmtpShim(require)
    assert bytes(shim.from_chain(GREETING).to_client) == GREETING
    return shim


def test_ehlo_answer_offers_starttls() -> None:
    shim = greeted()
    out = shim.from_client(b"EHLO client.example\r\n")
    assert bytes(out.to_chain) == b"EHLO client.example\r\n"
    assert bytes(shim.from_chain(EHLO_REPLY).to_client) == (
        b"250-mail.example.org\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    )
    # a one-line answer, and HELO's (no extensions there)
    shim.from_client(b"ehlo again\r\n")
    assert bytes(shim.from_chain(b"250 mail.example.org\r\n").to_client) == (
        b"250-mail.example.org\r\n250 STARTTLS\r\n"
    )
    shim.from_client(b"HELO x\r\n")
    assert bytes(shim.from_chain(b"250 mail.example.org\r\n").to_client) == (
        b"250 mail.example.org\r\n"
    )


def test_starttls_is_offered_once_and_in_a_well_formed_line() -> None:
    """A server that offers STARTTLS itself gets no second one; a last line that is only
    the code keeps its CRLF."""
    shim = greeted()

    def answer(reply: bytes) -> bytes:
        shim.from_client(b"EHLO c\r\n")
        return bytes(shim.from_chain(reply).to_client)

    already = b"250-mail.example.org\r\n250-starttls\r\n250 8BITMIME\r\n"
    assert answer(already) == already
    assert answer(b"250-x\r\n250 STARTTLS\r\n") == b"250-x\r\n250 STARTTLS\r\n"
    assert answer(b"250-x\r\n250\r\n") == b"250-x\r\n250-\r\n250 STARTTLS\r\n"


def test_starttls_answers_220_and_resets_the_server() -> None:
    shim = greeted()
    shim.from_client(b"EHLO c\r\n")
    shim.from_chain(EHLO_REPLY)
    out = shim.from_client(b"STARTTLS\r\n")
    assert out.start_tls and bytes(out.to_client) == READY_220
    assert bytes(out.to_chain) == b"RSET\r\n"  # the transaction begun in the clear is gone
    assert not shim.wants_input() or shim.tls
    # after the handshake: the RSET's answer is swallowed, EHLO is passed on untouched
    out = shim.from_client(b"EHLO c\r\n")
    assert bytes(out.to_chain) == b"EHLO c\r\n"
    assert bytes(shim.from_chain(b"250 flushed\r\n" + EHLO_REPLY).to_client) == EHLO_REPLY


def test_commands_pipelined_behind_starttls_are_thrown_away() -> None:
    """CVE-2011-0411's attack: plain text sent behind STARTTLS must not be obeyed."""
    shim = greeted()
    out = shim.from_client(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\nRCPT TO:<x@y>\r\n")
    assert out.start_tls and bytes(out.to_chain) == b"RSET\r\n"
    assert b"MAIL" not in bytes(out.to_chain)
    after = shim.from_client(b"NOOP\r\n")  # what comes later comes through TLS
    assert bytes(after.to_chain) == b"NOOP\r\n"


def test_starttls_waits_for_earlier_replies() -> None:
    shim = greeted()
    out = shim.from_client(b"NOOP\r\nSTARTTLS\r\n")
    assert bytes(out.to_chain) == b"NOOP\r\n" and not out.start_tls and not out.to_client
    out = shim.from_chain(b"250 ok\r\n")
    assert bytes(out.to_client) == b"250 ok\r\n" + READY_220 and out.start_tls


def test_starttls_with_a_parameter_is_a_syntax_error() -> None:
    shim = greeted()
    out = shim.from_client(b"STARTTLS now\r\n")
    assert not out.start_tls and out.to_client.startswith(b"501 ")
    assert not out.to_chain


def test_required_tls_refuses_mail_and_auth_in_the_clear() -> None:
    shim = greeted(require=True)
    out = shim.from_client(b"MAIL FROM:<a@b>\r\nAUTH PLAIN AGFAAGI=\r\nNOOP\r\n")
    assert bytes(out.to_client) == MUST_530 * 2
    assert bytes(out.to_chain) == b"NOOP\r\n"
    shim.from_chain(b"250 ok\r\n")
    out = shim.from_client(b"STARTTLS\r\n")
    assert out.start_tls
    shim.from_chain(b"250 flushed\r\n")
    out = shim.from_client(b"MAIL FROM:<a@b>\r\n")
    assert bytes(out.to_chain) == b"MAIL FROM:<a@b>\r\n" and not out.to_client


def test_530_comes_after_the_replies_already_owed() -> None:
    shim = greeted(require=True)
    out = shim.from_client(b"NOOP\r\nMAIL FROM:<a@b>\r\n")
    assert bytes(out.to_chain) == b"NOOP\r\n" and not out.to_client
    assert bytes(shim.from_chain(b"250 ok\r\n").to_client) == b"250 ok\r\n" + MUST_530


def test_a_message_saying_starttls_is_text_not_a_command() -> None:
    shim = greeted()
    shim.from_client(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    for reply in (b"250 ok\r\n", b"250 ok\r\n"):
        shim.from_chain(reply)
    body = b"Subject: x\r\n\r\nSTARTTLS\r\nMAIL FROM:<x@y>\r\n"
    early = shim.from_client(body)  # before 354: held, not read as commands
    assert not early.to_chain and not early.start_tls
    out = shim.from_chain(b"354 go ahead\r\n")
    assert bytes(out.to_chain) == body and not out.start_tls
    out = shim.from_client(b".\r\nSTARTTLS\r\n")
    assert bytes(out.to_chain) == b".\r\n" and not out.start_tls
    out = shim.from_chain(b"250 ok 123 qp 4\r\n")
    assert out.start_tls and out.to_client.endswith(READY_220)


def test_blanks_before_a_word_are_no_crash_and_no_way_around_530() -> None:
    """16 blanks or more before a word once left no word in the first bytes read for
    the verb: an IndexError that ended the whole server (every session)."""
    shim = greeted(require=True)
    out = shim.from_client(b" " * 16 + b"NOOP\r\n")
    assert bytes(out.to_chain) == b" " * 16 + b"NOOP\r\n"
    shim.from_chain(b"502 unimplemented\r\n")
    out = shim.from_client(b" " * 40 + b"MAIL FROM:<a@b>\r\n")
    assert bytes(out.to_client) == MUST_530 and not out.to_chain


def test_auth_answers_pass_unread() -> None:
    shim = greeted()
    out = shim.from_client(b"AUTH LOGIN\r\nSTARTTLS\r\n")
    assert bytes(out.to_chain) == b"AUTH LOGIN\r\n"
    out = shim.from_chain(b"334 VXNlcm5hbWU6\r\n")
    assert bytes(out.to_chain) == b"STARTTLS\r\n" and not out.start_tls  # an answer


def test_overlong_lines_pass_and_input_stays_bounded() -> None:
    shim = greeted()
    out = shim.from_client(b"NOOP " + b"x" * (LINE_CAP * 3))
    assert len(out.to_chain) == 5 + LINE_CAP * 3
    out = shim.from_client(b"y\r\nNOOP\r\n")
    assert bytes(out.to_chain) == b"y\r\nNOOP\r\n"
    assert shim.wants_input()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=40))
def test_any_client_bytes_keep_the_shim_bounded(data: bytes, cuts: list[int]) -> None:
    """Whatever the client sends, in whatever pieces: no exception, the input held stays
    under the cap, and nothing reaches the server after STARTTLS was taken in the clear."""
    shim = greeted(require=True)
    position = 0
    started = False
    for cut in [*cuts, len(data)]:
        piece = data[position : position + cut]
        position += cut
        if not piece:
            continue
        if not shim.wants_input():
            break
        out = shim.from_client(piece)
        if started:
            assert not out.to_chain or shim.tls
        started = started or out.start_tls
        if out.start_tls:
            assert bytes(out.to_chain) == b"RSET\r\n"
        shim.from_chain(b"250 ok\r\n")
        assert len(shim._input) <= LINE_CAP + 64
