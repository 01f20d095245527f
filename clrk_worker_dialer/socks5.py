"""SOCKS5 server side (RFC 1928, RFC 1929 username/password) as a sans-io codec (SPEC 5.1).

Socks5Handshake is fed the bytes the agent sends and answers with events; the asyncio
shell writes every Send, then acts on the terminal event: a Request (dial, then write
reply(...)) or a Fail (close; any bytes the client should see came as a Send before it).
It never raises on client input, and every message is bounded by its own length fields.

Identity: the username of the RFC 1929 sub-negotiation names the agent and the password
carries its proxy credential (the shell checks both: clrk_worker_dialer.identity). The
constructor's `check_user(username) -> bool` is asked during the sub-negotiation, so an
unknown agent is refused there (status 0x01) before it may send a request; without it
every well-formed username is accepted and the shell can refuse later with
reply(Reply.NOT_ALLOWED).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from clrk_worker_dialer._normalise import evidence_name, normalise_ip

VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version
METHOD_NO_AUTH = 0x00
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
_AUTH_OK = bytes([AUTH_VERSION, 0x00])
_AUTH_FAILED = bytes([AUTH_VERSION, 0x01])


class Reply(IntEnum):
    """RFC 1928 6: the REP field of a reply."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


@dataclass(frozen=True)
class Send:
    """Bytes to write back to the client, in order."""

    data: bytes


@dataclass(frozen=True)
class Request:
    """A complete CONNECT or UDP ASSOCIATE request; the handshake is over.

    host is a normalised IP (is_name False) or a lower-cased hostname (is_name True); a
    domain-typed address that is an IP literal counts as an IP. For UDP ASSOCIATE host and
    port are what the client says it will send from (often 0.0.0.0:0). leftover holds the
    bytes that followed the request in the same feed (pipelining clients): they belong to
    the tunnel. username and password are None when the client chose no authentication.
    """

    command: Command
    host: str
    port: int
    is_name: bool
    username: str | None
    leftover: bytes = b""
    password: str | None = None


@dataclass(frozen=True)
class Fail:
    """The handshake failed; close the connection after writing any preceding Send.

    reply_code is the RFC 1928 code that best names the failure (also when the failure
    happened before a request, where no reply is sent); reason is a short stable token.
    """

    reply_code: Reply
    reason: str


Event = Send | Request | Fail


