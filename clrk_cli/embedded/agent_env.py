"""What `clrk run` gives the command it runs, as pure functions: the agent reference, the
explicit-proxy variables (without root), the trust variables for the gateway CA, and
the sandbox naming/slots."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
PROXY_VARIABLES = ("ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY")
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSD
)
MAX_SLOTS = 1024
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_./]*=[-A-Za-z0-9_.]*$")


def agent_ref(value: str) -> str:
    """`NAME` or `NS/NAME` -> `NS/NAME` (namespace `default`); ValueError when malformed."""
    namespace, sep, name = value.rpartition("/")
    namespace = namespace if sep else "default"
    for part in (namespace, name):
        if not _NAME.match(part):
            raise ValueError(f"{value!r}: expected [NAMESPACE/]NAME (DNS labels)")
    return f"{namespace}/{name}"


def labels(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        if not _LABEL.match(value):
            raise ValueError(f"{value!r}: expected KEY=VALUE")
        key, _, val = value.partition("=")
        out[key] = val
    return out


def proxy_env(
    agent: str, token: str, socks5_port: int, http_port: int, host: str = "127.0.0.1"
) -> dict:
    """The explicit proxies with the agent as username and its proxy credential as the
    password (the dialer's identity for explicit mode).  socks5h: the proxy resolves
    names, so the dialer binds them.  The dialer's HTTP proxy speaks only CONNECT, so
    plain-HTTP clients get SOCKS5 too."""
    user = f"{quote(agent, safe='')}:{quote(token, safe='')}"
    socks = f"socks5h://{user}@{host}:{socks5_port}"
    env = {
        "ALL_PROXY": socks,
        "HTTPS_PROXY": f"http://{user}@{host}:{http_port}",
        "HTTP_PROXY": socks,
    }
    # Many tools read only the lower-case spellings.
    env.update({k.lower(): v for k, v in env.items()})
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def trust_env(bundle: str) -> dict:
    return dict.fromkeys(TRUST_VARIABLES, bundle)


def system_bundle(candidates: Sequence[str] = SYSTEM_BUNDLES) -> str | None:
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def bundle_text(system: str | None, gateway_ca: str) -> str:
    """System CAs (so that hosts Envoy does not terminate still verify) + the gateway CA."""
    parts = [system.rstrip() + "\n"] if system else []
    parts.append(gateway_ca.rstrip() + "\n")
    return "".join(parts)


def sandbox_name(pid: int, slot: int) -> str:
    """`clrk-r-p<pid>-<slot>`: short enough for the per-sandbox chain name, and in the
    form the e2e harness sweeps when the owning process is gone."""
    return f"clrk-r-p{pid}-{slot}"


def exit_code(returncode: int) -> int:
    """A child's return code as a shell would report it (signals as 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    return {**base, **extra}


def slot_path(directory: Path, slot: int) -> Path:
    return directory / f"slot-{slot}.lock"
