"""The memory benchmark's pure parts: reading a process's resident memory, the table.
(`make bench` runs the whole of it; its rig is the reload benchmark's, tested there.)"""

from __future__ import annotations

import os

from bench import memory_bench


def test_resident_memory_of_this_process_is_read_and_a_gone_one_is_none():
    mib = memory_bench.rss_mib(os.getpid())
    assert mib is not None and 1 < mib < 100_000
    assert memory_bench.rss_mib(None) is None
    assert memory_bench.rss_mib(2**22 + 1) is None  # above pid_max's default: no such process


def test_the_table_has_a_row_per_policy_size_and_a_column_per_part(capsys):
    memory_bench.print_table(
        [{"routes": 1, "control plane": 80.0, "Envoy": 60.0, "dialer": None},
         {"routes": 10_000, "control plane": 400.0, "Envoy": 200.0, "dialer": 70.0}]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert "control plane" in lines[1] and "dialer" in lines[1]
    assert lines[2].split() == ["1", "80.0", "60.0", "-"]
    assert lines[3].split() == ["10,000", "400.0", "200.0", "70.0"]
