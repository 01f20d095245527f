"""`clrk inject -f pod-or-deployment.yaml`: put an agent's pod behind the gateway, the
way meshes inject their sidecars, and print the result.

Added to the pod (of a Pod, or the template of a Deployment, StatefulSet, DaemonSet, Job
or CronJob), before any init container of its own:

1. `clrk-intercept`, an init container, root with CAP_NET_ADMIN and CAP_NET_RAW and
   nothing else: installs the redirect rules in the pod's network namespace, exempting
   the gateway's user (10101), and exits;
2. `clrk-dialer`, a native sidecar (an init container with `restartPolicy: Always`,
   Kubernetes >= 1.29): the dialer, dropping to 10101 with CAP_NET_RAW alone; started
   before everything after it, stopped after the agent;
3. `clrk-envoy`, a native sidecar: the gateway's Envoy as 10101, no capabilities; its
   listeners are Unix sockets on a volume only the two sidecars mount.

Both sidecars reach the control plane over mutual TLS with the Secret of the gateway's
identity (cert-manager's tls.crt, tls.key, ca.crt).  The agent is `metadata.namespace`
plus the pod label `clrk.apoxy.dev/agent` (added from the workload's name when absent),
given to the dialer through the downward API; pod labels are identity only, never agent
labels (docs/kubernetes.md).  The agent's containers are made non-root (uid 1000 unless
one is set), without capabilities or privilege escalation, with a read-only root file
system unless they say otherwise.  The pod gets the sysctl
`net.ipv4.ip_unprivileged_port_start=0`: the dialer answers DNS from port 53 unprivileged.

Refused, because they would defeat the sandbox: hostNetwork, hostPID, hostIPC,
shareProcessNamespace, a privileged container, added capabilities, privilege
escalation, a container of uid 0 or of the gateway's uid, and a pod injected already.
"""

from __future__ import annotations

import copy
import sys

import click
import yaml

from clrk import __version__

GATEWAY_UID = 10101
AGENT_UID = 1000
AGENT_LABEL = "clrk.apoxy.dev/agent"
GATEWAY_ANNOTATION = "clrk.apoxy.dev/gateway"
DEFAULT_IMAGE = f"ghcr.io/apoxy-dev/clrk:{__version__}"
DEFAULT_CONTROL_PLANE = "clrk-control-plane.clrk-system.svc:18000"
NAMES = ("clrk-intercept", "clrk-dialer", "clrk-envoy")
VOLUMES = (
    "clrk-tls", "clrk-envoy", "clrk-intercept-run", "clrk-dialer-tmp", "clrk-envoy-tmp",
    "clrk-records",
)  # fmt: skip
SOCKET_DIR = "/run/clrk/envoy/sockets"  # the control plane's --envoy-socket-dir
TLS_DIR = "/etc/clrk/tls"
RECORDS = "/run/clrk/records/records.jsonl"
READY_FILE = "/tmp/dialer.ready"
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class InjectError(ValueError):
    """A manifest that cannot be injected safely, and why."""


def tls_secret(gateway: str) -> str:
    """The Secret holding the identity of `gateway`'s parts in the agent's namespace."""
    return f"clrk-{gateway.rpartition('/')[2]}-tls"


