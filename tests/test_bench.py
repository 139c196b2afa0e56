"""tools/bench.py keeps working: its --quick run finishes and writes a complete JSON report. No timing thresholds:
the numbers depend on the machine and on whatever else runs on it."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_a_complete_report(tmp_path):
    pytest.importorskip("diffusers", reason="benchmark-only dependency: pip install -r requirements-dev.txt")
    out = tmp_path / "b.json"
    # one thread, as conftest.py: the machine is shared with long jobs, and two threads on two busy cores crawl
    command = [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--device", "cpu", "--threads", "1",
               "--out", str(out)]
    subprocess.run(command, check=True, timeout=240, cwd=tmp_path)
    report = json.loads(out.read_text())

    assert {"settings", "hardware", "models", "training", "ours_over_peer", "sampling"} <= report.keys()
    ours, peer = report["models"]["ours"]["parameters"], report["models"]["peer"]["parameters"]
    assert abs(peer / ours - 1) <= 0.10, "the peer must match our parameter count within 10%"
    assert {row["model"] for row in report["training"]} == {"ours", "peer"}
    for row in report["training"]:
        for key in ("images_per_s", "step_seconds_median", "flops_per_image", "achieved_flops_per_s"):
            assert row[key] > 0, f"{row['model']} {key} = {row[key]}"
        assert row["peak_memory_bytes"] >= 0
    assert all(ratio > 0 for ratio in report["ours_over_peer"].values())
    assert {(row["sampler"], row["steps"], row["guidance"]) for row in report["sampling"]} == \
        {("ddpm", 1000, 1.0), ("ddim", 25, 1.0), ("ddpm", 1000, 3.0), ("ddim", 25, 3.0)}
    assert all(0 < row["seconds_per_batch_min"] <= row["seconds_per_batch"] for row in report["sampling"])
    assert not any(row["cuda_graph"] for row in report["sampling"]), "CUDA graphs are for CUDA devices only"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_compile_flag_takes_the_trainers_mode_or_named_modes(capsys):
    parse = load_bench().build_parser().parse_args
    assert parse([]).compile is None
    assert parse(["--compile"]).compile == ["trainer"]
    assert parse(["--compile", "--quick"]).compile == ["trainer"]
    assert parse(["--compile", "default,reduce-overhead"]).compile == ["default", "reduce-overhead"]
    with pytest.raises(SystemExit):
        parse(["--compile", "fastest"])
    assert "compile modes are some of" in capsys.readouterr().err
