"""Training: the loss goes down, the run folder is complete, and a killed run resumes exactly."""
import json
import shutil
import signal

import pytest
import torch

import rollNumber_05 as ddpm
from conftest import TINY_TRAIN_FLAGS, TRAINED_RUN_STEPS, log_rows, tiny_config_values


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_data):
    """20 epochs (60 steps of 4 images) of a tiny unconditional model, in-process on the CPU."""
    out_dir = tmp_path_factory.mktemp("short_run") / "run"
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=20, lr=2e-3, warmup_steps=3))
    ddpm.train(cfg, out_dir, device="cpu")
    return out_dir


def test_training_lowers_the_loss(short_run):
    losses = [row["loss"] for row in ddpm.read_log(short_run / "log.csv")]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 0.7  # a fresh model predicts 0, so its loss is the noise variance, about 1
    assert last < 0.75 * first, f"loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("name", ["checkpoints/step_00000060.pt", "log.csv", "config.json", "model.pt",
                                  "loss_curve.png", "samples/final.png"])
def test_training_writes_the_run_folder(short_run, name):
    assert (short_run / name).is_file() and (short_run / name).stat().st_size > 0


def test_exported_model_loads_for_sampling(short_run):
    model, schedule, cfg = ddpm.load_model(short_run / "model.pt")
    assert cfg.image_size == 16 and cfg.classes == ["Crow", "Fox", "Owl"]
    assert schedule.timesteps == 50 and not model.training


def test_log_has_a_row_per_step_with_learning_rate_warmup(short_run):
    rows = ddpm.read_log(short_run / "log.csv")
    assert [row["step"] for row in rows] == list(range(1, 61))
    lrs = [row["lr"] for row in rows]  # the rate the next step will use
    assert lrs[0] == pytest.approx(2e-3 * 2 / 3)  # linear warm-up over 3 steps
    assert lrs[2] == pytest.approx(2e-3)  # the peak
    assert lrs[-1] == pytest.approx(2e-4, rel=1e-3)  # cosine decay ends at 10% of the peak


# --- resume (runs/A trained without a break, runs/B killed part-way and resumed; both through the CLI) -------

def test_killed_run_resumes_from_its_last_checkpoint(resumed_run):
    killed, left, resumed = resumed_run
    assert killed.rc == -signal.SIGKILL, f"run B ended on its own (exit {killed.rc}) before it was killed"
    assert left and left[-1] < f"step_{TRAINED_RUN_STEPS:08d}.pt", left
    assert resumed.rc == 0, resumed.stderr
    assert f"(step {int(left[-1][5:13])})" in resumed.stderr
    assert (resumed.out_dir / "model.pt").is_file()


def test_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(trained_run, resumed_run):
    assert trained_run.rc == 0, trained_run.stderr
    assert resumed_run[2].rc == 0, resumed_run[2].stderr
    a, b = log_rows(trained_run.out_dir / "log.csv"), log_rows(resumed_run[2].out_dir / "log.csv")
    assert [int(r["step"]) for r in a] == list(range(1, TRAINED_RUN_STEPS + 1))
    assert [int(r["step"]) for r in b] == [int(r["step"]) for r in a]
    for row_a, row_b in zip(a, b):
        assert float(row_b["loss"]) == pytest.approx(float(row_a["loss"]), rel=1e-5), f"step {row_a['step']}"
        assert float(row_b["lr"]) == pytest.approx(float(row_a["lr"]), rel=1e-6), f"step {row_a['step']}"


def test_resumed_run_ends_with_the_same_weights(trained_run, resumed_run):
    last = f"checkpoints/step_{TRAINED_RUN_STEPS:08d}.pt"
    a, b = ddpm.load_checkpoint(trained_run.out_dir / last), ddpm.load_checkpoint(resumed_run[2].out_dir / last)
    for kind in ("model", "ema"):
        for name, weight in a[kind].items():
            assert torch.allclose(b[kind][name], weight, rtol=1e-5, atol=1e-7), f"{kind} {name}"


# --- what train refuses --------------------------------------------------------------------------------------

