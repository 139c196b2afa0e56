"""tools/make_submission.py: the checkpoint chosen by the quality targets, stages that resume, and the smoke profile
end to end for a class set of its own: the zip's report names those classes and no other, its model holds them,
its notebook ran."""
import csv
import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, cli_env, ddpm, write_class

sys.path.insert(0, str(ROOT / "tools"))
import make_results  # noqa: E402
import make_submission as sub  # noqa: E402

pypdf = pytest.importorskip("pypdf")

# every class of the course's data set: the smoke zip's report may name none of them
COURSE_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse", "Kangaroo",
                  "Lion", "Panda", "Tiger", "Zebra"]
SMOKE_CLASSES = {"Snow Owl": ((230, 230, 240), "checker"), "Red Fox": ((200, 80, 20), "vertical"),
                 "Moth": ((90, 70, 50), "horizontal")}


def result(step, share=0.95, novelty=0.9, copies=0.1):
    return {"step": step, "asked_class_share": share, "novelty": novelty, "copy_share": copies}


def test_the_latest_checkpoint_that_meets_every_target_is_chosen():
    results = [result(600), result(700), result(800, copies=0.5), result(900, share=0.8)]
    assert sub.choose_checkpoint(results)["step"] == 700


def test_without_a_checkpoint_that_meets_the_targets_the_nearest_is_chosen_and_its_misses_named():
    results = [result(600, share=0.5), result(700, share=0.85), result(800, share=0.8, copies=0.45)]
    chosen = sub.choose_checkpoint(results)
    assert chosen["step"] == 700
    assert sub.misses(chosen) == ["asked class 85% (target: at least 90%)"]
    assert sub.misses(result(1, novelty=0.5, copies=0.6)) == ["novelty 0.50 (target: at least 0.75)",
                                                              "copies 60% (target: at most 40%)"]


def test_of_two_equally_near_checkpoints_the_later_is_chosen():
    assert sub.choose_checkpoint([result(600, share=0.8), result(700, share=0.8)])["step"] == 700
    assert sub.shortfall(result(1)) == 0 and sub.shortfall(result(1, share=0.45)) == pytest.approx(0.5)


def test_a_learning_rate_run_stopped_by_non_finite_losses_is_summed_up_from_its_log(tmp_path):
    """Such a run ends with the trainer's error, before run_info.json: its log says how far it came."""
    with open(tmp_path / "log.csv", "w", newline="") as f:
        log = csv.DictWriter(f, ddpm.LOG_FIELDS)
        log.writeheader()
        for step, loss in [(10, 0.4), (20, 0.2), (30, float("nan"))]:
            log.writerow(dict.fromkeys(ddpm.LOG_FIELDS, loss) | {"step": step, "elapsed_s": step / 10})
    summary = make_results.lr_run_summary(tmp_path)
    assert summary["steps"] == 30 and summary["train_seconds"] == 3.0
    assert summary["lowest_loss"] == 0.2 and summary["lowest_loss_step"] == 20
    assert summary["final_loss"] == pytest.approx(0.3)


def test_the_seed_comes_from_the_roll_number():
    assert sub.seed_from("i21-0001") == sub.seed_from(" i21-0001 ")
    assert len({sub.seed_from(f"i21-{n:04d}") for n in range(50)}) == 50


def test_settings_become_train_flags():
    assert sub.as_flags({"base_channels": 64, "channel_mults": [1, 2, 2], "compile": True, "flip": False}) == [
        "--base-channels", "64", "--channel-mults", "1,2,2", "--compile", "--no-flip"]


def test_a_finished_stage_is_skipped_and_a_changed_or_missing_one_runs_again(tmp_path):
    stages, calls = sub.Stages(tmp_path / "stages.json"), []
    output = tmp_path / "out.txt"

    def work():
        calls.append(1)
        output.write_text("x")
        return {"steps": (1, 2)}

    assert stages.run("a", {"lr": 1e-3}, work, output) == {"steps": [1, 2]}
    assert sub.Stages(tmp_path / "stages.json").run("a", {"lr": 1e-3}, work, output) == {"steps": [1, 2]}
    assert len(calls) == 1
    stages.run("a", {"lr": 2e-4}, work, output)
    output.unlink()
    stages.run("a", {"lr": 2e-4}, work, output)
    assert len(calls) == 3


def test_an_interrupted_stage_keeps_its_time_and_is_not_done(tmp_path):
    stages = sub.Stages(tmp_path / "stages.json")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("train", {"seed": 1}, interrupted)
    record = json.loads((tmp_path / "stages.json").read_text())["train"]
    assert "result" not in record and record["seconds"] >= 0
    assert not stages.is_current("train", {"seed": 1}) and not stages.started_otherwise("train", {"seed": 1})
    assert stages.started_otherwise("train", {"seed": 2})


def test_a_missing_class_is_one_line_before_any_training(tmp_path):
    write_class(tmp_path / "data" / "Owl", (40, 90, 200), "checker", 4)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_submission.py"), "--data-dir",
                           str(tmp_path / "data"), "--classes", "Owl,Yeti", "--first-name", "Ada", "--roll-number",
                           "1", "--profile", "smoke", "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "Yeti" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "runs").exists()


