"""tools/experiments/make_benchmarks.py: BENCHMARKS.md is built from results/bench_*.json, and the committed copy
is current."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "experiments"))

import make_benchmarks  # noqa: E402
from test_no_other_implementation import OTHER  # noqa: E402


def test_committed_benchmarks_are_current():
    """Rebuild with python tools/experiments/make_benchmarks.py after changing report/benchmarks.md or
    results/bench_*.json."""
    assert make_benchmarks.OUT.read_text(encoding="utf-8") == make_benchmarks.render()


def test_check_fails_on_a_stale_file_and_passes_once_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(make_benchmarks, "OUT", tmp_path / "BENCHMARKS.md")
    (tmp_path / "BENCHMARKS.md").write_text("old numbers\n")
    assert make_benchmarks.main(["--check"]) == 1
    assert make_benchmarks.main([]) == 0
    assert make_benchmarks.main(["--check"]) == 0


def test_every_number_is_filled_in():
    text = make_benchmarks.render()
    assert "{" not in text and "!check" not in text and "!let" not in text
    assert "| CPU (" in text and "TFLOP/s" in text


def test_results_hold_only_our_own_measurements():
    """The bench files keep our rows only; the earlier side-by-side ratios live on as quoted prose."""
    for name in ("bench_cpu.json", "bench_cuda.json", "bench_cuda_compile.json"):
        report = json.loads((make_benchmarks.RESULTS / name).read_text())
        assert set(report["models"]) == {"ours"}, name
        assert {row["model"] for row in report["training"]} <= {"ours", "ours+compile"}, name
        assert set(report) == {"settings", "hardware", "models", "training", "sampling"}, name
        assert not OTHER.search(json.dumps(report)), f"{name} names another implementation"
    text = make_benchmarks.render()
    assert "## Earlier comparison with another implementation" in text
    for quoted in ("2026-12-02", "2026-11-27", "3.47", "1.35", "5.76"):
        assert quoted in text
