"""tools/experiments/bench.py keeps working: its --quick run measures our model and writes nothing into the
repository, and a report it writes has the shape tools/experiments/make_benchmarks.py reads. No timing thresholds:
the numbers depend on the machine and on whatever else runs on it."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT / "tools" / "experiments"))

from make_benchmarks import pick  # noqa: E402


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "experiments" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def results_state():
    """Every file under results/ with its size and modification time, and git's view of the folder if it has one."""
    files = {str(p.relative_to(ROOT)): (p.stat().st_size, p.stat().st_mtime_ns) for p in RESULTS.rglob("*")
             if p.is_file()}
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "results"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = None
    return files, status


def test_quick_run_measures_our_model_and_writes_nothing():
    before = results_state()
    # from the repository root, where a default output path would land in results/; one thread, as conftest.py:
    # the machine is shared with long jobs, and two threads on two busy cores crawl
    command = [sys.executable, str(ROOT / "tools" / "experiments" / "bench.py"), "--quick", "--device", "cpu",
               "--threads", "1"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert results_state() == before, "bench.py --quick changed results/"
    assert "wrote" not in run.stdout
    training = re.findall(r"^ours\s+32\s+8\s+([\d.]+)\s", run.stdout, re.MULTILINE)
    assert len(training) == 1 and float(training[0]) > 0, run.stdout
    sampling = re.findall(r"^ddim\s+25\s+(\S+)\s+1\s+no\s+([\d.]+)", run.stdout, re.MULTILINE)
    assert [scale for scale, _ in sampling] == ["1", "3"] and all(float(s) > 0 for _, s in sampling), run.stdout


def test_out_writes_a_report_make_benchmarks_can_read(tmp_path, capsys):
    out = tmp_path / "bench.json"
    before = results_state()
    load_bench().main(["--quick", "--device", "cpu", "--sizes", "16", "--samplers", "ddpm,ddim2", "--ddpm-steps", "2",
                       "--guidance", "1", "--out", str(out)])
    assert results_state() == before
    report = json.loads(out.read_text())
    assert set(report) == {"settings", "hardware", "models", "training", "sampling"}
    assert report["models"] == {"ours": report["models"]["ours"]} and report["models"]["ours"]["parameters"] > 0
    assert {"cpu", "torch", "python", "torch_threads", "load_average_1m_at_start"} <= report["hardware"].keys()
    row = pick(report["training"], model="ours", image_size=16)
    for key in ("images_per_s", "step_seconds_median", "flops_per_image", "achieved_flops_per_s"):
        assert row[key] > 0, f"{key} = {row[key]}"
    ddpm_row = pick(report["sampling"], sampler="ddpm", batch=1, guidance=1.0)
    assert ddpm_row["steps"] == 1000 and ddpm_row["timed_steps"] == 2 and ddpm_row["extrapolated"]
    ddim_row = pick(report["sampling"], sampler="ddim", steps=2, batch=1, guidance=1.0)
    assert 0 < ddim_row["seconds_per_batch_min"] <= ddim_row["seconds_per_batch"] and not ddim_row["compiled"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_default_output_is_results_bench_device_json_and_none_when_quick():
    bench = load_bench()
    parse = bench.build_parser().parse_args
    assert bench.apply_defaults(parse([]), "cpu").out == str(RESULTS / "bench_cpu.json")
    assert bench.apply_defaults(parse([]), "cuda").out == str(RESULTS / "bench_cuda.json")
    assert bench.apply_defaults(parse(["--quick"]), "cpu").out is None
    assert bench.apply_defaults(parse(["--quick", "--out", "x.json"]), "cpu").out == "x.json"


def test_flags(capsys):
    parse = load_bench().build_parser().parse_args
    assert parse([]).compile is False and parse(["--compile"]).compile is True
    assert parse(["--samplers", "ddpm,ddim50"]).samplers == [("ddpm", 0), ("ddim", 50)]
    assert parse(["--samplers", ""]).samplers == []
    with pytest.raises(SystemExit):
        parse(["--samplers", "ddim0"])
    assert "samplers are ddpm or ddimN" in capsys.readouterr().err