def test_the_gpu_profile_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = sub.parse_args(["--data-dir", str(tmp_path), "--classes", "A", "--first-name", "A", "--roll-number", "1",
                           "--profile", "gpu"])
    with pytest.raises(sub.StageError, match="needs a CUDA GPU"):
        sub.make_plan(args)
    assert sub.parse_args(["--data-dir", ".", "--classes", "A", "--first-name", "A", "--roll-number", "1"]).profile \
        == "cpu"


def test_the_gpu_profile_recipe_parses_fits_and_steps_on_a_cpu():
    """Without a GPU, its recipe is checked as far as a CPU can: its flags parse into a Config whose U-Net fits its
    image size, and one training step of that U-Net runs (at batch 2, uncompiled)."""
    args = ddpm.build_parser().parse_args(["train", "--data-dir", "x", *sub.as_flags(sub.PROFILES["gpu"].train)])
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ddpm.Config) if hasattr(args, f.name)}
    assert given["compile"] and given["base_channels"] == 64
    cfg = ddpm.Config(**{**ddpm.device_defaults("cuda"), **given, "compile": False, "batch_size": 2})
    ddpm.check_image_size(cfg)
    trainer = ddpm.build_trainer(cfg, torch.device("cpu"), total_steps=10)
    x0 = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    assert ddpm.train_step(trainer, x0, torch.tensor([0, 1]), 0) is not None


def smoke_data(root):
    """A folder holding only the three classes of the smoke run; one has a photo fewer than asked (a warning)."""
    for name, (colour, pattern) in SMOKE_CLASSES.items():
        write_class(root / name, colour, pattern, 19 if name == "Moth" else 20)
    return root


def run_submission(data, out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "make_submission.py"), "--data-dir", str(data),
                           "--classes", ",".join(SMOKE_CLASSES), "--first-name", "Zoë", "--roll-number", "i21-0001",
                           "--profile", "smoke", "--out-dir", str(out), *extra],
                          capture_output=True, text=True, env=cli_env(), timeout=1200)


@pytest.fixture(scope="module")
def smoke_submission(tmp_path_factory):
    """The smoke profile run once without notes (stops before packing), then again allowing blank notes."""
    root = tmp_path_factory.mktemp("smoke")
    data, out = smoke_data(root / "my photos"), root / "submission"
    first = run_submission(data, out)
    first.zips = sorted((out / "dist").glob("*.zip")) if (out / "dist").exists() else []
    second = run_submission(data, out, "--allow-blank-notes")
    return out, first, second


def test_the_smoke_profile_stops_before_packing_while_notes_are_blank(smoke_submission):
    out, first, _ = smoke_submission
    assert first.returncode == 0, first.stderr[-2000:]
    assert "not packed yet" in first.stderr and "notes.md" in first.stderr
    plan = first.stderr[first.stderr.index("plan: "):first.stderr.index("== train")]
    assert "Snow Owl, Red Fox, Moth (59 photos)" in plan and f"seed {sub.seed_from('i21-0001')}" in plan
    assert all(f"  {stage} " in plan for stage in ("train", "lr", "evaluate", "results", "package"))
    assert "warning: class Moth has 19 usable images" in first.stderr
    assert (out / "Report.pdf").is_file() and (out / "notes.md").is_file()
    assert first.zips == []


def test_a_rerun_skips_every_finished_stage(smoke_submission):
    _, first, second = smoke_submission
    assert second.returncode == 0, second.stderr[-2000:]
    for stage in ("train", "lr", "evaluate", "choose", "results"):
        assert f"== {stage}\n" in first.stderr and f"== {stage}\n" not in second.stderr


def unpacked(out, tmp_path):
    archive = out / "dist" / "Zoë_i21-0001_04.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)
    return tmp_path / "Zoë_i21-0001_05"


def test_the_smoke_zip_holds_its_own_classes_and_no_other(smoke_submission, tmp_path):
    out, _, _ = smoke_submission
    folder = unpacked(out, tmp_path)
    text = "".join(page.extract_text() for page in pypdf.PdfReader(folder / "Report.pdf").pages)
    flat = " ".join(text.split())
    for name in SMOKE_CLASSES:
        assert name in flat, name
    others = (folder / "Readme.txt").read_text() + (folder / "test_single_sample.ipynb").read_text()
    for name in COURSE_CLASSES:
        assert name not in flat and name not in others, name
    model = torch.load(folder / "saved_models" / "ddpm_animals.pt", weights_only=True)
    assert model["class_names"] == list(SMOKE_CLASSES)
    metrics = json.loads((out / "results" / "metrics.json").read_text())
    assert metrics["classes"] == list(SMOKE_CLASSES) and metrics["chosen"]["step"] == model["step"]


def test_the_smoke_zip_notebook_ran_and_shows_images(smoke_submission, tmp_path):
    out, _, _ = smoke_submission
    notebook = json.loads((unpacked(out, tmp_path) / "test_single_sample.ipynb").read_text())
    images = [o for cell in notebook["cells"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    errors = [o for cell in notebook["cells"] for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert len(images) >= 2 and not errors
