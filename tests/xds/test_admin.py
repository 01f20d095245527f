"""The admin API over a real gRPC socket, against the real file provider, loader,
compiler and translator (tests/cli/admin_harness.py), with the CLI's blocking client."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from clrk.policy import Agent, Decision, Reason
from clrk.policy.check import CheckInputError, CheckQuery
from clrk.records.schema import dial_denied, tcp_allowed
from clrk_cli import admin_client, main
from clrk_cli.admin_client import AdminError, pb2
from clrk_runtime.records_writer import RecordWriter
from tests.cli.admin_harness import GATEWAY, route, running_plane

BAD = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - destinationHostnames: ["ex*ample.com"]
      destinationCIDRs: [10.1.2.0/16]
      ports: [{port: 443}]
"""


def manifest(path, text):
    path.write_text(text)
    return pb2.Manifest(name=str(path), text=text)


def decide(client, host, ip="192.0.2.10"):
    decision, _ = client.check(CheckQuery("coder", ip, 443, hostnames=(host,)))
    return decision["reason"]


def applied_files(plane):
    return {p.name: p.read_text() for p in plane.applied.iterdir()}


def test_apply_takes_effect_without_a_restart_and_replaces_by_identity(tmp_path):
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        v0 = plane.version()
        assert decide(c, "api.example.com") == "policy"  # deny-all, no route yet
        r = c.apply([manifest(tmp_path / "route.yaml", route("api.example.com"))])
        assert (r.applied, r.valid, list(r.changes)) == (
            True,
            True,
            ["EgressL4Route/default/api created"],
        )
        assert r.version == plane.version() != v0  # in force when Apply returns
        assert decide(c, "api.example.com") == "allowed"

        # The same name again replaces the route: the old host is no longer allowed.
        r = c.apply([manifest(tmp_path / "other-name.yaml", route("new.example.com"))])
        assert list(r.changes) == ["EgressL4Route/default/api configured"]
        assert decide(c, "api.example.com") == "policy"
        assert decide(c, "new.example.com") == "allowed"
        assert sorted(applied_files(plane)) == ["EgressL4Route.default.api.yaml", "_applied.yaml"]

        # Unchanged: nothing written, same version.
        before = plane.version()
        r = c.apply([manifest(tmp_path / "again.yaml", route("new.example.com"))])
        assert list(r.changes) == ["EgressL4Route/default/api unchanged"]
        assert r.applied and r.version == before == plane.version()


def test_an_edit_of_the_applied_directory_is_hot_reloaded(tmp_path):
    """Apply writes files; the provider's watcher (not Apply) is what makes them live."""
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        v0 = plane.version()
        (plane.applied / "by-hand.yaml").write_text(route("hand.example.com"))
        deadline = time.monotonic() + 10
        while plane.version() == v0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert decide(c, "hand.example.com") == "allowed"


