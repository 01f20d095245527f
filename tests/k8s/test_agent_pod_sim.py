"""The injected agent pod, simulated as a network namespace (no cluster runs here).

deploy/agent-example/agent-injected.yaml is read, and its init container's and
sidecars' command, args and env are taken FROM THE MANIFEST ($(VAR)s and the downward
API resolved as the kubelet would, volume mount paths mapped to directories of the
test); each runs as a process inside one namespace standing for the pod, as the user and
with the capabilities its securityContext gives: the init container first (it must
exit 0), then the dialer sidecar (until its ready file, its startup probe), then the
Envoy sidecar, then the agent as uid 1000 without capabilities.  The control plane and
ext_proc run outside, in a namespace standing for the cluster, with their
Deployments' args (files instead of the API server), reached over mutual TLS by the
Service names, which a dnsmasq there answers.  Real curl as the agent.

What a real cluster may do differently is listed in docs/kubernetes.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.netns_helpers import python_for_anyone, scratch_netns
from tests.tls_dirs import TestCA

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RUN = os.getpid() % 100000
POD_IP, NODE_IP = "10.77.0.2", "10.77.0.1"  # the pod's address; the node (its gateway)
ALLOWED_IP, DENIED_IP = "10.77.1.10", "10.77.1.11"  # example.com; pastebin.com
SERVICES = ("clrk-control-plane.clrk-system.svc", "clrk-extproc.clrk-system.svc")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, iptables"),
    pytest.mark.skipif(
        not (shutil.which("dnsmasq") and shutil.which("curl") and shutil.which("setpriv")),
        reason="needs dnsmasq, curl and setpriv",
    ),
    pytest.mark.timeout(240),
]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _field(pod: dict, path: str) -> str:
    """A downward API fieldRef: metadata.namespace, metadata.labels['key'], ..."""
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return pod["metadata"].get(match[1], {}).get(match[2], "")
    return str(pod["metadata"][path.removeprefix("metadata.")])


def _expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) as the kubelet expands it in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def _remap(text: str, mounts: dict[str, Path]) -> str:
    """Mount paths in `text` replaced by the test's directories, in one pass."""
    if not mounts:
        return text
    paths = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({paths})(?=/|$)", lambda m: str(mounts[m[1]]), text)


class Pod:
    """A container's argv as the manifest says it, run in the pod's namespace."""

    def __init__(self, manifest: dict, volumes: dict[str, Path], netns: str, env: dict) -> None:
        self.manifest, self.volumes, self.netns, self.env = manifest, volumes, netns, env
        spec = manifest["spec"]
        self.containers = {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}

    def argv(self, name: str) -> list[str]:
        container = self.containers[name]
        env = {}
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("fieldRef")
            env[item["name"]] = _field(self.manifest, ref["fieldPath"]) if ref else item["value"]
        mounts = {
            m["mountPath"]: self.volumes[m["name"]] for m in container.get("volumeMounts", [])
        }
        words = [*container.get("command", []), *container.get("args", [])]
        words = [_remap(_expand(w, env), mounts) for w in words]
        if words[0] == "clrk":  # this checkout's clrk, on an interpreter any user may run
            words = [python_for_anyone(), "-m", "clrk_cli", *words[1:]]
        return [*self._confine(container["securityContext"]), *words]

    def _confine(self, sc: dict) -> list[str]:
        """ip netns exec, then the securityContext's user, capabilities and no_new_privs."""
        uid = sc.get("runAsUser", 0)
        caps = [c.lower() for c in sc.get("capabilities", {}).get("add", [])]
        keep = ",".join(["-all", *(f"+{c}" for c in caps)])
        out = ["ip", "netns", "exec", self.netns, "setpriv", f"--bounding-set={keep}"]
        if uid != 0:
            gid = sc.get("runAsGroup", uid)
            out += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
        if sc.get("allowPrivilegeEscalation") is False:
            out.append("--no-new-privs")
        return [*out, "--"]


