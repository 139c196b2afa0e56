"""torchrun: two CPU processes (gloo) train like one process with the same global batch and data order."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import SCRIPT, TINY_TRAIN_FLAGS, cli_env, log_rows

TORCHRUN = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
# The tiny run without augmentation (flips), so both runs see identical inputs; per-process batch 2.
FLAGS = [flag for flag in TINY_TRAIN_FLAGS] + ["--epochs", "3", "--log-every", "1", "--save-every", "1",
                                               "--no-flip", "--conditional", "--lr", "2e-3", "--warmup-steps", "2"]


def with_batch(flags, batch):
    flags = list(flags)
    flags[flags.index("--batch-size") + 1] = str(batch)
    return flags


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """(two-process run folder, one-process run folder) over the same data, global batch 4."""
    if TORCHRUN is None:
        pytest.skip("torchrun is not installed beside this Python")
    cwd = tmp_path_factory.mktemp("distributed")
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPT), "train",
                          "--data-dir", str(tiny_data), "--out-dir", str(cwd / "two"), *with_batch(FLAGS, 2)],
                         cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, str(SCRIPT), "train", "--data-dir", str(tiny_data),
                          "--out-dir", str(cwd / "one"), *with_batch(FLAGS, 4)],
                         cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    return cwd / "two", cwd / "one"


def test_two_process_loss_curve_matches_one_process_with_same_global_batch(runs):
    two, one = (log_rows(folder / "log.csv") for folder in runs)
    assert len(two) == len(one) == 9  # 12 images / global batch 4 = 3 steps per epoch, 3 epochs
    for a, b in zip(two, one):
        assert a["step"] == b["step"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)


def test_all_ranks_end_with_identical_weights(runs):
    info = json.loads((runs[0] / "run_info.json").read_text())
    assert info["processes"] == 2
    assert info["weight_checksums"][0] == info["weight_checksums"][1]


def test_only_rank_zero_writes_one_log_and_one_checkpoint_series(runs):
    two = runs[0]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in runs[1].iterdir())
    steps = sorted(p.name for p in (two / "checkpoints").glob("step_*.pt"))
    assert steps == ["step_00000008.pt", "step_00000009.pt"]
    assert not list(two.rglob("*.tmp"))


def test_distributed_checkpoint_resumes_in_a_single_process(runs, tmp_path):
    """A torchrun checkpoint continues as a plain run (world size 1) with the same global batch (2 x 2 = 4)."""
    folder = tmp_path / "two"
    shutil.copytree(runs[0], folder)
    done = subprocess.run([sys.executable, str(SCRIPT), "train", "--out-dir", str(folder), "--resume",
                           "--epochs", "4", "--batch-size", "4"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads((folder / "run_info.json").read_text())
    assert info["processes"] == 1 and info["steps"] == 12
