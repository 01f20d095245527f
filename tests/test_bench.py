"""The benchmark runs end to end (a smoke run: no timing is asserted here)."""

from __future__ import annotations

from bench import decide_bench


def test_the_decide_benchmark_runs_and_reports_every_engine_and_size(capsys):
    rows = decide_bench.main(quick=True)
    assert {(r["engine"], r["routes"]) for r in rows} == {
        (e, n) for e in ("compiled", "naive") for n in (10, 1_000, 10_000)
    }
    assert all(r["calls"] > 0 for r in rows)
    assert "decisions/s" in capsys.readouterr().out
