"""`clrk inject`: the interception and sidecars added before anything of the pod's own,
the agent confined, and every manifest that would defeat the sandbox refused."""

from __future__ import annotations

import pytest
import yaml

from clrk_cli import main
from clrk_cli.inject import InjectError, inject_document

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "coder", "namespace": "team-a"},
    "spec": {
        "selector": {"matchLabels": {"app": "coder"}},
        "template": {
            "metadata": {"labels": {"app": "coder"}},
            "spec": {
                "initContainers": [{"name": "fetch", "image": "busybox"}],
                "containers": [{"name": "agent", "image": "agent:1"}],
            },
        },
    },
}


def _inject(doc, gateway="team-a/agents"):
    return inject_document(doc, gateway, "clrk:test", "cp.example:18000")


def test_a_deployment_gets_the_init_container_and_native_sidecars_before_its_own():
    out = _inject(DEPLOYMENT)
    pod = out["spec"]["template"]
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names == ["clrk-intercept", "clrk-dialer", "clrk-envoy", "fetch"]
    intercept, dialer, envoy = pod["spec"]["initContainers"][:3]
    assert "restartPolicy" not in intercept
    assert dialer["restartPolicy"] == envoy["restartPolicy"] == "Always"
    assert intercept["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert "NET_ADMIN" not in dialer["securityContext"]["capabilities"]["add"]
    assert envoy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "--gateway=team-a/agents" in dialer["args"]
    assert "--default-agent=$(POD_NAMESPACE)/$(CLRK_AGENT)" in dialer["args"]
    # Identity from the pod: the agent label, named after the workload when absent.
    assert pod["metadata"]["labels"]["clrk.apoxy.dev/agent"] == "coder"
    for container in (pod["spec"]["containers"][0], pod["spec"]["initContainers"][3]):
        sc = container["securityContext"]
        assert sc["runAsUser"] == 1000 and sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False
    sysctls = pod["spec"]["securityContext"]["sysctls"]
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in sysctls
    secret = next(v for v in pod["spec"]["volumes"] if v["name"] == "clrk-tls")
    assert secret["secret"]["secretName"] == "clrk-agents-tls"
    assert DEPLOYMENT["spec"]["template"]["spec"]["initContainers"] == [
        {"name": "fetch", "image": "busybox"}
    ]  # the input is left alone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hostNetwork": True}, "hostNetwork"),
        ({"hostPID": True}, "hostPID"),
        ({"shareProcessNamespace": True}, "shareProcessNamespace"),
        ({"securityContext": {"runAsUser": 0}}, "runs as root"),
        ({"securityContext": {"runAsUser": 10101}}, "gateway's user"),
        ({"containers": [{"name": "a", "securityContext": {"privileged": True}}]}, "privileged"),
        (
            {"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["X"]}}}]},
            "adds capabilities",
        ),
        (
            {"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": True}}]},
            "privilege escalation",
        ),
        ({"initContainers": [{"name": "clrk-dialer"}]}, "injected already"),
        ({"volumes": [{"name": "clrk-tls", "emptyDir": {}}]}, "clrk's"),
        (
            {"containers": [{"name": "a", "volumeMounts": [{"name": "clrk-envoy"}]}]},
            "mounts clrk's clrk-envoy",
        ),
    ],
)
def test_what_would_defeat_the_sandbox_is_refused(change, message):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a"}]} | change}  # fmt: skip
    with pytest.raises(InjectError, match=message):
        _inject(pod)


def test_the_gateway_comes_from_the_option_or_the_annotation():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a"}]}}  # fmt: skip
    with pytest.raises(InjectError, match="--gateway"):
        _inject(pod, gateway=None)
    pod["metadata"]["annotations"] = {"clrk.apoxy.dev/gateway": "agents"}
    assert "--gateway=default/agents" in _inject(pod, None)["spec"]["initContainers"][1]["args"]


def test_clrk_inject_prints_every_document_and_refuses_with_the_document_named(tmp_path, capsys):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump_all([service, DEPLOYMENT]))
    assert main(["inject", "-f", str(path), "--gateway", "team-a/agents"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed[0] == service and printed[1]["kind"] == "Deployment"
    bad = dict(DEPLOYMENT, spec={**DEPLOYMENT["spec"], "template": {"spec": {
        "hostNetwork": True, "containers": [{"name": "a"}]}}})  # fmt: skip
    path.write_text(yaml.safe_dump_all([service, bad]))
    assert main(["inject", "-f", str(path), "--gateway", "team-a/agents"]) == 1
    assert "document 2: Deployment coder: spec.hostNetwork" in capsys.readouterr().err


def test_clrk_envoy_refuses_a_local_control_plane_and_missing_certificate_files(tmp_path, capsys):
    base = ["envoy", "--gateway", "a/b", "--tls-dir", str(tmp_path)]
    assert main([*base, "--control-plane", "unix:/run/x.sock"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err
    assert main([*base, "--control-plane", "cp.example:18000"]) == 1
    assert "tls.crt is missing" in capsys.readouterr().err
