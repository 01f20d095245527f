"""clrk_worker_dialer.registry: the sandbox directory `clrk run` writes and the dialer
follows (pure parts exhaustively; the shell over a real directory and asyncio)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from clrk_worker_dialer import registry
from clrk_worker_dialer.identity import Identity


def test_entry_round_trip():
    text = registry.entry_text("default/bot", ["198.18.0.6", "fd63:6c72:6b00:1::2"])
    assert registry.parse_entry(text) == {
        "198.18.0.6": "default/bot",
        "fd63:6c72:6b00:1::2": "default/bot",
    }


def test_invalid_entries():
    for text in [
        "",
        "[]",
        "{",
        '{"agent": "", "addresses": []}',
        '{"agent": "a"}',
        '{"agent": "a", "addresses": ["not-ip"]}',
        '{"agent": "a", "addresses": [1]}',
        '{"agent": 3, "addresses": []}',
        "[" * 5000,
    ]:
        assert registry.parse_entry(text) is None, text


@given(st.text(max_size=300))
def test_parse_never_raises(text):
    registry.parse_entry(text)


def test_changes():
    old = {"a": {"198.18.0.2": "x"}, "b": {"198.18.0.6": "y"}}
    new = {"a": {"198.18.0.2": "z"}, "c": {"198.18.0.10": "w"}}
    register, unregister = registry.changes(old, new)
    assert register == {"198.18.0.2": "z", "198.18.0.10": "w"}
    assert unregister == ["198.18.0.6"]
    assert registry.changes(new, new) == ({}, [])


def test_an_address_two_entries_claim_for_different_agents_is_nobodys():
    stale = {"clrk-r-p1-3": {"198.18.0.14": "default/old", "fd00::e": "default/old"}}
    fresh = {"clrk-r-p2-3": {"198.18.0.14": "default/new"}}
    both = {**stale, **fresh}
    assert registry.claims(both) == {"fd00::e": "default/old"}
    assert registry.disputed(both) == ["198.18.0.14"]
    register, unregister = registry.changes(stale, both)
    assert register == {} and unregister == ["198.18.0.14"]
    # Once the stale entry goes, the address is the new sandbox's.
    assert registry.changes(both, fresh) == ({"198.18.0.14": "default/new"}, ["fd00::e"])


def test_the_same_agent_claimed_twice_is_no_dispute():
    entries = {"a": {"198.18.0.2": "default/bot"}, "b": {"198.18.0.2": "default/bot"}}
    assert registry.claims(entries) == {"198.18.0.2": "default/bot"}
    assert registry.disputed(entries) == []


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.dictionaries(st.sampled_from(["198.18.0.2", "198.18.0.6"]), st.sampled_from("xy")),
    )
)
def test_claims_never_name_an_agent_some_entry_contradicts(entries):
    for ip, ref in registry.claims(entries).items():
        assert all(entry.get(ip, ref) == ref for entry in entries.values())


def test_sync_applies_acks_and_removes(tmp_path):
    identity = Identity.of({})
    (tmp_path / "s1.json").write_text(registry.entry_text("default/bot", ["198.18.0.6"]))
    (tmp_path / "junk.json").write_text("nope")
    (tmp_path / "big.json").write_text(" " * (registry.MAX_ENTRY + 1))
    known = registry.sync(tmp_path, identity, {})
    assert identity.source_ref("198.18.0.6") == "default/bot"
    assert (tmp_path / "s1.ack").exists() and not (tmp_path / "junk.ack").exists()
    assert set(known) == {"s1"}
    (tmp_path / "s1.json").unlink()
    assert registry.sync(tmp_path, identity, known) == {}
    assert identity.source_ref("198.18.0.6") is None


def test_follow_picks_up_a_new_entry(tmp_path):
    identity = Identity.of({})

    async def scenario():
        task = asyncio.get_running_loop().create_task(
            registry.follow(tmp_path / "reg", identity, interval=0.01)
        )
        try:
            await asyncio.sleep(0.02)
            (tmp_path / "reg" / "s.json").write_text(registry.entry_text("a/b", ["198.18.0.2"]))
            for _ in range(500):
                if (tmp_path / "reg" / "s.ack").exists():
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert identity.source_ref("198.18.0.2") == "a/b"
