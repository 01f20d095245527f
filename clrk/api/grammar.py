"""Pure validators for the scalar grammars of the API: hostnames, CIDRs, names, labels.

Each function returns the normalised value or raises ValueError with a message an
operator can act on (it names the form to write instead where there is one).
"""

from __future__ import annotations

import ipaddress
import math
import re

# fullmatch everywhere: `$` would also match before a trailing newline.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A last label of digits or 0x-hex makes inet_aton-style resolvers read an address
# ('127.1', '0x7f000001'); no real top-level domain looks like that.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


def is_ip_literal(text: str) -> bool:
    """'192.0.2.7' or '2001:db8::1' (no brackets), not a name."""
    # Most text is a name: four dotted numbers or a colon first, before ipaddress's
    # exceptions (a tenth of validating 10,000 routes).
    if ":" not in text and (text.count(".") != 3 or not text.replace(".", "").isdigit()):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _looks_like_ip(text: str) -> bool:
    return is_ip_literal(text[1:-1] if text.startswith("[") and text.endswith("]") else text)


def _punycode(name: str) -> str | None:
    try:
        labels = [
            label if label.isascii() else label.encode("idna").decode("ascii")
            for label in name.split(".")
        ]
    except UnicodeError:
        return None
    return ".".join(labels)


def normalise_hostname(raw: object) -> str:
    """Gateway API Hostname grammar, plus folding: 'API.Example.COM.' -> 'api.example.com'."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {type(raw).__name__}")
    name = raw.strip()
    if name != raw:
        raise ValueError(f"{raw!r} has surrounding whitespace")
    if not name.isascii():
        hint = _punycode(name.lower().rstrip("."))
        use = f'; use its punycode form "{hint}"' if hint else ""
        raise ValueError(f"{raw!r} is not ASCII{use}")
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("must not be empty")
    if _looks_like_ip(name):
        raise ValueError(f"{raw!r} is an IP literal; put addresses in destinationCIDRs")
    if len(name) > 253:
        raise ValueError(f"is {len(name)} characters long; at most 253 are allowed")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # '127.1' or '10.0.1' are IPv4 shorthand to inet_aton-based resolvers.
        raise ValueError(f"{raw!r} looks like an IP address; put addresses in destinationCIDRs")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if not labels or labels == [""]:
            raise ValueError(f"{raw!r}: a wildcard needs at least one label after '*.'")
    for label in labels:
        if label == "":
            raise ValueError(f"{raw!r} has an empty label")
        if "*" in label:
            raise ValueError(
                f"{raw!r}: '*' is only allowed as the whole first label ('*.example.com')"
            )
        if len(label) > 63:
            raise ValueError(f"{raw!r} has a label of {len(label)} characters; at most 63")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{raw!r}: label {label!r} must be lower-case letters, digits and '-',"
                " starting and ending with a letter or digit"
            )
    return name


def parse_cidr(raw: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A strict CIDR: prefix length required, no host bits, no IPv4-mapped IPv6 form."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string such as '10.0.0.0/8', not {type(raw).__name__}")
    text = raw.strip()
    if "/" not in text:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{raw!r} is not a CIDR such as '10.0.0.0/8'") from None
        raise ValueError(f"{raw!r} has no prefix length; write '{addr}/{addr.max_prefixlen}'")
    address, _, prefix = text.partition("/")
    if not (prefix.isascii() and prefix.isdigit()) or "%" in address:
        # ipaddress also takes netmasks ('/255.0.0.0') and scoped IPv6 ('%eth0'):
        # neither belongs in a policy, and a netmask typo would pass silently.
        raise ValueError(f"{raw!r} is not a CIDR such as '10.0.0.0/8' (prefix length in bits)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{raw!r} is not a valid IPv4 or IPv6 CIDR") from None
        raise ValueError(f"{raw!r} has host bits set; the network is '{loose}'") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED_V4):
        v4 = ipaddress.IPv4Network(
            (int(net.network_address) & 0xFFFFFFFF, max(net.prefixlen - 96, 0))
        )
        raise ValueError(f"{raw!r} is an IPv4-mapped IPv6 range; write the IPv4 form '{v4}'")
    return net


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_object_name(raw: object) -> str:
    """metadata.name: an RFC 1123 DNS subdomain (lower case, at most 253 characters)."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {type(raw).__name__}")
    if not raw or len(raw) > 253 or not _DNS_SUBDOMAIN.fullmatch(raw):
        raise ValueError(
            f"{raw!r} is not a DNS subdomain name (lower-case letters, digits, '-' and '.',"
            " at most 253 characters)"
        )
    return raw


def check_dns_label(raw: object) -> str:
    """metadata.namespace, listener names: an RFC 1123 DNS label (at most 63 characters)."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {type(raw).__name__}")
    if not raw or len(raw) > 63 or not _LABEL.fullmatch(raw):
        raise ValueError(
            f"{raw!r} is not a DNS label (lower-case letters, digits and '-', at most 63)"
        )
    return raw


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def check_label_key(raw: object) -> str:
    """Kubernetes label key: optional DNS-subdomain prefix and '/', then a name of <= 63."""
    if not isinstance(raw, str):
        raise ValueError(f"label key must be a string, not {type(raw).__name__}")
    prefix, slash, name = raw.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(f"label key {raw!r} has an invalid prefix {prefix!r}")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {raw!r} is invalid (letters, digits, '-', '_' and '.', at most 63)"
        )
    return raw


def check_label_value(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(
            f"label value must be a string, not {type(raw).__name__} (quote it: '{raw}')"
        )
    if raw and (len(raw) > 63 or not _LABEL_NAME.fullmatch(raw)):
        raise ValueError(
            f"label value {raw!r} is invalid (letters, digits, '-', '_' and '.', at most 63)"
        )
    return raw


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(raw: object) -> float:
    """Go-style duration ('5s', '1h', '1m30s', '250ms') or a number of seconds."""
    if isinstance(raw, bool):
        raise ValueError("must be a duration such as '5s'")
    if isinstance(raw, int | float):
        try:
            seconds = float(raw)
        except OverflowError:
            raise ValueError(f"{raw} seconds is too large") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("must be a finite, non-negative number of seconds")
        return seconds
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a duration such as '5s', '1m30s' or '1h'")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(raw):
        raise ValueError(f"{raw!r} is not a duration such as '5s', '1m30s' or '1h'")
    if not math.isfinite(total):
        raise ValueError(f"{raw!r} is too large")
    return total


def parse_host_port(raw: object, default_port: int) -> tuple[str, int]:
    """'192.0.2.53:53', '[2001:db8::53]:53' or a bare address -> (address, port)."""
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be an address such as '192.0.2.53:53'")
    host, port_text = raw, None
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{raw!r} is not '[IPv6]:port'")
        port_text = rest[1:] if rest else None
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{raw!r}: {host!r} is not an IP address (resolvers are IPs)") from None
    port = default_port
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{raw!r}: port must be 1..65535")
        port = int(port_text)
    return str(addr), port
