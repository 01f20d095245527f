"""Sandboxes registered at run time (SPEC 5.1: "agent identity by sandbox source address,
registered when the sandbox starts"), through a directory shared with `clrk run`.

`clrk run` writes `<sandbox>.json` ({"agent": "ns/name", "addresses": [...]}) and waits
for `<sandbox>.ack`; the dialer polls the directory, applies what was added or removed
to its Identity, then writes the ack.  Files survive a dialer restart: a restarted
dialer reads every entry again before it serves, so running sandboxes keep their agent.

Pure core (`parse_entry`, `entry_text`, `changes`) and a small polling shell (`follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("clrk.dialer.registry")

ENTRY = ".json"
ACK = ".ack"
POLL_INTERVAL = 0.05
MAX_ENTRY = 4096  # bytes; anything larger is not an entry we wrote

Sources = dict[str, str]  # address -> agent ref


def entry_text(agent: str, addresses: Iterable[str]) -> str:
    return json.dumps({"agent": agent, "addresses": sorted(addresses)}, sort_keys=True)


def parse_entry(text: str) -> Sources | None:
    """The address -> agent map of one entry, or None when it is not a valid entry."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    agent, addresses = doc.get("agent"), doc.get("addresses")
    if not isinstance(agent, str) or not agent or not isinstance(addresses, list):
        return None
    out: Sources = {}
    for address in addresses:
        if not isinstance(address, str):
            return None
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return None
        out[address] = agent
    return out


def claims(entries: Mapping[str, Sources]) -> Sources:
    """address -> agent over all entries, without the addresses that entries claim for
    different agents: with two claims (a killed run's entry left behind, a new sandbox
    given the same addresses) the source could be either agent, so it is neither's and
    its connections are denied `unknown_agent` until one claim goes."""
    out: Sources = {}
    disputed: set[str] = set()
    for entry in entries.values():
        for ip, ref in entry.items():
            if out.setdefault(ip, ref) != ref:
                disputed.add(ip)
    for ip in disputed:
        del out[ip]
    return out


def disputed(entries: Mapping[str, Sources]) -> list[str]:
    """The addresses `claims` leaves out."""
    every = {ip for entry in entries.values() for ip in entry}
    return sorted(every - claims(entries).keys())


def changes(old: Mapping[str, Sources], new: Mapping[str, Sources]) -> tuple[Sources, list[str]]:
    """(address -> agent to register, addresses to unregister) going from old to new;
    per-sandbox maps keyed by entry name."""
    before, after = claims(old), claims(new)
    register = {ip: ref for ip, ref in after.items() if before.get(ip) != ref}
    unregister = sorted(ip for ip in before if ip not in after)
    return register, unregister


def read_entries(directory: Path) -> dict[str, Sources]:
    """Every valid entry of the directory; unreadable or invalid files are skipped."""
    out: dict[str, Sources] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if not name.endswith(ENTRY):
            continue
        try:
            with open(directory / name, "rb") as fh:
                data = fh.read(MAX_ENTRY + 1)
        except OSError:
            continue
        if len(data) > MAX_ENTRY:
            continue
        parsed = parse_entry(data.decode(errors="replace"))
        if parsed is not None:
            out[name[: -len(ENTRY)]] = parsed
    return out


def _ack(directory: Path, name: str) -> None:
    with contextlib.suppress(OSError):
        (directory / f"{name}{ACK}").write_text(str(os.getpid()))


def sync(directory: Path, identity, known: dict[str, Sources]) -> dict[str, Sources]:
    """One pass: apply the directory's entries to `identity`, ack new ones; returns the
    new known state."""
    current = read_entries(directory)
    register, unregister = changes(known, current)
    for ip in unregister:
        identity.unregister(ip)
    for ip, ref in register.items():
        identity.register(ip, ref)
    contested = set(disputed(current))
    newly_contested = contested - set(disputed(known))
    for name in current:
        if name not in known or known[name] != current[name]:
            log.info("sandbox registered", extra={"sandbox": name, "sources": current[name]})
            _ack(directory, name)
        clash = sorted(contested.intersection(current[name]))
        if newly_contested.intersection(clash):
            log.error(
                "sandbox addresses claimed for another agent too; denied as unknown",
                extra={"sandbox": name, "addresses": clash},
            )
    for name in known.keys() - current.keys():
        log.info("sandbox unregistered", extra={"sandbox": name})
    return current


async def follow(
    directory: str | Path,
    identity,
    interval: float = POLL_INTERVAL,
    known: dict[str, Sources] | None = None,
) -> None:
    """Keep `identity` in step with the directory until cancelled.  Polling keeps this
    independent of inotify limits, and an entry costs one small read per pass."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    known = dict(known or {})
    while True:
        try:
            known = sync(path, identity, known)
        except Exception:  # never let a strange file stop identity updates
            log.exception("sandbox registry pass failed")
        await asyncio.sleep(interval)