class _Phase(Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


def _fail(code: Reply, reason: str, reply_bytes: bytes | None = None) -> list[Event]:
    return ([Send(reply_bytes)] if reply_bytes is not None else []) + [Fail(code, reason)]


def _refuse(code: Reply, reason: str) -> list[Event]:
    """A failure in the request phase: the client gets a reply carrying the code."""
    return _fail(code, reason, reply(code))


def _ip_literal(text: str) -> str | None:
    """The normal form of an IP literal, or None (scope ids are not literals we dial)."""
    if "%" in text:
        return None
    try:
        return normalise_ip(text)
    except ValueError:
        return None


def _looks_numeric(name: str) -> bool:
    """Whether a resolver might read the name as an address: inet_aton forms such as
    '127.1' or '0x7f000001', or an all-digit last label (never a real TLD, RFC 3696 2)."""
    try:
        socket.inet_aton(name)
        return True
    except OSError:
        return name.rsplit(".", 1)[-1].isdigit()


def parse_host(text: str) -> tuple[str, bool] | None:
    """(host, is_name) of an address given as text: a normalised IP literal (is_name
    False) or a plain lower-cased hostname (is_name True); None for anything else,
    including names a resolver could mistake for an address."""
    ip = _ip_literal(text)
    if ip is not None:
        return ip, False
    name = evidence_name(text)
    if name is None or _looks_numeric(name):
        return None
    return name, True


class Socks5Handshake:
    """The server side of one SOCKS5 handshake. See the module docstring for the contract.

    allow_no_auth: accept clients that offer only method 0x00 (identity then comes from
    the configured default agent). Username/password is always preferred when offered.
    check_user: asked once with the username; False (or an exception) refuses it.
    After a Request or a Fail, feed() returns [] and ignores its input.
    """

    def __init__(
        self,
        *,
        allow_no_auth: bool = False,
        check_user: Callable[[str], bool] | None = None,
    ) -> None:
        self._allow_no_auth = allow_no_auth
        self._check_user = check_user
        self._phase = _Phase.GREETING
        self._buf = b""
        self.username: str | None = None
        self.password: str | None = None

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    def feed(self, data: bytes) -> list[Event]:
        if self._phase is _Phase.DONE:
            return []
        self._buf += bytes(data)
        events: list[Event] = []
        while self._phase is not _Phase.DONE:
            step = self._step()
            if step is None:
                break
            events.extend(step)
        if self._phase is _Phase.DONE:
            self._buf = b""
        return events

    def _step(self) -> list[Event] | None:
        """Events of the next complete message, or None when more bytes are needed."""
        if self._phase is _Phase.GREETING:
            return self._greeting()
        if self._phase is _Phase.AUTH:
            return self._auth()
        return self._request()

    def _finish(self, events: list[Event]) -> list[Event]:
        self._phase = _Phase.DONE
        return events

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]

    def _greeting(self) -> list[Event] | None:
        buf = self._buf
        if buf and buf[0] != VERSION:
            # Not SOCKS5 (SOCKS4, HTTP, TLS...): no reply it would understand.
            return self._finish(_fail(Reply.GENERAL_FAILURE, "not_socks5"))
        if len(buf) < 2:
            return None
        nmethods = buf[1]
        if nmethods == 0:
            none = bytes([VERSION, METHOD_NONE_ACCEPTABLE])
            return self._finish(_fail(Reply.NOT_ALLOWED, "no_methods", none))
        if len(buf) < 2 + nmethods:
            return None
        methods = buf[2 : 2 + nmethods]
        self._consume(2 + nmethods)
        if METHOD_USERNAME_PASSWORD in methods:
            self._phase = _Phase.AUTH
            return [Send(bytes([VERSION, METHOD_USERNAME_PASSWORD]))]
        if METHOD_NO_AUTH in methods and self._allow_no_auth:
            self._phase = _Phase.REQUEST
            return [Send(bytes([VERSION, METHOD_NO_AUTH]))]
        none = bytes([VERSION, METHOD_NONE_ACCEPTABLE])
        return self._finish(_fail(Reply.NOT_ALLOWED, "no_acceptable_method", none))

    def _auth(self) -> list[Event] | None:
        buf = self._buf
        if buf and buf[0] != AUTH_VERSION:
            return self._finish(_fail(Reply.NOT_ALLOWED, "bad_auth_version", _AUTH_FAILED))
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        if len(buf) < 3 + ulen + plen:
            return None
        raw_user, raw_password = buf[2 : 2 + ulen], buf[3 + ulen : 3 + ulen + plen]
        self._consume(3 + ulen + plen)
        try:
            username = raw_user.decode("utf-8")
        except UnicodeDecodeError:
            username = ""
        try:
            password: str | None = raw_password.decode("utf-8")
        except UnicodeDecodeError:
            password = None  # matches no token

        # Usernames end up in records and logs: no empty or unprintable identities.
        if not username or not username.isprintable():
            return self._finish(_fail(Reply.NOT_ALLOWED, "bad_username", _AUTH_FAILED))
        if self._check_user is not None:
            try:
                known = bool(self._check_user(username))
            except Exception:
                known = False  # fail closed on a broken lookup
            if not known:
                return self._finish(_fail(Reply.NOT_ALLOWED, "unknown_user", _AUTH_FAILED))
        self.username, self.password = username, password
        self._phase = _Phase.REQUEST
        return [Send(_AUTH_OK)]

    def _request(self) -> list[Event] | None:
        buf = self._buf
        if buf and buf[0] != VERSION:
            return self._finish(_refuse(Reply.GENERAL_FAILURE, "bad_version"))
        if len(buf) < 4:
            return None
        cmd, rsv = buf[1], buf[2]
        if rsv != 0:
            return self._finish(_refuse(Reply.GENERAL_FAILURE, "bad_reserved_byte"))
        if cmd not in (Command.CONNECT, Command.UDP_ASSOCIATE):
            reason = "bind_not_supported" if cmd == Command.BIND else "unknown_command"
            return self._finish(_refuse(Reply.COMMAND_NOT_SUPPORTED, reason))
        parsed = _parse_address(buf, 3)
        if parsed is None:
            return None
        if isinstance(parsed, Fail):
            return self._finish(_refuse(parsed.reply_code, parsed.reason))
        host, port, is_name, end = parsed
        if port == 0 and cmd == Command.CONNECT:
            return self._finish(_refuse(Reply.GENERAL_FAILURE, "bad_port"))
        leftover = buf[end:]
        request = Request(Command(cmd), host, port, is_name, self.username, leftover, self.password)
        return self._finish([request])