def test_invalid_manifests_are_refused_with_the_errors_validate_prints(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", "-f", str(bad)]) == 1
    validate_lines = capsys.readouterr().out.strip().splitlines()
    assert len(validate_lines) == 2
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        v0, files = plane.version(), applied_files(plane)
        r = c.apply([manifest(bad, BAD)])
        assert (r.applied, r.valid) == (False, False)
        assert [f.line for f in r.findings] == validate_lines
        assert {f.file for f in r.findings} == {str(bad)}
        # Dry run says the same; neither changed anything.
        d = c.apply([manifest(bad, BAD)], dry_run=True)
        assert [f.line for f in d.findings] == validate_lines and not d.applied
        assert plane.version() == v0 and r.version == v0
        assert applied_files(plane) == files
        assert decide(c, "api.example.com") == "policy"


def test_a_dangling_reference_in_a_submission_is_refused(tmp_path):
    orphan = route("x.example.com").replace("name: gw}", "name: nope}")
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        files = applied_files(plane)
        r = c.apply([manifest(tmp_path / "orphan.yaml", orphan)])
        assert not r.applied
        assert any("EgressGateway default/nope does not exist" in f.line for f in r.findings)
        assert applied_files(plane) == files


def test_an_operator_resource_cannot_be_redefined_through_the_api(tmp_path):
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        r = c.apply([manifest(tmp_path / "gw.yaml", GATEWAY)])
        assert not r.applied
        assert any("is already defined by EgressGateway" in f.line for f in r.findings)


def test_dry_run_validates_and_stores_nothing(tmp_path):
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        files = applied_files(plane)
        r = c.apply([manifest(tmp_path / "r.yaml", route("api.example.com"))], dry_run=True)
        assert (r.valid, r.applied) == (True, False)
        assert applied_files(plane) == files


def test_list_shows_conditions_and_last_errors(tmp_path):
    dangling = GATEWAY + "---\n" + route("x.example.com").replace("name: gw}", "name: nope}")
    broken = tmp_path / "cp" / "ops" / "zz-broken.yaml"
    with (
        running_plane(tmp_path / "cp", operator=dangling) as plane,
        admin_client.connect(plane.address) as c,
    ):
        listed = c.list("")
        by_name = {(s.kind, s.name): s for s in listed.resources}
        assert set(by_name) == {
            ("EgressGateway", "gw"),
            ("EgressL4Route", "api"),
            ("TaskAgent", "coder"),
        }
        conds = {
            (s.name, c.type): (c.status, c.reason) for s in listed.resources for c in s.conditions
        }
        assert conds[("gw", "Accepted")] == ("True", "Accepted")
        assert conds[("gw", "Programmed")] == ("True", "Programmed")
        assert conds[("api", "Accepted")] == ("False", "NoMatchingParent")
        assert conds[("api", "Programmed")] == ("False", "NotAccepted")
        assert "default/nope does not exist" in by_name[("EgressL4Route", "api")].last_errors[0]
        assert listed.version == plane.version() and not listed.blocked

        assert [s.kind for s in c.list("gateways").resources] == ["EgressGateway"]
        with pytest.raises(AdminError, match="unknown kind"):
            c.list("bananas")

        # A broken operator file: the set is blocked, the document listed as invalid.
        v0 = plane.version()
        broken.write_text(BAD.replace("name: api", "name: other"))
        deadline = time.monotonic() + 10
        while not c.list("").blocked and time.monotonic() < deadline:
            time.sleep(0.02)
        listed = c.list("routes")
        assert listed.blocked and listed.version == v0
        other = next(s for s in listed.resources if s.name == "other")
        assert [(x.type, x.status, x.reason) for x in other.conditions] == [
            ("Accepted", "False", "Invalid"),
            ("Programmed", "False", "NotAccepted"),
        ]
        assert len(other.last_errors) == 2
        gw = c.list("gateways").resources[0]
        assert [(x.status, x.reason) for x in gw.conditions] == [
            ("True", "Accepted"),
            ("False", "Invalid"),
        ]


API = ("--hostname", "api.example.com")
QUERIES = [
    ("--agent", "coder", "--dst-ip", "192.0.2.10", "--port", "443", *API),
    ("--agent", "coder", "--dst-ip", "192.0.2.10", "--port", "444", *API),
    ("--agent", "stranger", "--dst-ip", "192.0.2.10", "--port", "443"),
    ("--agent", "coder", "--dst-ip", "169.254.169.254", "--port", "80", "--protocol", "UDP"),
    ("--agent", "coder", "--agent-label", "team=b", "--dst-ip", "::1", "--port", "443",
     "--sni", "api.example.com"),
]  # fmt: skip


@pytest.mark.parametrize("args", QUERIES)
def test_check_answers_what_clrk_check_answers(tmp_path, capsys, args):
    with running_plane(tmp_path / "cp") as plane:
        with admin_client.connect(plane.address) as c:
            assert c.apply([manifest(tmp_path / "r.yaml", route("api.example.com"))]).applied
        files = ["-f", str(plane.ops), "-f", str(plane.applied)]
        assert main(["check", *files, *args, "-o", "json"]) == 0
        local = capsys.readouterr().out
        assert main(["check", "--server", plane.address, *args, "-o", "json"]) == 0
        remote = capsys.readouterr().out
    assert json.loads(remote) == json.loads(local)
    assert remote == local


def test_check_refuses_bad_input_with_invalid_argument(tmp_path):
    with running_plane(tmp_path / "cp") as plane, admin_client.connect(plane.address) as c:
        with pytest.raises(CheckInputError, match="--dst-ip"):
            c.check(CheckQuery("coder", "not-an-ip", 443))
        with pytest.raises(CheckInputError, match="no EgressGateway default/nope"):
            c.check(CheckQuery("coder", "192.0.2.1", 443, gateway="nope"))


def _denial(port: int, agent: str = "coder"):
    decision = Decision(Reason.POLICY, "default/gw", f"default/{agent}", "deny-all")
    return dial_denied(
        decision,
        agent=Agent("default", agent),
        dst_ip="192.0.2.1",
        dst_port=port,
        transport="tcp",
        dst_name="x.example",
    )


def test_stream_records_sends_matching_records_as_they_are_written(tmp_path):
    records = tmp_path / "records.jsonl"
    with RecordWriter("old", path=str(records)) as writer:
        writer.emit(_denial(1))  # written before the stream: not sent
    with running_plane(tmp_path / "cp", records=records) as plane:
        got: queue.Queue = queue.Queue()
        request = pb2.StreamRecordsRequest(name="egress.dial.denied", agent="coder")

        def follow():
            with admin_client.connect(plane.address) as c:
                try:
                    for record in c.stream_records(request):
                        got.put(record)
                except AdminError as exc:
                    got.put(exc)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        time.sleep(0.3)  # let the stream open before writing (it starts at the end)
        with RecordWriter("clrk-dialer", path=str(records)) as writer:
            writer.emit(_denial(2, agent="someone-else"))
            writer.emit(
                tcp_allowed(
                    gateway="default/gw",
                    agent=Agent("default", "coder"),
                    route="default/r",
                    listener="tcp-out",
                    dst_ip="192.0.2.1",
                    dst_port=3,
                    dst_name=None,
                    bytes_up=1,
                    bytes_down=1,
                    start_ns=1,
                    end_ns=2,
                )
            )
            writer.emit(_denial(4))
        record = got.get(timeout=10)
        assert record["name"] == "egress.dial.denied" and record["signal"] == "log"
        assert record["attributes"]["network.peer.port"] == 4
        assert record["attributes"]["clrk.egress.deny_reason"] == "policy"
        assert got.empty()
    reader.join(10)  # the server's stop ends the stream


def test_stream_records_since_replays_earlier_records_and_filters_validate(tmp_path):
    records = tmp_path / "records.jsonl"
    with RecordWriter("old", path=str(records)) as writer:
        writer.emit(_denial(1))
    with (
        running_plane(tmp_path / "cp", records=records) as plane,
        admin_client.connect(plane.address) as c,
    ):
        request = pb2.StreamRecordsRequest(since_unix_nano=1, signal="span")
        first = next(iter(c.stream_records(request)))
        assert first["signal"] == "span" and first["attributes"]["network.peer.port"] == 1
        with pytest.raises(AdminError, match="signal must be one of"):
            next(iter(c.stream_records(pb2.StreamRecordsRequest(signal="x"))))


def test_every_proto_file_is_generated_together():
    from clrk_runtime.protos import ADMIN_MODULE, MODULE, load, proto_files

    assert {p.name for p in proto_files()} >= {"policy.proto", "admin.proto"}
    assert load(ADMIN_MODULE).DESCRIPTOR.package == "clrk.admin.v1"
    assert load(MODULE).DESCRIPTOR.package == "clrk.policy.v1"
