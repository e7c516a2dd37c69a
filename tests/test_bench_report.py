"""bench/bench_report.py: the generated tables are rewritten, the hand-written tail is kept."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_report import HAND_WRITTEN, write_performance_md  # noqa: E402


def _result(case, step_s, rss_increase=1.0):
    return {"case": case, "shape": "short", "model": "smollm2", "median_step_s": step_s, "pairs_per_s": 4 / step_s,
            "tokens_per_step": 1000, "tokens_per_s": 1000 / step_s, "peak_rss_gb": 2.0, "step_rss_increase_gb": rss_increase}


def test_rewrites_tables_and_keeps_hand_written_tail(tmp_path):
    out = tmp_path / "performance.md"
    tail = "## Reading this run\n\nWritten by a person; 3.14 s/step.\n"
    out.write_text(f"# Performance\n\n| old table | 99.99 |\n\n{HAND_WRITTEN}\n\n{tail}", encoding="utf-8")

    results = [_result("slimepo-shared", 5.0), _result("slimepo-packed-fill", 4.0), _result("slimepo-naive", 8.0)]
    write_performance_md(results, out, machine="test machine", command="python bench/bench_step.py --all")

    text = out.read_text(encoding="utf-8")
    assert "99.99" not in text  # the old generated part is gone
    assert text.endswith(tail)  # the hand-written part survives, once
    assert text.count(HAND_WRITTEN) == 1 and text.count("Written by a person") == 1
    # 4/4.0 pairs/s over 4/5.0 pairs/s, and shared over naive: 8.0 / 5.0
    assert "| packed-fill vs shared (pairs/s) | 1.25x |" in text
    assert "| shared vs naive (pairs/s) | 1.60x |" in text

    write_performance_md(results, out, machine="test machine", command="python bench/bench_step.py --all")
    assert out.read_text(encoding="utf-8") == text  # rewriting again changes nothing


def test_without_marker_writes_only_the_generated_part(tmp_path):
    out = tmp_path / "performance.md"
    write_performance_md([_result("slimepo-shared", 5.0)], out, machine="m", command="c")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Performance") and text.rstrip().endswith(HAND_WRITTEN)
