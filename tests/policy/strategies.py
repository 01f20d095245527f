"""Hypothesis strategies for random policies and connections, shared by the property
tests that compare decide() with a naive reference, with the translated Envoy matcher,
and with itself after a trip over the policy stream."""

from __future__ import annotations

from hypothesis import strategies as st

from clrk.policy import Connection

API = "clrk.apoxy.dev/v1alpha1"
NAMES = ["api.example.com", "x.api.example.com", "example.com", "pg.internal", "a.b.example.com"]
PATTERNS = [*NAMES, "*.example.com", "*.api.example.com", "*.internal", "*.b.example.com"]
CIDRS = [
    "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "127.0.0.0/8", "127.0.0.1/32",
    "169.254.169.254/32", "192.0.2.0/24", "224.0.0.0/4", "2001:db8::/32", "::/0",
    "64:ff9b::/96", "64:ff9b::7f00:0/104", "fe80::/10", "2002::/16", "2001::/32",
    "192.0.2.7/32",
]  # fmt: skip
# The gateway's own (decide()'s `own`): none, hosts (one among IPS, opened by a CIDR
# above if own were openable), or hosts and loopback as a whole, as under `clrk up`.
OWN_CHOICES = [[], ["192.0.2.7", "2001:db8::5"], ["192.0.2.7", "2001:db8::5", "127.0.0.0/8", "::1"]]
IPS = [
    "10.1.2.3", "10.1.9.9", "10.200.0.1", "192.0.2.7", "198.51.100.1", "127.0.0.1",
    "169.254.169.254", "0.0.0.0", "255.255.255.255", "224.0.0.1", "::ffff:10.1.2.3",
    "::ffff:127.0.0.1", "2001:db8::5", "::1", "::", "fe80::1", "ff02::1", "64:ff9b::7f00:1",
    "64:ff9b::c000:207", "2002:7f00:1::1", "2002:c000:207::1", "2001:0:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe", "203.0.113.9",
]  # fmt: skip
PORTS = [1, 53, 443, 5432, 8000, 8050, 8099, 8100, 65535]
LISTENERS = [
    {"protocol": "TCP"},
    {"protocol": "TLS"},
    {"protocol": "TLS", "tls": {"mode": "Terminate"}},
    {"protocol": "HTTP"},
    {"protocol": "UDP"},
    {"protocol": "TCP", "port": 5432},
    {"protocol": "TLS", "port": 443},
    {"protocol": "UDP", "port": 53},
]
LABELS = st.dictionaries(st.sampled_from(["team", "tier", "env"]), st.sampled_from(["a", "b"]))

port_spec = st.one_of(
    st.sampled_from(PORTS).map(lambda p: {"port": p}),
    st.sampled_from([(1, 100), (400, 500), (8000, 8099), (5432, 5432), (1, 65535)]).map(
        lambda r: {"startPort": r[0], "endPort": r[1]}
    ),
)
expression = st.one_of(
    st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        st.sampled_from(["team", "tier", "env"]),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(["team", "tier", "env"]),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
selector = st.builds(
    lambda ml, me: {"matchLabels": ml, "matchExpressions": me},
    LABELS,
    st.lists(expression, max_size=2),
)


@st.composite
def match(draw):
    m = {"protocol": draw(st.sampled_from(["TCP", "TCP", "UDP"]))}
    if hosts := draw(st.lists(st.sampled_from(PATTERNS), max_size=3)):
        m["destinationHostnames"] = hosts
    if cidrs := draw(st.lists(st.sampled_from(CIDRS), max_size=3)):
        m["destinationCIDRs"] = cidrs
    if ports := draw(st.lists(port_spec, max_size=3)):
        m["ports"] = ports
    if draw(st.booleans()) and draw(st.booleans()):
        m["sourceAgents"] = draw(selector)
    return m


@st.composite
def policy(draw):
    listeners = draw(st.lists(st.sampled_from(LISTENERS), min_size=1, max_size=5))
    names = [f"l{i}" for i in range(len(listeners))]
    docs = [
        {
            "apiVersion": API,
            "kind": "EgressGateway",
            "metadata": {"name": "gw"},
            "spec": {
                "defaultPolicy": draw(st.sampled_from(["deny-all", "allow-all"])),
                "listeners": [dict(lst, name=n) for lst, n in zip(listeners, names, strict=True)],
            },
        }
    ]
    n_routes = draw(st.integers(1, 6))
    for i in range(n_routes):
        refs = draw(
            st.lists(
                st.one_of(
                    st.just({"name": "gw"}),
                    st.sampled_from([*names, "missing"]).map(
                        lambda s: {"name": "gw", "sectionName": s}
                    ),
                    st.just({"name": "other-gw"}),
                ),
                min_size=1,
                max_size=2,
            )
        )
        rules = draw(st.lists(st.lists(match(), min_size=1, max_size=3), min_size=1, max_size=2))
        docs.append(
            {
                "apiVersion": API,
                "kind": "EgressL4Route",
                "metadata": {"name": f"r{draw(st.integers(0, 50))}x{i}"},
                "spec": {"parentRefs": refs, "rules": [{"matches": ms} for ms in rules]},
            }
        )
    route_names = [d["metadata"]["name"] for d in docs[1:]]
    for j in range(draw(st.integers(0, 2))):
        targets = draw(st.lists(st.sampled_from([*route_names, "nowhere"]), min_size=1, max_size=2))
        docs.append(
            {
                "apiVersion": API,
                "kind": "EgressDenyPolicy",
                "metadata": {"name": f"deny{j}"},
                "spec": {"targetRefs": [{"name": t} for t in targets]},
            }
        )
    return docs


@st.composite
def connection(draw):
    names = draw(st.lists(st.sampled_from([*NAMES, "API.Example.com.", "other.org"]), max_size=3))
    sni = draw(st.one_of(st.none(), st.sampled_from([*NAMES, "evil.com"])))
    return Connection(
        draw(st.sampled_from(["TCP", "TCP", "UDP"])),
        draw(st.sampled_from(IPS)),
        draw(st.sampled_from(PORTS)),
        frozenset(names),
        sni,
    )


AGENT_KEYS = [("default", "a"), ("default", "b"), ("data", "etl")]


@st.composite
def policy_with_agents(draw):
    """`policy()` plus declared agents with random labels: at least one on `gw` (the
    gateway the others are tested on), perhaps one on another gateway only."""
    docs = draw(policy())
    keys = draw(st.lists(st.sampled_from(AGENT_KEYS), min_size=1, max_size=3, unique=True))
    for i, (namespace, name) in enumerate(keys):
        gateway = "other-gw" if i and draw(st.booleans()) and draw(st.booleans()) else "gw"
        docs.append(
            {
                "apiVersion": API,
                "kind": "DaemonAgent",
                "metadata": {"name": name, "namespace": namespace, "labels": draw(LABELS)},
                "spec": {"egressRefs": [{"gatewayRef": f"default/{gateway}"}]},
            }
        )
    return docs


@st.composite
def policy_with_modes(draw):
    """`policy_with_agents()` with Enforce or Report drawn for the gateway and for each
    deny policy (Report mode: recorded denials let through)."""
    docs = draw(policy_with_agents())
    for doc in docs:
        if doc["kind"] in ("EgressGateway", "EgressDenyPolicy"):
            mode = draw(st.sampled_from([None, "Enforce", "Report"]))
            if mode is not None:
                doc["spec"]["mode"] = mode
    return docs
