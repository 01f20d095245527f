"""Confirming an SNI no DNS answer bound: the dialer's own lookup against a real dnsmasq
on loopback, what it binds, and the bounds on its wait and on lookups at once."""

from __future__ import annotations

import asyncio
import shutil
import socket

import pytest

from clrk.policy import Agent
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.sni_confirm import SniConfirmer
from clrk_worker_dialer.state import DialerState
from tests.worker_dialer.loopback_dns import loopback_dnsmasq

pytestmark = pytest.mark.skipif(not shutil.which("dnsmasq"), reason="needs dnsmasq")

AGENT = Agent("default", "bot")
OTHER = Agent("default", "other")


@pytest.fixture(scope="module")
def resolver(tmp_path_factory):
    zone = {
        "api.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"], "ttl": 30},
        "www.test": {"CNAME": "api.test", "ttl": 30},
    }
    with loopback_dnsmasq(zone, tmp_path_factory.mktemp("dns")) as address:
        yield address


class _Records:
    def emit(self, record) -> None:
        raise AssertionError(f"a confirmation writes no record: {record}")


def state_with(resolver, dns_timeout: float = 2.0) -> DialerState:
    config = DialerConfig(
        manifests=[], gateway="default/gw", resolvers=[resolver], dns_timeout=dns_timeout
    )
    return DialerState(config, _Records())


def confirm(confirmer: SniConfirmer, agent, name: str, ip: str) -> bool:
    return asyncio.run(confirmer.confirm(agent, name, ip))


def test_a_name_that_resolves_to_the_destination_is_confirmed_and_bound_for_that_agent(
    resolver,
):
    state = state_with(resolver)
    assert confirm(SniConfirmer(state), AGENT, "api.test", "192.0.2.10")
    assert state.names(AGENT, "192.0.2.10") == {"api.test"}
    assert state.names(AGENT, "2001:db8::10") == {"api.test"}  # the whole answer
    assert state.names(OTHER, "192.0.2.10") == frozenset()


def test_a_cname_chain_is_followed_and_bound_as_the_snoop_binds_it(resolver):
    state = state_with(resolver)
    assert confirm(SniConfirmer(state), AGENT, "www.test", "2001:db8::10")
    assert state.names(AGENT, "2001:db8::10") == {"www.test", "api.test"}


def test_a_name_that_resolves_elsewhere_is_not_confirmed_and_binds_nothing(resolver):
    state = state_with(resolver)
    assert not confirm(SniConfirmer(state), AGENT, "api.test", "203.0.113.66")
    assert state.names(AGENT, "192.0.2.10") == frozenset()


def test_a_name_that_does_not_exist_is_not_confirmed(resolver):
    state = state_with(resolver)
    assert not confirm(SniConfirmer(state), AGENT, "nowhere.test", "192.0.2.10")


def test_an_unknown_agent_is_never_confirmed(resolver):
    assert not confirm(SniConfirmer(state_with(resolver)), None, "api.test", "192.0.2.10")


def test_a_resolver_that_never_answers_ends_in_no_confirmation_within_the_bound():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # reads nothing, answers nothing
        state = state_with(silent.getsockname(), dns_timeout=30.0)
        assert not confirm(SniConfirmer(state, timeout=0.2), AGENT, "api.test", "192.0.2.10")


def test_no_more_lookups_run_at_once_than_the_bound(resolver):
    confirmer = SniConfirmer(state_with(resolver), timeout=30.0, concurrency=2)
    running, most = 0, 0
    release = None

    async def slow_lookup(name):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return []

    confirmer._lookup = slow_lookup

    async def main():
        nonlocal release
        release = asyncio.Event()
        tasks = [
            asyncio.create_task(confirmer.confirm(AGENT, "api.test", "192.0.2.10"))
            for _ in range(5)
        ]
        for _ in range(10):
            await asyncio.sleep(0)
        seen = most
        release.set()
        return seen, await asyncio.gather(*tasks)

    seen, results = asyncio.run(main())
    assert (seen, most, results) == (2, 2, [False] * 5)


def test_a_confirmer_needs_a_positive_wait_and_a_slot(resolver):
    state = state_with(resolver)
    for kw in ({"timeout": 0}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            SniConfirmer(state, **kw)
