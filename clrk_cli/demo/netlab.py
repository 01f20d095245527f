"""Pieces of the demo network shared with the end-to-end harness (tests/e2e/topology.py):
dnsmasq as an authoritative server for a zone, and a throwaway CA with one server
certificate (pure argv/PEM builders); the context manager protocol both networks
follow; and the sweeper of namespaces a killed run left behind.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self


def dnsmasq_args(
    zone: Mapping[str, Mapping[str, Any]], listen: str, log_file: str, local_ttl: int = 60
) -> list[str]:
    """dnsmasq as an authoritative-only server for `zone`, logging every query."""
    args = [
        "dnsmasq",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={listen}",
        "--port=53",
        "--user=root",
        "--group=root",
        "--pid-file=",
        "--log-queries",
        f"--log-facility={log_file}",
        f"--local-ttl={local_ttl}",
        "--cache-size=0",
        "--conf-file=/dev/null",
    ]
    for name, records in zone.items():
        ttl = records.get("ttl")
        suffix = f",{ttl}" if ttl is not None else ""
        if name.startswith("*."):
            for address in [*records.get("A", ()), *records.get("AAAA", ())]:
                args.append(f"--address=/{name[2:]}/{address}")
            continue
        if "CNAME" in records:
            args.append(f"--cname={name},{records['CNAME']}{suffix}")
            continue
        v4, v6 = list(records.get("A", ())), list(records.get("AAAA", ()))
        for i in range(max(len(v4), len(v6))):
            parts = [name, v4[i] if i < len(v4) else "", v6[i] if i < len(v6) else ""]
            args.append("--host-record=" + ",".join(p for p in parts if p) + suffix)
    return args


def make_certificates(directory: Path, names: Sequence[str], ips: Sequence[str]) -> dict[str, Path]:
    """A test CA and one server certificate for all names and IPs (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clrk test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def zone_names(zone: Mapping[str, Any]) -> list[str]:
    """Certificate names for a zone: every name, and a wildcard's base name too."""
    return [*zone, *(name[2:] for name in zone if name.startswith("*."))]


class BuiltOnEnter:
    """A network that `_build()`s on enter and `close()`s on exit; a build that fails
    midway is closed before the error goes on, so nothing it made is left behind.
    `close()` must be idempotent."""

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


NETNS_ETC = Path("/etc/netns")


def sweep_stale(pattern: re.Pattern[str], grace: float = 2.0) -> list[str]:
    """Remove the namespaces an earlier run left behind when it was killed.

    A name matching `pattern` carries its creator's PID (group 1); only namespaces whose
    creator is gone are touched.  The processes still running inside them were started
    by that run (a SIGKILLed parent leaves its children), so they are ended first: a
    deleted namespace would otherwise hide them, still running.
    """
    from clrk_cli.embedded.processes import end_processes_in_netns, pid_alive

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    stale = [
        name
        for line in listed.splitlines()
        if (name := (line.split() or [""])[0]) and (m := pattern.match(name))
        and not pid_alive(int(m.group(1)))
    ]  # fmt: skip
    for name in stale:
        end_processes_in_netns(name, grace)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if NETNS_ETC.is_dir():
        for path in NETNS_ETC.iterdir():
            m = pattern.match(path.name)
            if m and not pid_alive(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
    return stale