@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared trained run (it has checkpoints), safe to start train on."""
    assert trained_run.rc == 0, trained_run.stderr
    return shutil.copytree(trained_run.out_dir, tmp_path / "run")


def main_stderr(argv, capsys):
    """Runs the CLI's main() in this process: (exit code, stderr)."""
    code = ddpm.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_training_into_a_folder_with_checkpoints_needs_resume(run_copy, tiny_data, capsys):
    before = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    code, err = main_stderr(["train", "--data-dir", tiny_data, "--out-dir", run_copy, *TINY_TRAIN_FLAGS,
                             "--epochs", "1"], capsys)
    assert code != 0
    assert "already holds a run; continue it with --resume or pick another --out-dir" in err
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == before


def test_resume_with_a_different_architecture_names_the_flag(run_copy, capsys):
    code, err = main_stderr(["train", "--out-dir", run_copy, "--resume", "--base-channels", "16"], capsys)
    assert code != 0
    assert "--base-channels 16 (checkpoint has 8)" in err


def test_resume_on_data_without_the_checkpoints_classes_is_refused(run_copy, make_dataset, capsys):
    other = make_dataset(classes={"Ant": ((0, 0, 0), "vertical"), "Bee": ((255, 255, 0), "horizontal")})
    code, err = main_stderr(["train", "--out-dir", run_copy, "--resume", "--data-dir", other], capsys)
    assert code != 0
    assert "no class folder named Crow, Fox, Owl" in err


def test_resume_without_checkpoints_is_a_user_error(tiny_config, tmp_path):
    with pytest.raises(ddpm.UserError, match="--resume: no checkpoint in"):
        ddpm.train(tiny_config(), tmp_path / "empty", device="cpu", resume=True)


# --- epochs are passes over the photos ---------------------------------------------------------------------

@pytest.mark.parametrize("epochs, batch, steps", [(2, 5, 5), (4, 16, 3)])  # ceil(2 x 12 / 5), ceil(4 x 12 / 16)
def test_epochs_are_passes_over_the_photos(tiny_data, tmp_path, monkeypatch, epochs, batch, steps):
    monkeypatch.setattr(ddpm, "write_samples", lambda *args, **kwargs: None)
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=epochs, batch_size=batch))
    ddpm.train(cfg, tmp_path / "run", device="cpu")
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert (info["steps"], info["images_seen"]) == (steps, steps * batch)
    assert info["passes"] == pytest.approx(steps * batch / 12) and info["passes"] >= epochs
    last = ddpm.read_log(tmp_path / "run" / "log.csv")[-1]
    assert (last["step"], last["images_seen"]) == (steps, steps * batch)


def test_ema_update_is_the_weighted_average_of_the_formula():
    model = torch.nn.Linear(3, 2)
    ema = ddpm.EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(model, step=1000)  # past the warm-up: the decay is 0.9
    for averaged, old, current in zip(ema.model.parameters(), before, model.parameters()):
        assert torch.allclose(averaged, 0.9 * old + 0.1 * current)


# --- progressive resolution --------------------------------------------------------------------------------------

def test_the_first_low_res_share_of_the_steps_train_at_half_size(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(ddpm, "write_samples", lambda *args, **kwargs: None)
    sizes, unet_forward = [], ddpm.UNet.forward

    def recording_forward(model, x, t, *args, **kwargs):
        sizes.append(x.shape[-1])
        return unet_forward(model, x, t, *args, **kwargs)
    monkeypatch.setattr(ddpm.UNet, "forward", recording_forward)
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=4, low_res_share=0.25))  # 12 steps
    ddpm.train(cfg, tmp_path / "run", device="cpu")
    assert sizes == [8] * 3 + [16] * 9  # one forward pass a step: 16 px photos, the first quarter pooled to 8 px
    model, _, loaded = ddpm.load_model(tmp_path / "run" / "model.pt")
    assert loaded.image_size == 16  # the model is a 16 px model: it samples at full size


def test_progress_of_a_resumed_run_counts_its_time_left_from_the_speed_since_resuming(monkeypatch, capsys):
    # resumed at step 900 of 1,000: 10 steps in 20 s leave 90 steps, 180 s; counted from step 0 it said 2 s
    clock = iter([100.0, 120.0])
    monkeypatch.setattr(ddpm.time, "time", lambda: next(clock))
    progress = ddpm.Progress(1000, "train", first=900)
    progress.update(910)
    assert "[00:20 done, 03:00 left]" in capsys.readouterr().err
