"""STARTTLS for an SMTP server that has none (qmail-smtpd), as a shim on the plain-text
streams: the server's EHLO answer gets `250-STARTTLS`, the STARTTLS command is answered
here, and then the session goes on encrypted (RFC 3207).

Pure: bytes in, bytes out. The shim keeps the order of replies: a reply of its own
(220 to STARTTLS, 530 when STARTTLS is required) waits until the server has answered
every command sent before it. It reads the client's commands only at line starts; a
message's text (after 354) and AUTH's answers (after 334) pass through unread.

After STARTTLS, what the client had sent behind the command in the clear is thrown
away (the command-injection attack of CVE-2011-0411), and the server is sent RSET,
whose answer is swallowed: it forgets any transaction begun in the clear. The EHLO name
the client gave before is replaced by the EHLO the client must send again.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

READY_220 = b"220 2.0.0 Ready to start TLS\r\n"
MUST_530 = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
SYNTAX_501 = b"501 5.5.4 Syntax error (no parameters allowed)\r\n"
ADVERTISED = b"STARTTLS"
LINE_CAP = 4096  # a command or reply line kept for reading; more passes through
MAX_OUTSTANDING = 64  # commands sent and not answered: then the client waits
_VERB_BYTES = 16


class Expect(Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    OTHER = "other"
    SWALLOW = "swallow"  # the RSET we sent ourselves


class ClientMode(Enum):
    COMMAND = "command"
    MESSAGE = "message"  # after 354, until the line with the single dot
    ANSWER = "answer"  # after 334: one line that is no command
    DISCARD = "discard"  # the rest of a refused command's line
    REST = "rest"  # the rest of an overlong line, passed on unread


class Outcome:
    """What one step produced: bytes for the server (chain) and the client, and whether
    the TLS handshake starts now (after to_client, the 220, went out in the clear)."""

    __slots__ = ("start_tls", "to_chain", "to_client")

    def __init__(self) -> None:
        self.to_chain = bytearray()
        self.to_client = bytearray()
        self.start_tls = False


class SmtpShim:
    def __init__(self, require_tls: bool) -> None:
        self.require_tls = require_tls
        self.tls = False  # STARTTLS taken (the handshake follows)
        self._input = bytearray()  # the client's bytes not looked at yet
        self._mode = ClientMode.COMMAND
        self._message_tail = b""
        self._expect: deque[Expect] = deque([Expect.GREETING])
        self._wait_for_replies = False  # read no command until every reply is in
        self._own_reply: bytes | None = None  # to send once the replies are in
        self._starting_tls = False
        self._rest_kind = Expect.OTHER
        self._rest_waits = False
        self._reply_line = bytearray()
        self._reply_overlong = False
        self._offered = False  # the server's EHLO answer names STARTTLS itself

    # --- the client's side -------------------------------------------------------------
    def wants_input(self) -> bool:
        """May the session read more from the client now? (The input stays bounded.)"""
        return not self._starting_tls and len(self._input) < LINE_CAP

    def from_client(self, data: bytes) -> Outcome:
        self._input += data
        return self._run()

    def _run(self) -> Outcome:
        out = Outcome()
        while True:
            if self._wait_for_replies or self._own_reply is not None or self._starting_tls:
                if self._expect:
                    return out
                self._wait_for_replies = False
                if self._starting_tls:
                    out.to_client += READY_220
                    self._input.clear()  # sent behind STARTTLS in the clear: never obeyed
                    out.to_chain += b"RSET\r\n"
                    self._expect.append(Expect.SWALLOW)
                    self._starting_tls = False
                    self.tls = True
                    out.start_tls = True
                    return out
                if self._own_reply is not None:
                    out.to_client += self._own_reply
                    self._own_reply = None
            if not self._input or len(self._expect) >= MAX_OUTSTANDING:
                return out
            if self._mode is ClientMode.MESSAGE:
                self._message(out)
            elif self._mode is ClientMode.DISCARD:
                end = self._input.find(b"\n")
                if end < 0:
                    self._input.clear()
                    return out
                del self._input[: end + 1]
                self._mode = ClientMode.COMMAND
            elif self._mode is ClientMode.REST:
                end = self._input.find(b"\n")
                cut = len(self._input) if end < 0 else end + 1
                out.to_chain += self._input[:cut]
                del self._input[:cut]
                if end >= 0:
                    self._expect.append(self._rest_kind)
                    self._mode = ClientMode.COMMAND
                    self._wait_for_replies = self._rest_waits
            elif not self._line(out):
                return out

    def _message(self, out: Outcome) -> None:
        """Pass the message on; its end (a line with one dot) is answered by the server."""
        window = self._message_tail + bytes(self._input)
        end = window.find(b"\r\n.\r\n")
        if end < 0:
            out.to_chain += self._input
            self._message_tail = window[-4:]
            self._input.clear()
            return
        cut = end + 5 - len(self._message_tail)
        out.to_chain += self._input[:cut]
        del self._input[:cut]
        self._mode = ClientMode.COMMAND
        self._expect.append(Expect.OTHER)

    def _line(self, out: Outcome) -> bool:
        """One command line (or AUTH answer); False when more input is needed."""
        end = self._input.find(b"\n")
        if end < 0 and len(self._input) < LINE_CAP:
            return False
        whole = end >= 0
        line = bytes(self._input[: end + 1]) if whole else bytes(self._input)
        if self._mode is ClientMode.ANSWER:
            self._mode = ClientMode.COMMAND
            self._forward(out, line, whole, Expect.OTHER, waits=True)  # another 334 may follow
            return True
        # Blanks first: qmail-smtpd sees no command there; past them is read all the same.
        words = line.lstrip()[:_VERB_BYTES].split(None, 1)
        verb = words[0].upper() if words else b""
        if verb == ADVERTISED and not self.tls:
            del self._input[: len(line)]
            if line.strip().upper() != ADVERTISED:
                self._own_reply = SYNTAX_501
                self._mode = ClientMode.COMMAND if whole else ClientMode.DISCARD
            else:
                self._starting_tls = True
            return True
        if self.require_tls and not self.tls and verb in (b"MAIL", b"AUTH"):
            del self._input[: len(line)]
            self._own_reply = MUST_530
            self._mode = ClientMode.COMMAND if whole else ClientMode.DISCARD
            return True
        kind = Expect.EHLO if verb == b"EHLO" and not self.tls else Expect.OTHER
        # After DATA or AUTH, the reply (354, 334) decides what the next bytes are.
        self._forward(out, line, whole, kind, waits=verb in (b"DATA", b"AUTH", b"BDAT"))
        return True

    def _forward(self, out: Outcome, line: bytes, whole: bool, kind: Expect, waits: bool) -> None:
        out.to_chain += line
        del self._input[: len(line)]
        if whole:
            self._expect.append(kind)
            self._wait_for_replies = waits
        else:  # an overlong line: the rest passes on as part of it
            self._mode = ClientMode.REST
            self._rest_kind, self._rest_waits = kind, waits

    # --- the server's side ----------------------------------------------------------------
    def from_chain(self, data: bytes) -> Outcome:
        """The server's replies, the EHLO answer with STARTTLS added; then whatever the
        client sent that was waiting for these replies."""
        out = Outcome()
        self._reply_line += data
        while True:
            end = self._reply_line.find(b"\n")
            if end < 0:
                if len(self._reply_line) > LINE_CAP:  # no SMTP reply: pass it on unread
                    out.to_client += self._reply_line
                    self._reply_line.clear()
                    self._reply_overlong = True
                break
            line = bytes(self._reply_line[: end + 1])
            del self._reply_line[: end + 1]
            if self._reply_overlong:
                self._reply_overlong = False
                out.to_client += line
                continue
            out.to_client += self._reply(line)
        after = self._run()
        out.to_chain += after.to_chain
        out.to_client += after.to_client
        out.start_tls = after.start_tls
        return out

    def _reply(self, line: bytes) -> bytes:
        final = line[3:4] != b"-"
        kind = self._expect[0] if self._expect else Expect.OTHER
        if kind is Expect.EHLO and line[4:].strip().upper() == ADVERTISED:
            self._offered = True
        if not final:
            return b"" if kind is Expect.SWALLOW else line
        if self._expect:
            self._expect.popleft()
        code = line[:3]
        if kind is Expect.SWALLOW:
            return b""
        if code == b"354":
            self._mode = ClientMode.MESSAGE
            self._message_tail = b"\r\n"
        elif code == b"334":
            self._mode = ClientMode.ANSWER
        if kind is Expect.EHLO:
            offered, self._offered = self._offered, False
            if code == b"250" and not self.tls and not offered:
                text = line[4:] if line[3:4] == b" " else line[3:]  # `250` alone keeps its CRLF
                return b"250-" + text + b"250 " + ADVERTISED + b"\r\n"
        return line
