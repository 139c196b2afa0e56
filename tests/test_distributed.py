"""torchrun: two CPU processes (gloo) share each global batch; rank 0 alone writes, and its checkpoint resumes
in a plain run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRIPT, TINY_TRAIN_FLAGS, cli_env, log_rows

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
# 12 images, 2 per process and step: a global batch of 4, so 3 passes are 9 steps.
FLAGS = [*TINY_TRAIN_FLAGS, "--epochs", "3", "--log-every", "1", "--save-every", "1", "--conditional", "--lr", "2e-3",
         "--warmup-steps", "2"]
FLAGS[FLAGS.index("--batch-size") + 1] = "2"


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    if TORCHRUN is None:
        pytest.skip("torchrun is not installed beside this Python")
    cwd = tmp_path_factory.mktemp("distributed")
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPT), "train",
                           "--data-dir", str(tiny_data), "--out-dir", str(cwd / "two"), *FLAGS],
                          cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return cwd / "two", done.stderr


def test_two_processes_count_the_global_batch_in_steps_and_images(two_process_run):
    folder, stderr = two_process_run
    rows = log_rows(folder / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert int(rows[-1]["images_seen"]) == 36 and float(rows[-1]["passes"]) == 3.0
    info = json.loads((folder / "run_info.json").read_text())
    assert (info["processes"], info["steps"], info["images_seen"]) == (2, 9, 36)
    assert "x 2 processes" in stderr


def test_only_rank_zero_writes_one_log_and_one_checkpoint_series(two_process_run):
    folder, stderr = two_process_run
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.json", "log.csv", "loss_curve.png",
                                                         "model.pt", "run_info.json", "samples"]
    assert sorted(p.name for p in (folder / "checkpoints").glob("step_*.pt")) == ["step_00000008.pt", "step_00000009.pt"]
    assert stderr.count("done: 9 steps") == 1
    assert not list(folder.rglob("*.tmp"))


def test_distributed_checkpoint_resumes_in_a_single_process(two_process_run, tmp_path):
    """A torchrun checkpoint continues as a plain run with the same global batch (2 x 2 = 4)."""
    folder = tmp_path / "two"
    shutil.copytree(two_process_run[0], folder)
    done = subprocess.run([sys.executable, str(SCRIPT), "train", "--out-dir", str(folder), "--resume",
                           "--epochs", "4", "--batch-size", "4"], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads((folder / "run_info.json").read_text())
    assert info["processes"] == 1 and info["steps"] == 12
    assert [int(r["step"]) for r in log_rows(folder / "log.csv")] == list(range(1, 13))
