"""HTTP CONNECT proxy requests (SPEC 5.1, explicit mode) as a sans-io codec.

ConnectRequestParser is fed the bytes the agent sends until it returns a ConnectRequest
(the shell then decides, dials, and writes established() or refused(...)) or a Rejected
(the shell writes rejection(...) and closes). The head is bounded (16 KiB, 100 header
lines) and nothing the client sends makes the parser raise.

Identity: `Proxy-Authorization: Basic base64(user:pass)` names the agent and carries its
proxy credential as the password (curl sends `agent-a:` for `http://agent-a@proxy:port`);
the shell checks both (clrk_worker_dialer.identity). A request without it has username
and password None.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from http import HTTPStatus

from clrk.wire import DENY_REASON_HEADER
from clrk_worker_dialer._normalise import normalise_ip
from clrk_worker_dialer.socks5 import parse_host

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_PORT = re.compile(r"[0-9]{1,5}")
_AUTH_REALM = 'Basic realm="clrk"'


@dataclass(frozen=True)
class ConnectRequest:
    """host is a normalised IP (is_name False) or a lower-cased hostname (is_name True);
    leftover holds the bytes after the head (the start of the tunnel)."""

    host: str
    port: int
    is_name: bool
    username: str | None
    leftover: bytes = b""
    password: str | None = None


@dataclass(frozen=True)
class Incomplete:
    """The head has not ended yet; feed more."""


@dataclass(frozen=True)
class Rejected:
    """Not an acceptable CONNECT request; answer with rejection(this) and close."""

    status: int
    reason: str


INCOMPLETE = Incomplete()
ParseResult = ConnectRequest | Incomplete | Rejected


class ConnectRequestParser:
    """Parses one CONNECT request head. After a final result (ConnectRequest or Rejected)
    feed() returns that same result again and ignores its input: the bytes belong to the
    shell from then on."""

    def __init__(
        self, *, max_head_bytes: int = MAX_HEAD_BYTES, max_header_lines: int = MAX_HEADER_LINES
    ) -> None:
        self._max_head_bytes = max_head_bytes
        self._max_header_lines = max_header_lines
        self._buf = b""
        self._result: ConnectRequest | Rejected | None = None

    def feed(self, data: bytes) -> ParseResult:
        if self._result is not None:
            return self._result
        # Only a bounded window is searched; the terminator may straddle two feeds, so the
        # search restarts a few bytes back.
        start = max(0, len(self._buf) - 3)
        self._buf += bytes(data)
        end = _END_OF_HEAD.search(self._buf, start, self._max_head_bytes + 4)
        if end is None:
            if len(self._buf) > self._max_head_bytes:
                self._result = Rejected(431, "request head too large")
                self._buf = b""
                return self._result
            return INCOMPLETE
        head, leftover = self._buf[: end.start()], self._buf[end.end() :]
        self._buf = b""
        if end.start() > self._max_head_bytes:
            self._result = Rejected(431, "request head too large")
        else:
            self._result = _parse_head(head, leftover, self._max_header_lines)
        return self._result


def _split_lines(head: bytes) -> list[str]:
    # latin-1 maps every byte to one character, so nothing here can fail to decode;
    # whatever is not plain ASCII is then refused by the grammar checks.
    return [line.removesuffix("\r") for line in head.decode("latin-1").split("\n")]


def _parse_head(head: bytes, leftover: bytes, max_header_lines: int) -> ConnectRequest | Rejected:
    lines = _split_lines(head)
    request_line, headers = lines[0], lines[1:]
    if len(headers) > max_header_lines:
        return Rejected(431, "too many header lines")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        return Rejected(400, "malformed request line")
    method, target, _ = parts
    if method != "CONNECT":
        return Rejected(405, "only CONNECT is supported")
    authority = _parse_authority(target)
    if isinstance(authority, Rejected):
        return authority
    credentials = _credentials(headers)
    if isinstance(credentials, Rejected):
        return credentials
    host, port, is_name = authority
    username, password = credentials
    return ConnectRequest(host, port, is_name, username, leftover, password)


def _parse_authority(target: str) -> tuple[str, int, bool] | Rejected:
    """RFC 9110 9.3.6: CONNECT's target is host:port; an IPv6 literal is in brackets."""
    host_part, sep, port_text = target.rpartition(":")
    if not sep or not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 0xFFFF:
        return Rejected(400, "missing or invalid port")
    port = int(port_text)
    if host_part.startswith("[") and host_part.endswith("]"):
        literal = host_part[1:-1]
        if ":" not in literal or "%" in literal:
            return Rejected(400, "invalid IPv6 literal")
        try:
            return normalise_ip(literal), port, False
        except ValueError:
            return Rejected(400, "invalid IPv6 literal")
    if ":" in host_part:
        return Rejected(400, "invalid host")  # an unbracketed IPv6 literal is ambiguous
    host = parse_host(host_part)
    if host is None:
        return Rejected(400, "invalid host")
    return host[0], port, host[1]


def _credentials(headers: list[str]) -> tuple[str | None, str | None] | Rejected:
    values = []
    for line in headers:
        if line[:1] in (" ", "\t"):
            return Rejected(400, "obsolete header line folding")  # RFC 9112 5.2
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return Rejected(400, "malformed header line")
        if name.lower() == "proxy-authorization":
            values.append(value.strip(" \t"))
    if not values:
        return None, None
    if len(values) > 1:
        # Two identities in one request: which one would a log reader believe?
        return Rejected(400, "more than one Proxy-Authorization header")
    scheme, _, credentials = values[0].partition(" ")
    if scheme.lower() != "basic":
        return Rejected(407, "only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(credentials.strip(" "), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return Rejected(400, "malformed Basic credentials")
    user, sep, password = decoded.partition(":")
    if not sep:
        return Rejected(400, "malformed Basic credentials")
    # Usernames end up in records and logs: no empty or unprintable identities.
    if not user or not user.isprintable():
        return Rejected(407, "invalid proxy username")
    return user, password


def established() -> bytes:
    return b"HTTP/1.1 200 Connection established\r\n\r\n"


def _header_safe(text: str) -> str:
    """Text that cannot break out of a header line (no CR/LF/controls, ASCII only)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def refused(status: int, reason: str, deny_reason: str | None = None) -> bytes:
    """A complete error response that ends the connection. reason becomes the text body;
    deny_reason (e.g. "policy") the x-clrk-deny-reason header; 407 carries the
    Proxy-Authenticate challenge curl and other clients expect."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (_header_safe(reason) + "\n").encode("ascii")
    lines = [f"HTTP/1.1 {status} {phrase}"]
    if status == 407:
        lines.append(f"Proxy-Authenticate: {_AUTH_REALM}")
    if deny_reason is not None:
        lines.append(f"{DENY_REASON_HEADER}: {_header_safe(deny_reason)}")
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def rejection(rejected: Rejected) -> bytes:
    """The response to a request the parser rejected."""
    return refused(rejected.status, rejected.reason)
