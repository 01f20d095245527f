"""What every interception path of one dialer shares: the policy in force, the per-agent
DNS bindings, agent identity, next hops and the record writer.

The policy is swapped whole: a reload that fails validation leaves the last good policy
in force (fail closed, never half-apply); connections being decided keep the policy
they started with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from clrk.api import load_paths
from clrk.api.loader import ManifestCache
from clrk.nexthops import NextHop, envoy_listener_addresses
from clrk.policy import Agent, Decision, GatewayPolicy, OwnAddresses
from clrk.policy.compile import CompileCache
from clrk.policy.loaded import blocking, compile_loaded
from clrk.records.schema import dial_denied, dns_denied
from clrk_runtime import random_bytes
from clrk_runtime.logs import fields
from clrk_runtime.policy_messages import (
    DecodedMatches,
    PolicyDecodeError,
    pb2,
    policy_from_update,
)
from clrk_worker_dialer.config import DialerConfig, system_resolvers
from clrk_worker_dialer.dns_binding import BindingCache
from clrk_worker_dialer.identity import Identity
from clrk_worker_dialer.proxy_credentials import ProxyCredentials
from clrk_worker_dialer.session import Flow
from clrk_worker_dialer.splice_relay import PipePool

log = logging.getLogger("clrk.dialer")


class PolicyError(Exception):
    def __init__(self, errors: Sequence[str]):
        super().__init__("; ".join(errors))
        self.errors = list(errors)


def agent_key(agent: Agent | None) -> str | None:
    return None if agent is None else f"{agent.namespace}/{agent.name}"


class DialerState:
    def __init__(self, config: DialerConfig, writer) -> None:
        self.config = config
        self.writer = writer
        self.identity = Identity.of(config.sources, config.default_agent)
        self.proxy_credentials = ProxyCredentials(config.proxy_credentials_dir)
        self.bindings = BindingCache()
        self.policy: GatewayPolicy | None = None
        # Always-blocked destinations (SPEC 4): known to this host only, never compiled.
        self.own = OwnAddresses.of(config.own_addresses)
        self.next_hops: dict[str, NextHop] = {}
        self.version = 0
        self._manifests = ManifestCache()  # a reload re-parses only the files that changed
        self._compiled = CompileCache()  # ... and compiles only the routes that changed
        self._decoded = DecodedMatches()  # an update decodes only the matches that changed
        self.pipes = PipePool()  # what ended relays leave for the next ones

    def set_own_addresses(self, addresses: Sequence[str]) -> None:
        """This namespace's addresses changed (clrk_runtime.host_addresses): they and the
        configured ones are blocked from the next decision on."""
        self.own = OwnAddresses.of([*self.config.own_addresses, *addresses])

    # --- policy ----------------------------------------------------------------------

    def load(self) -> None:
        """Load and compile the manifests; raise PolicyError and keep the last good."""
        loaded = compile_loaded(load_paths(self.config.manifests, self._manifests), self._compiled)
        if loaded.blocked:
            raise PolicyError([f.line() for f in blocking(loaded.findings)])
        policy = loaded.compiled.gateways.get(self.config.gateway_key)
        if policy is None:
            raise PolicyError([f"gateway {self.config.gateway} is not defined or not accepted"])
        self.apply(policy)

    def apply_update(self, update: pb2.PolicyUpdate) -> None:
        """Apply the control plane's compiled policy; raise PolicyError and keep the last
        good when the update carries none this dialer can enforce."""
        try:
            policy = policy_from_update(update, self._decoded)
        except PolicyDecodeError as exc:
            raise PolicyError([str(exc)]) from None
        wanted = "/".join(self.config.gateway_key)
        if policy.ref != wanted:
            raise PolicyError([f"the update is for gateway {policy.ref}, not {wanted}"])
        self.apply(policy)
        self._decoded.keep(policy)  # only now: a refused update leaves it as it was

    def apply(self, policy: GatewayPolicy) -> None:
        listeners = [(lst.name, lst.protocol) for lst in policy.listeners]
        config = self.config
        self.next_hops = envoy_listener_addresses(
            listeners, config.next_hop_host, config.next_hop_base_port, config.next_hop_socket_dir
        )
        dns = policy.dns
        self.bindings.min_ttl, self.bindings.max_ttl = dns.min_ttl, dns.max_ttl
        self.policy = policy
        self.version += 1
        log.info("policy applied", extra=fields(version=self.version, gateway=policy.ref))

    @property
    def resolvers(self) -> list[tuple[str, int]]:
        if self.config.resolvers:
            return list(self.config.resolvers)
        assert self.policy is not None
        return list(self.policy.dns.upstream) or system_resolvers()

    # --- identity and evidence -------------------------------------------------------

    def agent_for_source(self, ip: str) -> Agent | None:
        assert self.policy is not None
        return self.identity.for_source(self.policy, ip)

    def agent_for_proxy(self, username: str | None, password: str | None) -> Agent | None:
        assert self.policy is not None
        return self.identity.for_proxy(
            self.policy,
            username,
            password,
            self.proxy_credentials.token_for,
        )

    def names(self, agent: Agent | None, ip: str) -> frozenset[str]:
        key = agent_key(agent)
        if key is None:
            return frozenset()
        return self.bindings.names_for(key, ip, time.monotonic())

    def flow(
        self,
        src: tuple[str, int],
        dst: tuple[str, int],
        agent: Agent | None,
        requested_name: str | None = None,
    ) -> Flow:
        return Flow(
            src[0],
            src[1],
            dst[0],
            dst[1],
            agent,
            self.names(agent, dst[0]),
            random_bytes.take(8).hex(),
            requested_name,
        )

    # --- records ---------------------------------------------------------------------

    def record_dial_denied(
        self,
        decision: Decision,
        *,
        agent: Agent | None,
        dst: tuple[str, int],
        transport: str,
        dst_name: str,
        src: tuple[str, int],
        connection_id: str | None = None,
    ) -> None:
        record = dial_denied(
            decision,
            agent=agent,
            dst_ip=dst[0],
            dst_port=dst[1],
            transport=transport,
            dst_name=dst_name,
            connection_id=connection_id,
            src=f"{src[0]}:{src[1]}",
        )
        self.writer.emit(record)
        # The record says it all; a log line per denial cost more than the record (a
        # flood of denials is also a flood of lines), so only when debugging.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "egress.dial.denied",
                extra=fields(
                    reason=str(decision.reason),
                    enforced=decision.enforced,
                    agent=decision.agent,
                    dst=f"{dst[0]}:{dst[1]}",
                    name=dst_name,
                    transport=transport,
                ),
            )

    def record_dns_denied(
        self,
        decision: Decision,
        *,
        agent: Agent | None,
        query: str,
        qtype: int,
        src,
        enforced: bool = True,
    ) -> None:
        record = dns_denied(
            decision,
            agent=agent,
            query_name=query,
            query_type=qtype,
            peer_address=src[0],
            peer_port=src[1],
            enforced=enforced,
        )
        self.writer.emit(record)
        if log.isEnabledFor(logging.DEBUG):  # the record says it all, as for dials
            log.debug(
                "egress.dns.denied",
                extra=fields(
                    reason=str(decision.reason),
                    enforced=enforced,
                    agent=decision.agent,
                    query=query,
                ),
            )
