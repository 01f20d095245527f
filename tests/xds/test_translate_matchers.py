"""Predicates many routes have alike are shared only as frozen messages."""

from __future__ import annotations

import subprocess
import sys

_SHARING = """
import sys
from clrk_xds import betterproto_speed, translate_matchers as tm
if sys.argv[1] == "installed":
    betterproto_speed.install()
a, b = tm.port_matches("^443$"), tm.port_matches("^443$")
x, y = tm.sni_absent_or_in(["a.example"]), tm.sni_absent_or_in(["b.example"])
no_sni = [p.or_matcher.predicate[0] for p in (x, y)]
print(a is b, betterproto_speed.is_frozen(a), no_sni[0] is no_sni[1], a == tm.port_matches("^443$"))
bots = [("default", "bot"), ("team", "x")]
c, d = tm.agent_in(bots), tm.agent_in(list(bots))
print(c is d, betterproto_speed.is_frozen(c), c == tm.agent_in(bots))
"""


def _sharing(mode: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", _SHARING, mode], capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


def test_port_agent_and_no_sni_predicates_are_shared_once_frozen():
    assert _sharing("installed") == "True True True True\nTrue True True"


def test_without_the_shortcuts_every_route_gets_a_predicate_of_its_own():
    """Nothing frozen: a caller may change what it got, so nothing is shared."""
    assert _sharing("plain") == "False False False True\nFalse False True"


def _value(predicate):
    return predicate.single_predicate.value_match


def test_one_port_is_an_exact_string_and_a_set_of_ports_a_regex():
    """Envoy compiles each regex of each chain on every listener update; an exact string
    matches the same decimal port and compiles nothing."""
    from clrk_xds import translate_matchers as tm

    assert _value(tm.port_matches("^443$")).exact == "443"
    assert _value(tm.port_matches("^443$")).safe_regex is None
    for pattern in ("^(?:80|443)$", "^[0-9]+$", "^44[0-9]$"):
        value = _value(tm.port_matches(pattern))
        assert value.exact is None and value.safe_regex.regex == pattern


def test_one_agent_name_is_an_exact_string_and_several_names_a_regex():
    from clrk_xds import translate_matchers as tm

    one = tm.agent_in([("team", "bot.v2")])
    assert _value(one.and_matcher.predicate[1]).exact == "bot.v2"
    several = tm.agent_in([("team", "bot.v2"), ("team", "etl")])
    assert _value(several.and_matcher.predicate[1]).safe_regex.regex == r"^(?:bot\.v2|etl)$"
