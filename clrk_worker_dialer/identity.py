"""Who is connecting (SPEC 5.1): by the sandbox source address, by the proxy username and
its credential, or the one agent configured for a sidecar.  Pure lookups over the
compiled policy (credentials come in as a lookup function).

An agent is known to a gateway only if it is declared (DaemonAgent/TaskAgent) and its
`egressRefs` name that gateway (the compiled policy lists exactly those); anything else
is no agent, and is denied `unknown_agent` by decide().
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from clrk.policy import Agent, GatewayPolicy
from clrk_worker_dialer.proxy_credentials import matches


def find_agent(policy: GatewayPolicy, ref: str | None) -> Agent | None:
    """`ref` is `namespace/name`, or a bare name that only one agent of the gateway has."""
    if not ref:
        return None
    if "/" in ref:
        namespace, _, name = ref.partition("/")
        return policy.agent_index.get((namespace, name))
    found = [a for a in policy.agents if a.name == ref]
    return found[0] if len(found) == 1 else None  # unknown or ambiguous


@functools.lru_cache(maxsize=4096)  # parsing is most of a lookup; sources repeat
def _ip_key(ip: str) -> str:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


@dataclass
class Identity:
    by_source: dict[str, str] = field(default_factory=dict)  # sandbox address -> agent ref
    default: str | None = None  # the sidecar's single agent

    @classmethod
    def of(cls, by_source: Mapping[str, str], default: str | None = None) -> Identity:
        return cls({_ip_key(ip): ref for ip, ref in by_source.items()}, default)

    def register(self, ip: str, ref: str) -> None:
        self.by_source[_ip_key(ip)] = ref

    def unregister(self, ip: str) -> None:
        self.by_source.pop(_ip_key(ip), None)

    def source_ref(self, ip: str) -> str | None:
        try:
            return self.by_source.get(_ip_key(ip), self.default)
        except ValueError:
            return self.default

    def for_source(self, policy: GatewayPolicy, ip: str) -> Agent | None:
        return find_agent(policy, self.source_ref(ip))

    def for_proxy(
        self,
        policy: GatewayPolicy,
        username: str | None,
        password: str | None,
        token_for: Callable[[str], str | None],
    ) -> Agent | None:
        """Explicit mode: a username alone never selects an agent.  An agent with a
        credential (`token_for(ref)`) is selected only with its token as the password;
        without one, only the configured default agent may be used (no username, or its
        name).  Anything else is no agent: denied `unknown_agent`."""
        default = find_agent(policy, self.default)
        if not username:
            return default
        agent = find_agent(policy, username)
        if agent is None:
            return None
        token = token_for(agent.ref)
        if token is not None:
            return agent if matches(token, password) else None
        return agent if agent == default else None
