"""Faults a long run meets, and what the script promises after each: nothing lost, nothing unsafe.

- SIGKILL (no chance to save), Ctrl-C and SIGTERM, met by one run in turn at seeded random moments: after a kill
  --resume continues with at most --save-every steps lost; after Ctrl-C or SIGTERM the run has saved the step it
  reached, exited 0 and said how to resume; no checkpoint is ever half-written, and the run ends with every step
  done once.
- Non-finite losses: the update is skipped and counted; too many in a row stop the run with the last good state.
- Bad values on the command line: one line on stderr, exit 2, no traceback.

Subprocess runs use conftest's tiny flags (12 images, 3 steps an epoch) and go one at a time; the rest run
in-process through ddpm.train and ddpm.main.
"""
import dataclasses
import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import rollNumber_05 as ddpm
from conftest import TINY_TRAIN_FLAGS, finish_cli, log_rows, run_cli, start_cli, tiny_config_values

STEPS_PER_EPOCH = 3  # 12 images in batches of 4


def last_logged_step(out_dir):
    rows = log_rows(Path(out_dir) / "log.csv")
    return int(rows[-1]["step"]) if rows else 0


def checkpoint_names(out_dir):
    return sorted(p.name for p in ddpm.checkpoint_dir(out_dir).glob("step_*.pt"))


def newest_checkpoint_step(out_dir):
    names = checkpoint_names(out_dir)
    return int(names[-1][len("step_"):-len(".pt")]) if names else 0


