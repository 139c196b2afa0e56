"""Checkpoints: loading refuses damaged, foreign and code-carrying files; saving never leaves half a file."""
import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import rollNumber_05 as ddpm
from conftest import run_cli


class RunsCode:
    """Pickles as a call to `function(*args)`: what a crafted checkpoint does to run code when it is loaded."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared trained run: checkpoints/step_00000023.pt, step_00000024.pt and model.pt."""
    assert trained_run.rc == 0, trained_run.stderr
    return shutil.copytree(trained_run.out_dir, tmp_path / "run")


def test_truncated_checkpoint_is_not_readable(run_copy):
    path = run_copy / "model.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ddpm.UserError, match="not a readable checkpoint"):
        ddpm.load_checkpoint(path)


def test_text_file_is_not_a_readable_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(ddpm.UserError, match="not a readable checkpoint"):
        ddpm.load_checkpoint(path)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(ddpm.UserError, match="does not exist"):
        ddpm.load_checkpoint(tmp_path / "nowhere.pt")


def test_checkpoint_of_another_program_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ddpm.UserError, match="not a checkpoint of this script"):
        ddpm.load_checkpoint(tmp_path / "other.pt")


def test_latest_checkpoint_is_the_newest(run_copy):
    payload, path = ddpm.latest_checkpoint(run_copy)
    assert path.name == "step_00000024.pt" and payload["step"] == 24


def test_latest_checkpoint_falls_back_when_the_newest_is_damaged(run_copy, capsys):
    newest = run_copy / "checkpoints" / "step_00000024.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    payload, path = ddpm.latest_checkpoint(run_copy)
    assert path.name == "step_00000023.pt" and payload["step"] == 23
    assert "step_00000024.pt is not a readable checkpoint" in capsys.readouterr().err


def test_latest_checkpoint_with_all_damaged_is_a_user_error(run_copy):
    for path in (run_copy / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"")
    with pytest.raises(ddpm.UserError, match="no readable checkpoint"):
        ddpm.latest_checkpoint(run_copy)


def test_training_keeps_only_the_two_newest_checkpoints(run_copy):
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_00000023.pt", "step_00000024.pt"]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("function", ["os.system", "builtins.eval"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, function, zip_format):
    marker = tmp_path / "MARKER"
    code = {"os.system": RunsCode(os.system, f"touch {marker}"),
            "builtins.eval": RunsCode(eval, f"open({str(marker)!r}, 'w')")}[function]
    path = tmp_path / "crafted.pt"
    torch.save({"config": {}, "model": {"w": torch.zeros(1)}, "ema": code}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ddpm.UserError, match="could run code"):
        ddpm.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "crafted.pt"
    path.write_bytes(pickle.dumps({"config": {}, "ema": RunsCode(os.system, f"touch {marker}")}))
    with pytest.raises(ddpm.UserError):
        ddpm.load_checkpoint(path)
    assert not marker.exists()


def test_weights_that_do_not_fit_their_config_are_a_user_error(run_copy):
    path = run_copy / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["base_channels"] = 16  # the weights were trained with 8
    torch.save(payload, path)
    with pytest.raises(ddpm.UserError, match="checkpoint weights do not fit the model its config describes"):
        ddpm.load_model(path)


def test_resuming_weights_of_another_script_version_is_a_one_line_error(run_copy, tmp_path):
    for path in (run_copy / "checkpoints").glob("step_*.pt"):
        payload = torch.load(path, weights_only=True)
        for weights in (payload["model"], payload["ema"]):  # a layer this version of the U-Net does not have
            weights["head.weight"] = torch.zeros(3, 4, 3, 3)
        torch.save(payload, path)
    rc, out, err = run_cli("train", "--out-dir", run_copy, "--resume", cwd=tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: checkpoint weights do not fit the model")


def test_exported_model_holds_no_optimiser_state(run_copy):
    payload = ddpm.load_checkpoint(run_copy / "model.pt")
    assert set(payload) == {"config", "class_names", "step", "ema"}
    assert payload["class_names"] == ["Crow", "Fox", "Owl"] and payload["config"]["conditional"] is True


def test_save_atomically_replaces_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    ddpm.save_atomically({"step": 1}, path)
    ddpm.save_atomically({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_failed_save_leaves_old_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ddpm.save_atomically({"step": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ddpm.UserError, match="No space left on device.*previous checkpoint is intact"):
        ddpm.save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_interrupted_save_leaves_the_old_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ddpm.save_atomically({"step": 1}, path)

    def interrupted(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ddpm.save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_the_shipped_model_loads():
    model, schedule, cfg = ddpm.load_model(ddpm.DEFAULT_CHECKPOINT)
    assert cfg.classes == ["Dolphin", "Giraffe", "Panda", "Tiger", "Zebra"] and schedule.timesteps == 1000
    assert model(torch.zeros(1, 3, cfg.image_size, cfg.image_size), torch.tensor([999]), torch.tensor([0])).shape == \
        (1, 3, cfg.image_size, cfg.image_size)