@contextlib.contextmanager
def _processes(logs: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait(predicate, what: str, timeout: float = 60.0, logs: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    tail = ""
    if logs is not None:
        tail = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.glob("*.log"))
    raise AssertionError(f"not within {timeout}s: {what}\n{tail}")


@pytest.fixture
def cluster() -> Iterator[tuple[str, str, Path]]:
    """(pod namespace, node namespace, a work directory any user may enter): a veth
    between them, the node's upstreams on its loopback, resolv.conf of the pod naming
    the node's dnsmasq.  No forwarding anywhere."""
    work = Path(tempfile.mkdtemp(prefix="cps"))  # short: Envoy's socket paths live here
    work.chmod(0o755)
    pod_ns, node_ns = f"clrk-sim-pod-{RUN}", f"clrk-sim-node-{RUN}"
    etc = Path("/etc/netns") / pod_ns
    try:
        with scratch_netns(pod_ns), scratch_netns(node_ns):
            for argv in (
                ["-n", pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod",
                 "netns", node_ns],
                ["-n", pod_ns, "addr", "add", f"{POD_IP}/24", "dev", "eth0"],
                ["-n", pod_ns, "link", "set", "eth0", "up"],
                ["-n", pod_ns, "route", "add", "default", "via", NODE_IP],
                ["-n", node_ns, "addr", "add", f"{NODE_IP}/24", "dev", "veth-pod"],
                ["-n", node_ns, "link", "set", "veth-pod", "up"],
                ["-n", node_ns, "addr", "add", f"{ALLOWED_IP}/32", "dev", "lo"],
                ["-n", node_ns, "addr", "add", f"{DENIED_IP}/32", "dev", "lo"],
            ):  # fmt: skip
                subprocess.run(["ip", *argv], check=True)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
            yield pod_ns, node_ns, work
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _control_plane_argv(work: Path, server_tls: str, policy: Path, envoy: Path) -> list[str]:
    (deployment,) = [d for d in _docs(DEPLOY / "gateway" / "control-plane.yaml")
                     if d["kind"] == "Deployment"]  # fmt: skip
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {"/etc/clrk/tls": Path(server_tls), "/run/clrk": work / "cp-run", "/tmp": work}
    # --envoy-socket-dir is where the pods' Envoys bind, a path of theirs, not of the
    # control plane's: it maps to the pod's volume as the pod's own mount does.
    mounts["/run/clrk/envoy"] = envoy
    args = [_remap(a, mounts) for a in container["args"]]
    # Files instead of the API server: the one thing the simulation replaces.
    args = [f"--manifests={policy}" if a == "--provider=kubernetes" else a for a in args]
    return [sys.executable, *container["command"][1:], *args]


def _extproc_argv(work: Path) -> list[str]:
    (deployment,) = [d for d in _docs(DEPLOY / "gateway" / "extproc.yaml")
                     if d["kind"] == "Deployment"]  # fmt: skip
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [_remap(a, {"/var/log/clrk": work / "extproc"}) for a in container["args"]]
    return [sys.executable, *container["command"][1:], *args]


def _records(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            for logs in json.loads(line).get("resourceLogs", []):
                for scope in logs["scopeLogs"]:
                    for record in scope["logRecords"]:
                        attrs = {a["key"]: next(iter(a["value"].values()), None)
                                 for a in record.get("attributes", [])}  # fmt: skip
                        out.append({"name": record.get("eventName"), **attrs})
    return out


def test_the_injected_pod_enforces_the_policy_with_its_sidecars_from_the_manifest(cluster):
    pod_ns, node_ns, work = cluster
    ca = TestCA(work / "pki")
    server_tls = ca.server("control-plane", dns=SERVICES)
    (manifest,) = [d for d in _docs(DEPLOY / "agent-example" / "agent-injected.yaml")]
    manifest["metadata"]["namespace"] = "agents"  # kustomize's namespace
    gateway = manifest["metadata"]["annotations"]["clrk.apoxy.dev/gateway"]
    gateway_tls = ca.gateway("gateway", gateway)
    policy = work / "policy"
    policy.mkdir()
    shutil.copy(DEPLOY / "agent-example" / "policy.yaml", policy / "policy.yaml")
    volumes = {}
    for volume in manifest["spec"]["volumes"]:
        if "secret" in volume:
            volumes[volume["name"]] = Path(gateway_tls)
        else:  # an emptyDir: open to every container of the pod
            path = work / "v" / volume["name"]  # short: socket paths must fit
            path.mkdir(parents=True)
            path.chmod(0o777)
            volumes[volume["name"]] = path
    for sysctl in manifest["spec"]["securityContext"].get("sysctls", []):  # as the kubelet
        sysctl_argv = ["sysctl", "-qw", f"{sysctl['name']}={sysctl['value']}"]
        subprocess.run(["ip", "netns", "exec", pod_ns, *sysctl_argv], check=True)
    pod = Pod(manifest, volumes, pod_ns, {})
    envoy_dir = volumes["clrk-envoy"]
    logs = work / "logs"
    logs.mkdir()
    # Every user's interpreter finds clrk and its dependencies (root's venv is private).
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{site.getsitepackages()[0]}"}

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/")
        started.append(proc)
        return proc

    def in_node(argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", node_ns, *argv]

    def agent(*argv: str) -> subprocess.CompletedProcess:
        sc = pod.containers["agent"]["securityContext"]
        return subprocess.run([*pod._confine(sc), *argv], capture_output=True, text=True,
                              timeout=30, env=env, cwd="/")  # fmt: skip

    dns = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
           f"--listen-address={NODE_IP}", "--user=root", "--group=root", "--pid-file=",
           "--conf-file=/dev/null", f"--address=/example.com/{ALLOWED_IP}",
           f"--address=/pastebin.com/{DENIED_IP}",
           *(f"--address=/{name}/{NODE_IP}" for name in SERVICES)]  # fmt: skip
    upstream = [sys.executable, "-m", "http.server", "80", "--bind", ALLOWED_IP,
                "--directory", str(policy)]  # fmt: skip
    with _processes(logs) as started:
        start("dnsmasq", in_node(dns))
        start("upstream", in_node(upstream))
        start("extproc", in_node(_extproc_argv(work)))
        start("control-plane", in_node(_control_plane_argv(work, server_tls, policy, envoy_dir)))
        _wait(lambda: "server.listening" in (logs / "control-plane.log").read_text(),
              "the control plane listens", logs=logs)  # fmt: skip

        # Started before the init container, the dialer refuses: no interception yet.
        early = subprocess.run(pod.argv("clrk-dialer"), capture_output=True, text=True,
                               timeout=60, env=env, cwd="/")  # fmt: skip
        assert early.returncode != 0 and "not installed" in early.stderr, early.stderr
        # The init container, as the manifest says: it exits, the rules stay.
        init = subprocess.run(pod.argv("clrk-intercept"), capture_output=True, text=True,
                              timeout=60, env=env, cwd="/")  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        # The native sidecars, in order; the dialer's startup probe is its ready file.
        dialer = start("clrk-dialer", pod.argv("clrk-dialer"))
        ready = volumes["clrk-dialer-tmp"] / "dialer.ready"
        _wait(lambda: ready.exists() or dialer.poll() is not None, "the dialer", logs=logs)
        assert dialer.poll() is None, (logs / "clrk-dialer.log").read_text()
        envoy = start("clrk-envoy", pod.argv("clrk-envoy"))
        sockets = volumes["clrk-envoy"] / "sockets"
        _wait(lambda: len(list(sockets.glob("*.sock"))) == 2 or envoy.poll() is not None,
              "Envoy's listeners (over ADS with the gateway's certificate)", logs=logs)  # fmt: skip
        assert envoy.poll() is None, (logs / "clrk-envoy.log").read_text()

        # Allowed: example.com, through the dialer and Envoy to the upstream.
        def fetched() -> bool:
            out = agent("curl", "-sS", "--max-time", "5", "http://example.com/policy.yaml")
            return out.returncode == 0 and "EgressGateway" in out.stdout

        _wait(fetched, "the agent reaches example.com", logs=logs)
        # Denied: another name, an address of its own, the node, the control plane.
        for url in (
            "http://pastebin.com/",
            f"http://{DENIED_IP}/",
            f"http://{NODE_IP}:18000/",
            "http://clrk-control-plane.clrk-system.svc:18000/",
        ):
            out = agent("curl", "-sS", "--max-time", "5", url)
            assert out.returncode != 0, (url, out.stdout)
            assert out.returncode != 28, f"{url}: a timeout, not a refusal"  # fmt: skip
        records = volumes["clrk-records"] / "records.jsonl"
        denied = _wait(lambda: [r for r in _records(records) if r["name"] == "egress.dial.denied"
                                and r.get("clrk.dst.name") == "pastebin.com"],
                       "the dialer records the denial", logs=logs)  # fmt: skip
        # The pod's downward API names the agent: its namespace and its agent label.
        agent_of = (denied[0].get("agent.namespace"), denied[0].get("agent.name"))
        assert agent_of == ("agents", "example-agent"), denied[0]
        # The sidecars' own traffic is not sent back into the dialer: none of the denials
        # is of theirs (the control plane's address was only ever asked for by the agent).
        assert not [r for r in _records(records) if r["name"] == "egress.dial.denied"
                    and r.get("network.peer.address") == ALLOWED_IP]  # fmt: skip
        # The agent cannot undo the interception.
        before = subprocess.run(["ip", "netns", "exec", pod_ns, "iptables-save"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        for argv in (("iptables", "-w", "-t", "nat", "-F"), ("ip", "rule", "flush")):
            assert agent(*argv).returncode != 0
        after = subprocess.run(["ip", "netns", "exec", pod_ns, "iptables-save"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert re.sub(r"\[\d+:\d+\]", "", after) == re.sub(r"\[\d+:\d+\]", "", before)
        # And it cannot reach Envoy behind the dialer's back: no port of Envoy's listens.
        listening = subprocess.run(["ip", "netns", "exec", pod_ns, "ss", "-Htlnp"],
                                   capture_output=True, text=True).stdout  # fmt: skip
        assert "envoy" not in listening, listening
