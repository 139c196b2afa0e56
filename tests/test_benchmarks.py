"""tools/make_benchmarks.py: BENCHMARKS.md is built from results/bench_*.json, and the committed copy is current."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_benchmarks  # noqa: E402


def test_committed_benchmarks_are_current():
    """Rebuild with python tools/make_benchmarks.py after changing report/benchmarks.md or results/bench_*.json."""
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