def _parse_address(buf: bytes, pos: int) -> tuple[str, int, bool, int] | Fail | None:
    """ATYP, DST.ADDR, DST.PORT starting at pos: (host, port, is_name, end offset), a Fail,
    or None when buf ends before the address does."""
    if len(buf) <= pos:
        return None
    atyp = buf[pos]
    start = pos + 1
    if atyp == ATYP_IPV4:
        end = start + 4
        if len(buf) < end + 2:
            return None
        host, is_name = str(ipaddress.IPv4Address(buf[start:end])), False
    elif atyp == ATYP_IPV6:
        end = start + 16
        if len(buf) < end + 2:
            return None
        host, is_name = normalise_ip(str(ipaddress.IPv6Address(buf[start:end]))), False
    elif atyp == ATYP_DOMAIN:
        if len(buf) <= start:
            return None
        length = buf[start]
        if length == 0:
            return Fail(Reply.GENERAL_FAILURE, "bad_hostname")
        end = start + 1 + length
        if len(buf) < end + 2:
            return None
        raw = buf[start + 1 : end]
        domain = parse_host(raw.decode("ascii")) if raw.isascii() else None
        if domain is None:
            return Fail(Reply.GENERAL_FAILURE, "bad_hostname")
        host, is_name = domain
    else:
        return Fail(Reply.ADDRESS_TYPE_NOT_SUPPORTED, "bad_address_type")
    port = int.from_bytes(buf[end : end + 2], "big")
    return host, port, is_name, end + 2


def _encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port; a hostname becomes a domain-typed address."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    ip = _ip_literal(host)
    if ip is not None:
        addr = ipaddress.ip_address(ip)
        atyp = ATYP_IPV4 if addr.version == 4 else ATYP_IPV6
        return bytes([atyp]) + addr.packed + port.to_bytes(2, "big")
    raw = host.encode("ascii")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"hostname length out of range: {host!r}")
    return bytes([ATYP_DOMAIN, len(raw)]) + raw + port.to_bytes(2, "big")


def reply(code: int, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
    """An RFC 1928 reply. bind_host must be an IPv4 or IPv6 address (ValueError otherwise);
    for UDP ASSOCIATE it is the address of the relay socket the client must send to."""
    if _ip_literal(bind_host) is None:
        raise ValueError(f"bind address is not an IP address: {bind_host!r}")
    return bytes([VERSION, Reply(code), 0x00]) + _encode_address(bind_host, bind_port)


def decode_udp(datagram: bytes) -> tuple[str, int, bool, bytes] | None:
    """(host, port, is_name, payload) of a UDP ASSOCIATE datagram; None when malformed,
    fragmented (FRAG != 0: fragmentation is not supported, RFC 1928 7 lets us drop it)
    or addressed to port 0. Never raises."""
    if len(datagram) < 4 or datagram[2] != 0:
        return None
    parsed = _parse_address(bytes(datagram), 3)
    if parsed is None or isinstance(parsed, Fail):
        return None
    host, port, is_name, end = parsed
    if port == 0:
        return None
    return host, port, is_name, bytes(datagram[end:])


def encode_udp(host: str, port: int, payload: bytes) -> bytes:
    """The header the relay puts in front of a datagram it returns to the client
    (host is the source of the reply: an IP, or a hostname for a domain-typed address)."""
    return b"\x00\x00\x00" + _encode_address(host, port) + bytes(payload)
