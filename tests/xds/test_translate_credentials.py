"""EgressCredential in Envoy: injector filters after ext_proc, SDS names only, the
tripwire on every L7 chain, and the access log that records it."""

from __future__ import annotations

import json

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk_xds.translate import to_plain, translate

API = "apiVersion: clrk.apoxy.dev/v1alpha1"
MANIFESTS = f"""{API}
kind: EgressGateway
metadata: {{name: gw}}
spec:
  listeners:
  - {{name: web, protocol: HTTP}}
  - {{name: tcp, protocol: TCP}}
---
{API}
kind: EgressL4Route
metadata: {{name: api}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{destinationHostnames: [api.example.com, "*.example.com"]}}]}}]
---
{API}
kind: EgressL4Route
metadata: {{name: other}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{destinationHostnames: [paste.example.org]}}]}}]
---
{API}
kind: EgressCredential
metadata: {{name: key}}
spec:
  targetRef: {{name: api}}
  hostnames: [api.example.com]
  header: x-api-key
  placeholder: clrk-placeholder-key
  source: {{env: KEY}}
"""


def _gateway() -> dict:
    loaded = compile_loaded(load_text(MANIFESTS, "c.yaml"))
    return to_plain(translate(loaded.compiled)["default/gw"])


def _hcm(plain: dict, chain: str) -> dict:
    web = next(lst for lst in plain["listeners"] if lst["name"] == "web")
    found = next(c for c in web["filterChains"] if c["name"] == chain)
    return found["filters"][0]["typedConfig"]


def test_the_injector_runs_after_any_ext_proc_and_names_only_the_sds_secret() -> None:
    hcm = _hcm(_gateway(), "route/default/api/rule/0")
    names = [f["name"] for f in hcm["httpFilters"]]
    assert names.index("clrk.credential/default/key") > names.index("clrk.ext_proc_when_tagged")
    text = json.dumps(hcm)
    assert '"name": "credential/default/key"' in text and '"ads": {}' in text
    assert "(?i)^api\\\\.example\\\\.com$" in text  # skipped for every other host


def test_the_credentials_host_gets_its_own_virtual_host_without_its_own_tripwire() -> None:
    hosts = {
        tuple(v["domains"]): v["routes"]
        for v in _hcm(_gateway(), "route/default/api/rule/0")["routeConfig"]["virtualHosts"]
    }
    assert [r.get("name") for r in hosts[("api.example.com",)]] == ["injected/default/key"]
    misuse = [r["name"] for r in hosts[("*.example.com",)] if "directResponse" in r]
    assert misuse == ["credential_misuse/default/key"] * 2  # its header and authorization
    assert hosts[("*",)][0]["directResponse"]["status"] == 403  # a host no route allows


def test_every_l7_chain_answers_the_placeholder_and_logs_it() -> None:
    hcm = _hcm(_gateway(), "route/default/other/rule/0")
    host = hcm["routeConfig"]["virtualHosts"][0]
    first = host["routes"][0]
    assert first["match"]["headers"][0] == {
        "name": "x-api-key",
        "stringMatch": {"contains": "clrk-placeholder-key", "ignoreCase": True},
    }
    assert "clrk.credential/default/key" not in json.dumps(hcm["httpFilters"])
    # No ext_proc on this allow chain: its one access log records every request, the
    # tripwire's answers among them (clrk_extproc.http_log.entry_record).
    (log,) = hcm["accessLog"]
    assert log["name"] == "envoy.access_loggers.http_grpc" and "filter" not in log


def test_an_injecting_chain_runs_no_ext_proc_and_names_the_credential_in_its_route() -> None:
    hcm = _hcm(_gateway(), "route/default/api/rule/0")
    assert "envoy.filters.http.ext_proc" not in [f["name"] for f in hcm["httpFilters"]]
    (log,) = hcm["accessLog"]
    assert "filter" not in log  # every request is recorded from here
    routes = [r for v in hcm["routeConfig"]["virtualHosts"] for r in v["routes"]]
    assert "injected/default/key" in [r.get("name") for r in routes]


def test_no_chain_changes_without_credentials() -> None:
    loaded = compile_loaded(load_text(MANIFESTS.rsplit("---", 1)[0], "c.yaml"))
    hcm = _hcm(to_plain(translate(loaded.compiled)["default/gw"]), "route/default/api/rule/0")
    assert len(hcm["routeConfig"]["virtualHosts"]) == 1
    assert "credential" not in json.dumps(hcm["httpFilters"])
