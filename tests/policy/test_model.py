"""The decision record: a closed set of reasons and the JSON that `clrk check` prints."""

from __future__ import annotations

from clrk.policy import Decision, Reason


def test_only_the_two_allow_reasons_allow():
    assert {r for r in Reason if r.allows} == {Reason.ALLOWED, Reason.ALLOWED_DEFAULT}


def test_the_reason_set_is_the_closed_set_of_the_spec():
    assert {str(r) for r in Reason} == {
        "allowed", "allowed_default", "policy", "deny_policy", "blocked_address",
        "sni_mismatch", "sni_unverified", "unknown_agent", "no_listener", "dns_filtered",
        "credential_misuse",
    }  # fmt: skip


def test_a_decision_renders_every_documented_json_key():
    d = Decision(Reason.DENY_POLICY, "default/gw", "default/bot", "allow-all", "default/r", 0,
                 "tls-out", "pastebin.com", "default/no-paste")  # fmt: skip
    assert d.to_json() == {
        "decision": "deny",
        "reason": "deny_policy",
        "gateway": "default/gw",
        "agent": "default/bot",
        "route": "default/r",
        "rule": 0,
        "listener": "tls-out",
        "hostname": "pastebin.com",
        "defaultPolicy": "allow-all",
        "denyPolicy": "default/no-paste",
        "enforced": True,
        "through": None,
    }
    assert not d.allowed
