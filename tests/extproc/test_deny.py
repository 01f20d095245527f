"""The deny answer built from a chain's facts (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clrk.wire import ChainFacts
from clrk_extproc.deny import DEFAULT_STATUS, DENY_REASON_HEADER, default_body, deny_answer


def facts(**kw) -> ChainFacts:
    return ChainFacts(gateway="default/gw", listener="web", route="default/paste", **kw)


def test_no_deny_policy_no_answer() -> None:
    assert deny_answer(facts()) is None


def test_status_message_and_headers() -> None:
    answer = deny_answer(facts(deny_policy="default/p", status=451, message="nope"))
    assert answer is not None
    assert (answer.status, answer.body) == (451, b"nope")
    assert dict(answer.headers) == {
        "content-type": "text/plain; charset=utf-8",
        DENY_REASON_HEADER: "deny_policy",
    }


def test_default_status_and_body_name_the_policy() -> None:
    answer = deny_answer(facts(deny_policy="team/paste-sites"))
    assert answer is not None
    assert answer.status == DEFAULT_STATUS == 403
    assert answer.body == default_body("team/paste-sites").encode()
    assert b"team/paste-sites" in answer.body


@given(st.integers(min_value=-10, max_value=1000))
def test_status_is_always_an_error(status: int) -> None:
    answer = deny_answer(facts(deny_policy="a/b", status=status))
    assert answer is not None
    assert 400 <= answer.status <= 599
    assert answer.status == (status if 400 <= status <= 599 else 403)


@given(st.text(max_size=200))
def test_any_message_is_the_body_in_utf8(message: str) -> None:
    answer = deny_answer(facts(deny_policy="a/b", message=message))
    assert answer is not None
    assert answer.body == (message or default_body("a/b")).encode()
