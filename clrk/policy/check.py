"""One connection decided against a compiled policy set, from a query a person or a
client wrote: the one code path behind `clrk check` and the admin API's Check, so both
give the same answer for the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from clrk.api import grammar
from clrk.policy.addresses import parse_ip
from clrk.policy.compiled import GatewayPolicy, PolicySet
from clrk.policy.decide import decide
from clrk.policy.model import Agent, Connection, Decision, Reason

PROTOCOLS = ("TCP", "UDP")


class CheckInputError(ValueError):
    """A query that cannot be decided; `param` names the option at fault, if one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CheckQuery:
    agent: str  # [NAMESPACE/]NAME
    dst_ip: str
    port: int
    protocol: str = "TCP"
    hostnames: tuple[str, ...] = ()
    sni: str | None = None
    gateway: str | None = None  # [NAMESPACE/]NAME; None: the only or the agent's one
    agent_labels: tuple[str, ...] = ()  # K=V

    @property
    def connection(self) -> Connection:
        names = frozenset(self.hostnames)
        return Connection(self.protocol, self.dst_ip, self.port, names, self.sni)


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return self.decision.to_json()


def _ref(text: str, what: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    try:
        return (
            grammar.check_dns_label(namespace) if namespace else "default",
            grammar.check_object_name(name),
        )
    except ValueError as exc:
        raise CheckInputError(str(exc), what) from None


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CheckInputError(f"{pair!r} is not K=V", "--agent-label")
        try:
            out[grammar.check_label_key(key)] = grammar.check_label_value(value)
        except ValueError as exc:
            raise CheckInputError(str(exc), "--agent-label") from None
    return out


def validate_query(query: CheckQuery) -> None:
    """Everything about the query that does not need the policy; CheckInputError if bad."""
    try:
        parse_ip(query.dst_ip)
    except ValueError as exc:
        raise CheckInputError(str(exc), "--dst-ip") from None
    if not 1 <= query.port <= 65535:
        raise CheckInputError(f"{query.port} is not a port (1..65535)", "--port")
    if query.protocol not in PROTOCOLS:
        raise CheckInputError(f"{query.protocol!r} is not one of TCP, UDP", "--protocol")
    _ref(query.agent, "--agent")
    _labels(query.agent_labels)


def _pick_gateway(
    policies: PolicySet, given: str | None, agent_key: tuple[str, str]
) -> tuple[str, str]:
    if given is not None:
        key = _ref(given, "--gateway")
        if key not in policies.gateways:
            known = ", ".join(f"{ns}/{n}" for ns, n in policies.gateways) or "none"
            raise CheckInputError(f"no EgressGateway {key[0]}/{key[1]} (known: {known})")
        return key
    if len(policies.gateways) == 1:
        return next(iter(policies.gateways))
    declared = [g for g in policies.agent_gateways.get(agent_key, ()) if g in policies.gateways]
    if len(declared) == 1:
        return declared[0]
    if not policies.gateways:
        raise CheckInputError("the manifests define no EgressGateway")
    raise CheckInputError("the manifests define several gateways; choose one with --gateway")


def check_connection(policies: PolicySet, query: CheckQuery) -> CheckResult:
    """Decide one connection of `query` with `policies`; CheckInputError on bad input."""
    validate_query(query)
    agent_key = _ref(query.agent, "--agent")
    gw_key = _pick_gateway(policies, query.gateway, agent_key)
    declared = policies.agents.get(agent_key)
    labels = {**(declared.labels if declared else {}), **_labels(query.agent_labels)}
    refs = policies.agent_gateways.get(agent_key, ())
    warnings = []
    if declared and refs and gw_key not in refs:
        warnings.append(
            f"warning: agent {declared.ref} does not list gateway {gw_key[0]}/{gw_key[1]}"
            " in spec.egressRefs"
        )
    policy, agent = policies.gateways[gw_key], Agent(*agent_key, labels)
    decision = decide(policy, agent, query.connection)
    warnings += _sni_notes(policy, agent, query, decision)
    return CheckResult(decision, tuple(warnings))


def _sni_notes(
    policy: GatewayPolicy, agent: Agent, query: CheckQuery, decision: Decision
) -> list[str]:
    """What the SNI did and did not count for (SPEC 4): it needs the gateway's own
    confirmation when it is the only name, and it is never evidence off TLS listeners."""
    sni = query.sni
    if not sni:
        return []
    if decision.reason is Reason.SNI_UNVERIFIED:
        return [
            f"note: the SNI {sni} is the only name, so the gateway needs to confirm it: it"
            f" counts once resolving {sni} through the gateway's resolvers answers"
            f" {query.dst_ip} (--hostname {sni} checks that case)"
        ]
    if decision.allowed:
        return []
    as_bound = Connection(query.protocol, query.dst_ip, query.port, frozenset({sni}))
    would = decide(policy, agent, as_bound)
    listener = policy.listener(would.listener or "")
    if would.reason is Reason.ALLOWED and listener is not None and listener.protocol != "TLS":
        return [
            f"note: the SNI {sni} names route {would.route} on {listener.protocol} listener"
            f" {listener.name}, but an SNI is evidence only on TLS listeners: only a name"
            " the agent's DNS bound to the address (--hostname) opens it"
        ]
    return []
