"""The control-plane benchmark runs end to end (a smoke run: no timing is asserted)."""

from __future__ import annotations

from bench import xds_bench


def test_the_xds_benchmark_reports_every_size_and_validates_with_envoy(capsys):
    rows = xds_bench.main(quick=True)
    assert [r["routes"] for r in rows] == list(xds_bench.QUICK_SIZES)
    for r in rows:
        assert r["cold_ms"] > 0 and r["translate_ms"] > 0 and r["snapshot_ms"] > 0
        assert r["snapshot_bytes"] > 0 and r["listeners"] == 2
        # Every route reaches Envoy as a filter chain (plus one closing chain per listener).
        assert r["filter_chains"] == r["routes"] + 2
    validated = [r for r in rows if r["routes"] == xds_bench.VALIDATED_SIZE]
    assert validated[0]["valid"] is True
    assert "reload ms" in capsys.readouterr().out


def test_the_cold_start_lines_give_the_first_translation_and_the_whole_start(capsys):
    runs = xds_bench.cold_start(10, 3)
    for r in runs:
        parts = sum(r[f"{step}_ms"] for step in xds_bench.COLD_START_STEPS)
        assert r["translate_ms"] > 0 and abs(parts - r["ready_ms"]) < 1e-6
    first, whole = xds_bench.cold_start_lines(runs)
    assert first.startswith("target cold-start: ") and "first translation, median of 3" in first
    assert whole.startswith("target cold-start-whole: ") and "start -> first snapshot" in whole
    printed = capsys.readouterr().out
    assert all(f"{step} " in printed for step in xds_bench.COLD_START_STEPS)
