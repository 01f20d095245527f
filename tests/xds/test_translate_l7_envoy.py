"""A TLS Terminate gateway served over the project's ADS server to the real Envoy: the
leaf certificates travel as SDS-over-ADS secrets, Envoy ACKs every type, and a TLS client
that sends a PROXY header naming the route's host gets the route's leaf, issued by the
gateway CA.  No upstream is contacted: the handshake ends at Envoy."""

from __future__ import annotations

import asyncio
import socket
import ssl

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode
from clrk_xds.consistency import CLUSTER, LISTENER, SECRET
from clrk_xds.snapshot import Snapshot, SnapshotCache
from clrk_xds.translate import translate
from tests.extproc.gateway_ca import GATEWAY_CA_NAME, GatewayCA
from tests.xds.test_ads_envoy import ads_server, envoy, run, until
from tests.xds.xds_messages import free_port

NODE = "default/gw"
MANIFEST = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: term, protocol: TLS, tls: {mode: Terminate}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: llm}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationHostnames: [api.anthropic.com, "*.openai.com"]}]
"""


def handshake(port: int, host: str, cafile: str) -> dict:
    header = encode(
        ProxyHeader("192.0.2.1", 40000, "192.0.2.2", 443,
                    clrk_tlvs(authority=host, agent_namespace="default", agent_name="a",
                              route="default/llm", deny_policy=None, connection_id="c1"))
    )  # fmt: skip
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert()


def test_terminate_leaf_over_sds_over_ads(tmp_path) -> None:
    ca = GatewayCA()
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca.pem())
    port = free_port()
    loaded = load_text(MANIFEST, "t.yaml")
    res = translate(
        compile_loaded(loaded).compiled,
        base_port=port,
        always_blocked=(),
        leaf_secret=ca.leaf_secret,
    )[NODE]
    snap = Snapshot.from_messages(res.listeners, res.clusters, res.secrets)

    async def go():
        cache = SnapshotCache()
        cache.set_snapshot(NODE, snap)
        async with ads_server(cache) as (ads, ads_port), envoy(ads_port):
            await until(
                lambda: all(
                    (s := ads.status(NODE).get(t)) and s.acked_version == snap.version_of(t)
                    for t in (LISTENER, CLUSTER, SECRET)
                )
            )
            assert not any(s.nacked_version for s in ads.status(NODE).values())
            for host in ("api.anthropic.com", "eu.openai.com"):
                cert = await until(lambda h=host: _try(port, h, str(cafile)))
                issuer = dict(x[0] for x in cert["issuer"])
                assert issuer["commonName"] == GATEWAY_CA_NAME
                sans = {v for k, v in cert["subjectAltName"] if k == "DNS"}
                assert sans == {"api.anthropic.com", "*.openai.com"}

    run(go())


async def _try(port: int, host: str, cafile: str) -> dict | None:
    try:
        return await asyncio.to_thread(handshake, port, host, cafile)
    except (OSError, ssl.SSLError):
        return None  # the listener may still be warming (secrets arrive after it)