def _pod_spec(doc: dict) -> tuple[dict, dict]:
    """(the pod's metadata, its spec) inside `doc`, created where a template lacks them."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.setdefault("metadata", {}), doc.setdefault("spec", {})
    if kind == "CronJob":
        template = doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    elif kind in WORKLOADS:
        template = doc.get("spec", {}).get("template")
    else:
        raise InjectError(f"{kind or 'a document without kind'}: not a Pod or a workload")
    if not isinstance(template, dict):
        raise InjectError(f"{kind} {_name(doc)}: no pod template")
    return template.setdefault("metadata", {}), template.setdefault("spec", {})


def _name(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("name") or "<unnamed>"


def _refuse_what_defeats_the_sandbox(where: str, spec: dict) -> None:
    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(field):
            raise InjectError(f"{where}: spec.{field} would defeat the sandbox")
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser")
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    for c in containers:
        name = c.get("name", "?")
        if name in NAMES:
            raise InjectError(f"{where}: injected already (container {name})")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            raise InjectError(f"{where}: container {name} is privileged")
        if sc.get("allowPrivilegeEscalation"):
            raise InjectError(f"{where}: container {name} allows privilege escalation")
        if (sc.get("capabilities") or {}).get("add"):
            raise InjectError(f"{where}: container {name} adds capabilities")
        # A mount of a volume injection adds would hand the agent Envoy's sockets, the
        # gateway's key or its records once the volume exists.
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") in VOLUMES:
                raise InjectError(f"{where}: container {name} mounts clrk's {mount['name']}")
        uid = sc.get("runAsUser", pod_uid)
        if uid == 0:
            raise InjectError(f"{where}: container {name} runs as root")
        if uid == GATEWAY_UID:
            raise InjectError(
                f"{where}: container {name} runs as {GATEWAY_UID}, the gateway's user, whose "
                "traffic is not intercepted"
            )
    for volume in spec.get("volumes", []):
        if volume.get("name") in VOLUMES:
            raise InjectError(f"{where}: volume {volume['name']} is clrk's")


def _confine(container: dict, pod_uid: int | None) -> None:
    sc = container.setdefault("securityContext", {})
    if sc.get("runAsUser", pod_uid) is None:
        sc["runAsUser"] = AGENT_UID
        sc.setdefault("runAsGroup", AGENT_UID)
    sc["runAsNonRoot"] = True
    sc["allowPrivilegeEscalation"] = False
    sc["capabilities"] = {"drop": ["ALL"]}
    sc.setdefault("readOnlyRootFilesystem", True)
    sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})


def _env() -> list[dict]:
    return [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {
            "name": "CLRK_AGENT",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{AGENT_LABEL}']"}},
        },
    ]


def sidecars(gateway: str, image: str, control_plane: str) -> list[dict]:
    """The init container and the two native sidecars, in the order they start."""
    gateway_user = {
        "runAsNonRoot": True,
        "runAsUser": GATEWAY_UID,
        "runAsGroup": GATEWAY_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    user = f"--user={GATEWAY_UID}:{GATEWAY_UID}"
    intercept = {
        "name": "clrk-intercept",
        "image": image,
        "command": ["clrk", "sidecar", user, "--install-only"],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        # iptables' lock file (/run/xtables.lock) on a read-only root file system.
        "volumeMounts": [{"name": "clrk-intercept-run", "mountPath": "/run"}],
    }
    dialer = {
        "name": "clrk-dialer",
        "image": image,
        "restartPolicy": "Always",
        "command": ["clrk", "sidecar", user, "--no-install", "--"],
        "args": [
            f"--gateway={gateway}",
            "--default-agent=$(POD_NAMESPACE)/$(CLRK_AGENT)",
            f"--control-plane={control_plane}",
            f"--control-plane-tls-dir={TLS_DIR}",
            f"--next-hop-socket-dir={SOCKET_DIR}",
            f"--records={RECORDS}",
            f"--ready-file={READY_FILE}",
        ],
        "env": _env(),
        # Root only to drop to 10101 keeping CAP_NET_RAW (transparent UDP sockets).
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "SETUID", "SETGID"]},
        },
        "startupProbe": {
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        "volumeMounts": [
            {"name": "clrk-tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "clrk-envoy", "mountPath": "/run/clrk/envoy"},
            {"name": "clrk-records", "mountPath": "/run/clrk/records"},
            {"name": "clrk-dialer-tmp", "mountPath": "/tmp"},
        ],
    }
    envoy = {
        "name": "clrk-envoy",
        "image": image,
        "restartPolicy": "Always",
        "command": ["clrk", "envoy"],
        "args": [
            f"--gateway={gateway}",
            f"--control-plane={control_plane}",
            f"--tls-dir={TLS_DIR}",
            "--admin-socket=/tmp/envoy-admin.sock",
            "--work-dir=/tmp",
        ],
        "securityContext": gateway_user,
        "volumeMounts": [
            {"name": "clrk-tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "clrk-envoy", "mountPath": "/run/clrk/envoy"},
            {"name": "clrk-envoy-tmp", "mountPath": "/tmp"},
        ],
    }
    return [intercept, dialer, envoy]


def volumes(gateway: str) -> list[dict]:
    memory = {"emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    return [
        # Readable by the sidecars (10101) without fsGroup; only they mount it.
        {"name": "clrk-tls", "secret": {"secretName": tls_secret(gateway), "defaultMode": 0o444}},
        {"name": "clrk-envoy", **copy.deepcopy(memory)},
        {"name": "clrk-intercept-run", **copy.deepcopy(memory)},
        {"name": "clrk-dialer-tmp", **copy.deepcopy(memory)},
        {"name": "clrk-envoy-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "clrk-records", "emptyDir": {"sizeLimit": "64Mi"}},
    ]


def inject_document(
    doc: dict, gateway: str | None, image: str, control_plane: str, agent: str | None = None
) -> dict:
    """`doc` with the interception and the sidecars added (a new dict)."""
    doc = copy.deepcopy(doc)
    metadata, spec = _pod_spec(doc)
    where = f"{doc.get('kind')} {_name(doc)}"
    gateway = gateway or (metadata.get("annotations") or {}).get(GATEWAY_ANNOTATION)
    if not gateway:
        raise InjectError(f"{where}: give --gateway or the annotation {GATEWAY_ANNOTATION}")
    if "/" not in gateway:
        gateway = f"default/{gateway}"
    _refuse_what_defeats_the_sandbox(where, spec)
    labels = metadata.setdefault("labels", {})
    labels[AGENT_LABEL] = agent or labels.get(AGENT_LABEL) or _name(doc)
    metadata.setdefault("annotations", {})[GATEWAY_ANNOTATION] = gateway
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser")
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        _confine(container, pod_uid)
    spec["initContainers"] = [
        *sidecars(gateway, image, control_plane),
        *spec.get("initContainers", []),
    ]
    spec["volumes"] = [*spec.get("volumes", []), *volumes(gateway)]
    # The dialer answers the agent's DNS from the resolver's address and port (53) with
    # CAP_NET_RAW alone: binding a port below 1024 must need no privilege in this pod.
    # (Docker and containerd 2 set this already; a "safe" sysctl, Kubernetes >= 1.22.)
    sysctls = spec.setdefault("securityContext", {}).setdefault("sysctls", [])
    if not any(s.get("name") == UNPRIVILEGED_PORTS for s in sysctls):
        sysctls.append({"name": UNPRIVILEGED_PORTS, "value": "0"})
    return doc


@click.command()
@click.option("-f", "--filename", "path", required=True, type=click.File(), help="'-': stdin.")
@click.option("--gateway", help=f"NAMESPACE/NAME (default: the annotation {GATEWAY_ANNOTATION}).")
@click.option(
    "--agent",
    help=f"The agent's name (default: the label {AGENT_LABEL}, else the workload's name).",
)
@click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="The clrk image.")
@click.option("--control-plane", default=DEFAULT_CONTROL_PLANE, show_default=True)
def inject(path, gateway, agent, image, control_plane) -> None:
    """Add the gateway's interception and sidecars to the pods of a manifest; print it."""
    try:
        docs = [d for d in yaml.safe_load_all(path) if d is not None]
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path.name}: {exc}") from None
    out = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise click.ClickException(f"{path.name}: document {index + 1} is not a mapping")
        if doc.get("kind") not in {"Pod", "CronJob", *WORKLOADS}:
            out.append(doc)  # a Service, a ConfigMap...: passed through
            continue
        try:
            out.append(inject_document(doc, gateway, image, control_plane, agent))
        except InjectError as exc:
            raise click.ClickException(f"{path.name}, document {index + 1}: {exc}") from None
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