def wait_for_step(proc, out_dir, step, timeout=180, gaps=None):
    """Polls log.csv until the running process has logged `step`; False if the process ended first. With a list
    `gaps`, appends at each poll how many logged steps the newest checkpoint lacks. The log is read before the
    folder, so a save between the two reads can only make a gap look smaller, never larger."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        logged = last_logged_step(out_dir)
        if gaps is not None:
            gaps.append(logged - newest_checkpoint_step(out_dir))
        if logged >= step:
            return True
        time.sleep(0.01)
    return False


def temp_files(out_dir):
    return sorted(str(p.relative_to(out_dir)) for p in Path(out_dir).rglob("*.tmp"))


def skip_final_files(monkeypatch):
    """In-process runs here need only their checkpoints and log.csv: leaving out finish_run's sample grid and loss
    curve saves seconds (and the torchvision and matplotlib imports). Checkpoints are all saved before it."""
    monkeypatch.setattr(ddpm, "finish_run", lambda *args: None)


def run_info_steps(out_dir):
    return json.loads((Path(out_dir) / "run_info.json").read_text())["steps"]


# --- a run that meets SIGKILL, Ctrl-C and SIGTERM at random moments ----------------------------------------

SAVE_EVERY = 3
FAULT_STEPS = 18 * STEPS_PER_EPOCH  # 54
FAULT_FLAGS = [*TINY_TRAIN_FLAGS, "--epochs", str(FAULT_STEPS // STEPS_PER_EPOCH), "--save-every", str(SAVE_EVERY),
               "--log-every", "1"]
FAULTS = [signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]

# What the run folder held just after one fault: the signal, the process's exit status and stderr, the last step
# in log.csv, the step --resume continues from, the newest step_*.pt and the one --resume loads, the *.tmp files
# in the folder (those left by earlier faults too), and the steps of model.pt and run_info.json (None where absent).
Fault = dataclasses.make_dataclass("Fault", ["signal", "rc", "stderr", "logged", "saved", "newest", "loaded",
                                             "temp_files", "model_step", "info_step"])
# The whole run: its faults, the last process's (rc, stdout, stderr), the folder, the gaps polled between the
# logged step and the newest checkpoint while it trained, and a line of counts.
Campaign = dataclasses.make_dataclass("Campaign", ["faults", "final", "out_dir", "gaps", "summary"])


def inject(proc, sig, out_dir):
    """Sends `sig` to the running process, waits for it to end and records what it left."""
    proc.send_signal(sig)
    rc, _, err = finish_cli(proc)
    payload, path = ddpm.latest_checkpoint(out_dir)
    model = out_dir / "model.pt"
    return Fault(sig.name, rc, err, last_logged_step(out_dir), payload["step"], checkpoint_names(out_dir)[-1],
                 path.name, temp_files(out_dir), ddpm.load_checkpoint(model)["step"] if model.exists() else None,
                 run_info_steps(out_dir) if (out_dir / "run_info.json").exists() else None)


@pytest.fixture(scope="module")
def faulted_run(tmp_path_factory, tiny_data):
    """One 54-step run (a checkpoint every 3 steps) that receives each signal in FAULTS in turn and is resumed
    with --resume after each.

    Each fault waits until the run has logged 4 to 8 steps past the step it resumed from (more than SAVE_EVERY, so
    past anything the process before it logged), then a further 0 to 0.2 s, so that it lands at a seeded random
    moment: mid-step, mid-log or mid-save. While waiting it polls the gap between the logged step and the newest
    checkpoint: the work a kill at that moment would lose."""
    cwd = tmp_path_factory.mktemp("faults")
    out_dir = cwd / "run"
    rng = random.Random(2024)
    faults, failures, gaps = [], [], []
    proc = start_cli("train", "--data-dir", tiny_data, "--out-dir", out_dir, *FAULT_FLAGS, cwd=cwd)
    resumed_from = 0
    for sig in FAULTS:
        if not wait_for_step(proc, out_dir, resumed_from + rng.randint(SAVE_EVERY + 1, 8), gaps=gaps):
            failures.append(finish_cli(proc))  # ended, or hung, before the fault
            break
        time.sleep(rng.uniform(0, 0.2))
        faults.append(inject(proc, sig, out_dir))
        resumed_from = faults[-1].saved
        proc = start_cli("train", "--out-dir", out_dir, "--resume", cwd=cwd)
    final = finish_cli(proc)
    if final[0] != 0:
        failures.append(final)
    each = "; ".join(f"{f.signal} at step {f.logged}, resumed from {f.saved}" for f in faults)
    summary = (f"faults injected: {len(faults)} ({each}); resumes: {len(faults)}; failures: {len(failures)}; "
               f"temp files left by kills: {len(faults[-1].temp_files) if faults else 0}; moments polled: {len(gaps)}, "
               f"largest gap {max(gaps, default=None)}")
    print(f"\n{summary}")
    return Campaign(faults, final, out_dir, gaps, summary)


def faults_of(run, name):
    return [f for f in run.faults if f.signal == name]


def test_every_fault_landed_while_the_run_was_training(faulted_run):
    assert [f.signal for f in faulted_run.faults] == [sig.name for sig in FAULTS], faulted_run.summary
    assert [f.rc for f in faulted_run.faults] == [-signal.SIGKILL if sig == signal.SIGKILL else 0 for sig in FAULTS]


def test_run_resumed_after_every_fault_finishes_every_step(faulted_run):
    rc, _, err = faulted_run.final
    assert rc == 0, f"{faulted_run.summary}\n{err}"
    assert "Traceback" not in err
    assert f"done: {FAULT_STEPS} steps" in err
    assert run_info_steps(faulted_run.out_dir) == FAULT_STEPS


def test_resumed_runs_log_every_step_once(faulted_run):
    steps = [int(row["step"]) for row in log_rows(faulted_run.out_dir / "log.csv")]
    assert steps == list(range(1, FAULT_STEPS + 1))


def test_each_kill_loses_at_most_save_every_steps(faulted_run):
    for kill in faults_of(faulted_run, "SIGKILL"):
        assert 0 <= kill.logged - kill.saved <= SAVE_EVERY, faulted_run.summary


def test_at_every_polled_moment_a_kill_would_lose_at_most_save_every_steps(faulted_run):
    assert len(faulted_run.gaps) > FAULT_STEPS // 2, faulted_run.summary  # polled through most of the run
    assert max(faulted_run.gaps) <= SAVE_EVERY, faulted_run.summary


def test_faults_never_leave_a_damaged_checkpoint(faulted_run):
    """The newest step_*.pt after each fault is the one --resume loads: never a half-written file to pass over."""
    assert [f.loaded for f in faulted_run.faults] == [f.newest for f in faulted_run.faults], faulted_run.summary


def test_resumed_runs_leave_no_temp_files(faulted_run):
    """Not even those a kill left mid-save: each resume removes them."""
    assert temp_files(faulted_run.out_dir) == [], faulted_run.summary


def test_resume_removes_temp_files_left_by_a_kill_mid_save(tiny_data, tmp_path, monkeypatch):
    out_dir = tmp_path / "run"
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=1, save_every=3))
    skip_final_files(monkeypatch)
    ddpm.train(cfg, out_dir, "cpu")
    # what SIGKILL inside save_atomically leaves: its .tmp file, partly written, beside the file it was to replace
    (out_dir / "checkpoints" / ".step_00000006.pt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (out_dir / ".model.pt.tmp").write_bytes(b"PK\x03\x04 half a model")
    ddpm.train(dataclasses.replace(cfg, epochs=2), out_dir, "cpu", resume=True, explicit=("epochs",))
    assert checkpoint_names(out_dir) == ["step_00000003.pt", "step_00000006.pt"]
    assert temp_files(out_dir) == []


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_stops_the_run_with_exit_0_and_says_how_to_resume(faulted_run, name):
    [stop] = faults_of(faulted_run, name)
    assert stop.rc == 0, stop.stderr
    assert "Traceback" not in stop.stderr
    assert f"{name} received: saving a checkpoint after this step" in stop.stderr
    assert stop.stderr.strip().splitlines()[-1] == (
        f"stopped at step {stop.logged}; checkpoint and model.pt saved. Continue with: python rollNumber_05.py "
        f"train --out-dir {faulted_run.out_dir} --resume")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_at_the_last_logged_step(faulted_run, name):
    [stop] = faults_of(faulted_run, name)
    assert (stop.saved, stop.newest) == (stop.logged, f"step_{stop.logged:08d}.pt")
    before = faulted_run.faults[faulted_run.faults.index(stop) - 1]
    assert set(stop.temp_files) <= set(before.temp_files)  # none new; a kill before it may have left one


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_exports_model_pt_at_the_last_logged_step(faulted_run, name):
    [stop] = faults_of(faulted_run, name)
    assert stop.model_step == stop.logged


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_writes_run_info_for_the_steps_done(faulted_run, name):
    """A run stopped for good (a time limit, say) still says what it cost, for the report."""
    [stop] = faults_of(faulted_run, name)
    assert stop.info_step == stop.logged


# --- non-finite losses ------------------------------------------------------------------------------------

def nan_losses_at(monkeypatch, bad_calls):
    """Makes the training_loss calls numbered in `bad_calls` (from 0, one a step) return NaN losses.
    Returns the list that receives, at every call, a copy of all the raw weights as they were before the step."""
    real = ddpm.training_loss
    weights = []

    def nan_sometimes(model, *args, **kwargs):
        weights.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        losses, t = real(model, *args, **kwargs)  # drawn as usual, so the random stream is the same
        return (losses * float("nan") if len(weights) - 1 in bad_calls else losses), t
    monkeypatch.setattr(ddpm, "training_loss", nan_sometimes)
    return weights


def flat_weights(state_dict, model_cfg):
    model = ddpm.build_model(model_cfg, state_dict)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


NAN_STEPS = 4 * STEPS_PER_EPOCH  # 12
NAN_CALLS = {3, 7, 11}  # steps 4, 8 and 12, the last


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, tiny_data):
    """12 in-process steps of which steps 4, 8 and 12 have NaN losses: (weights before each step, out_dir, cfg)."""
    out_dir = tmp_path_factory.mktemp("nan") / "run"
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=NAN_STEPS // STEPS_PER_EPOCH))
    with pytest.MonkeyPatch.context() as monkeypatch:
        weights = nan_losses_at(monkeypatch, NAN_CALLS)
        skip_final_files(monkeypatch)
        ddpm.train(cfg, out_dir, "cpu")
    return weights, out_dir, dataclasses.replace(cfg, classes=["Crow", "Fox", "Owl"])


def test_non_finite_loss_leaves_the_weights_unchanged(nan_run):
    weights, out_dir, cfg = nan_run
    final = ddpm.load_checkpoint(out_dir / "checkpoints" / f"step_{NAN_STEPS:08d}.pt")
    weights = weights + [flat_weights(final["model"], cfg)]  # after the last step
    assert len(weights) == NAN_STEPS + 1
    changed = [not torch.equal(weights[i + 1], weights[i]) for i in range(NAN_STEPS)]
    assert changed == [i not in NAN_CALLS for i in range(NAN_STEPS)]


def test_non_finite_steps_are_counted_in_the_log(nan_run):
    rows = log_rows(nan_run[1] / "log.csv")
    assert [(int(r["step"]), int(r["bad_steps"])) for r in rows][:9] == [
        (1, 0), (2, 0), (3, 0), (5, 1), (6, 1), (7, 1), (9, 2), (10, 2), (11, 2)]  # a skipped step writes no row


def test_non_finite_steps_are_counted_in_the_checkpoint(nan_run):
    final = ddpm.load_checkpoint(nan_run[1] / "checkpoints" / f"step_{NAN_STEPS:08d}.pt")
    assert (final["step"], final["bad_steps"]) == (NAN_STEPS, 3)


def test_a_non_finite_last_step_is_counted_in_the_log(nan_run):
    last = ddpm.read_log(nan_run[1] / "log.csv")[-1]  # every row, with or without a loss
    assert (last["step"], last["bad_steps"]) == (NAN_STEPS, 3)


@pytest.fixture(scope="module")
def run_of_nans(tmp_path_factory, tiny_data):
    """In-process: 4 good steps, then NaN at every step, with --max-bad-steps 3.
    Returns (the UserError raised, weights before each step, out_dir, cfg)."""
    out_dir = tmp_path_factory.mktemp("nans") / "run"
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=4, max_bad_steps=3))
    with pytest.MonkeyPatch.context() as monkeypatch:
        weights = nan_losses_at(monkeypatch, set(range(4, NAN_STEPS)))
        with pytest.raises(ddpm.UserError) as stopped:
            ddpm.train(cfg, out_dir, "cpu")
    return stopped.value, weights, out_dir, dataclasses.replace(cfg, classes=["Crow", "Fox", "Owl"])


def test_too_many_non_finite_losses_in_a_row_stop_the_run_with_a_user_error(run_of_nans):
    error, weights, out_dir, _ = run_of_nans
    assert len(weights) == 7  # 4 good steps and 3 bad ones, then no more
    assert str(error) == (f"3 non-finite losses in a row at step 7; saved the last good state in "
                          f"{out_dir / 'checkpoints'}; lower --lr")


def test_run_stopped_by_non_finite_losses_saves_the_last_good_weights(run_of_nans):
    _, weights, out_dir, cfg = run_of_nans
    assert checkpoint_names(out_dir) == ["step_00000007.pt"]  # 7 steps taken, the last 3 skipped
    saved = ddpm.load_checkpoint(out_dir / "checkpoints" / "step_00000007.pt")
    assert saved["bad_steps"] == 3
    assert torch.equal(flat_weights(saved["model"], cfg), weights[4])  # as after the 4th, last good, step


# --- bad values on the command line (those test_cli.py does not try) ----------------------------------------

TRAIN = ["train", "--data-dir", "{data}", "--out-dir", "{tmp}/run", *TINY_TRAIN_FLAGS, "--epochs", "1"]
SAVE_EVERY_ERROR = "argument --save-every: must be a positive whole number, got"

BAD_VALUES = {
    "epochs_negative": ([*TRAIN, "--epochs", "-3"], "argument --epochs: must be a positive whole number, got -3"),
    "epochs_not_a_number": ([*TRAIN, "--epochs", "abc"], "argument --epochs: must be a positive whole number, got abc"),
    "batch_size_zero": ([*TRAIN, "--batch-size", "0"], "argument --batch-size: must be a positive whole number, got 0"),
    "lr_nan": ([*TRAIN, "--lr", "nan"], "argument --lr: must be a positive number, got nan"),
    "channel_mults_zero": ([*TRAIN, "--channel-mults", "1,0"], "must be comma-separated positive whole numbers, got 1,0"),
    "image_size_below_8": ([*TRAIN, "--image-size", "4"],
                           "--image-size 4 does not fit this U-Net: it must be at least 8 and a multiple of 4 (half size "
                           "first, then patches of 1, then 1 halvings); try 8"),
    "image_size_not_divisible_by_a_deeper_unet": (
        [*TRAIN, "--image-size", "12", "--channel-mults", "1,2,2,2"],
        "--image-size 12 does not fit this U-Net: it must be at least 8 and a multiple of 16 (half size first, then "
        "patches of 1, then 3 halvings); try 16"),
    "save_every_word": ([*TRAIN, "--save-every", "abc"], f"{SAVE_EVERY_ERROR} abc"),
    "save_every_zero": ([*TRAIN, "--save-every", "0"], f"{SAVE_EVERY_ERROR} 0"),
    "save_every_minutes": ([*TRAIN, "--save-every", "5m"], f"{SAVE_EVERY_ERROR} 5m"),
    "save_every_negative": ([*TRAIN, "--save-every", "-5"], f"{SAVE_EVERY_ERROR} -5"),
    "sample_steps_zero": (["sample", "--steps", "0"], "argument --steps: must be a positive whole number, got 0"),
    "sample_num_samples_zero": (["sample", "--num-samples", "0"],
                                "argument --num-samples: must be a positive whole number, got 0"),
    "sample_guidance_zero": (["sample", "--guidance", "0"], "argument --guidance: must be a positive number, got 0"),
    "evaluate_steps_negative": (["evaluate", "--data-dir", "{data}", "--steps", "-2"],
                                "argument --steps: must be a positive whole number, got -2"),
    "evaluate_unknown_sampler": (["evaluate", "--data-dir", "{data}", "--sampler", "euler"],
                                 "argument --sampler: invalid choice: 'euler'"),
}


def main_result(argv, capsys):
    """ddpm.main(argv) in this process, as `sys.exit(main())` runs it: (exit code, stderr)."""
    try:
        code = ddpm.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse exits on bad flags
        code = stop.code
    return code, capsys.readouterr().err


def assert_fails_with_one_line(code, err, words):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert words in err


@pytest.mark.parametrize("name", BAD_VALUES)
def test_bad_value_fails_with_one_line_and_exit_2(name, tiny_data, tmp_path, capsys):
    args, words = BAD_VALUES[name]
    code, err = main_result([a.format(data=tiny_data, tmp=tmp_path) for a in args], capsys)
    assert_fails_with_one_line(code, err, words)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_invalid_weight_decay_fails_with_one_line_and_exit_2(value, tiny_data, tmp_path, capsys):
    code, err = main_result([*(a.format(data=tiny_data, tmp=tmp_path) for a in TRAIN), "--weight-decay", value],
                            capsys)
    assert_fails_with_one_line(code, err, "--weight-decay")


def test_bad_save_every_in_a_fresh_process_fails_with_one_line_and_exit_2(tiny_data, tmp_path):
    rc, out, err = run_cli("train", "--data-dir", tiny_data, "--out-dir", tmp_path / "run", *TINY_TRAIN_FLAGS,
                           "--save-every=-5", cwd=tmp_path)
    assert_fails_with_one_line(rc, err, f"error: {SAVE_EVERY_ERROR} -5")
    assert out == ""
    assert not (tmp_path / "run").exists()
