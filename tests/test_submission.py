"""tools/make_submission.py: the learning rate picked from the learning-rate runs, the checkpoint chosen by the
quality targets, stages that resume, and the smoke profile end to end for a class set of its own: the lr runs come
first and the main model trains at the rate they pick, the zip's report names those classes and no other, its model
holds them, its notebook ran."""
import csv
import dataclasses
import json
import subprocess
import sys
import zipfile

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
    return {"step": step, "judged_class_share": share, "novelty": novelty, "copy_share": copies}


def test_the_latest_checkpoint_that_meets_every_target_is_chosen():
    results = [result(600), result(700), result(800, copies=0.5), result(900, share=0.6)]
    assert sub.choose_checkpoint(results)["step"] == 700


def test_without_a_checkpoint_that_meets_the_targets_the_nearest_is_chosen_and_its_misses_named():
    results = [result(600, share=0.5), result(700, share=0.65), result(800, share=0.6, copies=0.45)]
    chosen = sub.choose_checkpoint(results)
    assert chosen["step"] == 700
    assert sub.misses(chosen) == ["judged class 65% (target: at least 70%)"]
    assert sub.misses(result(1, novelty=0.5, copies=0.6)) == ["novelty 0.50 (target: at least 0.75)",
                                                              "copies 60% (target: at most 40%)"]


def test_of_two_equally_near_checkpoints_the_later_is_chosen():
    assert sub.choose_checkpoint([result(600, share=0.6), result(700, share=0.6)])["step"] == 700
    assert sub.shortfall(result(1)) == 0 and sub.shortfall(result(1, share=0.35)) == pytest.approx(0.5)


def write_log(folder, losses):
    """A run's log.csv with one row per (step, loss), every loss column alike."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.csv", "w", newline="") as f:
        log = csv.DictWriter(f, ddpm.LOG_FIELDS)
        log.writeheader()
        for step, loss in losses:
            log.writerow(dict.fromkeys(ddpm.LOG_FIELDS, loss) | {"step": step, "elapsed_s": step / 10})


def test_a_learning_rate_run_stopped_by_non_finite_losses_is_summed_up_from_its_log(tmp_path):
    """Such a run ends with the trainer's error, before run_info.json: its log says how far it came."""
    write_log(tmp_path, [(10, 0.4), (20, 0.2), (30, float("nan"))])
    summary = make_results.lr_run_summary(tmp_path)
    assert summary["steps"] == 30 and summary["train_seconds"] == 3.0
    assert summary["final_loss"] == pytest.approx(0.3)


# evaluate's loss at its 10 values of t, for the repository's own model (results/metrics.json)
LOSS_PER_T = {"1": 0.99189, "112": 0.07358, "223": 0.02992, "334": 0.01479, "445": 0.00754, "556": 0.00374,
              "667": 0.00182, "778": 0.00098, "889": 0.00073, "1000": 0.00069}


def test_the_loss_past_t1_leaves_out_the_term_no_model_can_lower():
    """At t = 1 every model scores about 1.0: that term is 88% of evaluate's mean, which hides the rest."""
    mean = sum(LOSS_PER_T.values()) / 10
    assert mean == pytest.approx(0.11257, abs=1e-5) and LOSS_PER_T["1"] / 10 / mean == pytest.approx(0.881, abs=1e-3)
    assert sub.loss_past_t1(LOSS_PER_T) == pytest.approx(0.014866, abs=1e-6)
    assert sub.loss_past_t1({int(t): loss for t, loss in LOSS_PER_T.items()}) == sub.loss_past_t1(LOSS_PER_T)


def test_a_run_with_finite_losses_collapsed_when_its_loss_past_t1_is_over_half_of_predicting_no_noise():
    assert sub.failure(diverged=False, loss_past_t1=0.93) == "collapsed"
    assert sub.failure(diverged=False, loss_past_t1=0.51) == "collapsed"
    assert sub.failure(diverged=False, loss_past_t1=0.49) is None
    assert sub.failure(diverged=False, loss_past_t1=0.0149) is None
    assert sub.failure(diverged=True, loss_past_t1=None) == "diverged"


def lr_run(lr, loss, share=0.6, failed=None):
    """A learning-rate run with the numbers pick_lr reads."""
    return {"lr": lr, "denoising_loss_past_t1": loss, "judged_class_share": share, "failed": failed}


def test_the_default_rate_is_kept_when_no_other_is_ten_percent_better():
    runs = [lr_run(3e-3, 0.0232), lr_run(1e-3, 0.0250), lr_run(2e-4, 0.0410)]  # 3e-3: 7% lower
    assert sub.pick_lr(runs, default_lr=1e-3) == 1e-3


def test_a_clearly_better_rate_replaces_the_default_when_its_class_share_is_no_lower():
    runs = [lr_run(3e-3, 0.0220, share=0.60), lr_run(1e-3, 0.0250, share=0.60), lr_run(2e-4, 0.0410)]  # 12% lower
    assert sub.pick_lr(runs, default_lr=1e-3) == 3e-3
    runs[0]["judged_class_share"] = 0.58
    assert sub.pick_lr(runs, default_lr=1e-3) == 1e-3


def test_of_several_clearly_better_rates_the_lowest_loss_is_picked():
    runs = [lr_run(3e-3, 0.0180), lr_run(1e-3, 0.0250), lr_run(2e-4, 0.0150)]
    assert sub.pick_lr(runs, default_lr=1e-3) == 2e-4


def test_a_failed_run_is_never_picked():
    collapsed = lr_run(3e-3, 0.0100, failed="collapsed")  # a loss that would win, were the run not marked failed
    assert sub.pick_lr([collapsed, lr_run(1e-3, 0.0250), lr_run(2e-4, 0.0410)], default_lr=1e-3) == 1e-3
    diverged = lr_run(1e-3, None, failed="diverged")
    assert sub.pick_lr([collapsed, diverged, lr_run(2e-4, 0.0410)], default_lr=1e-3) == 2e-4


def test_if_the_default_run_failed_the_best_other_run_is_picked_at_any_margin():
    runs = [lr_run(3e-3, 0.0240, share=0.3), lr_run(1e-3, 0.93, failed="collapsed"), lr_run(2e-4, 0.0410)]
    assert sub.pick_lr(runs, default_lr=1e-3) == 3e-3


def test_if_every_run_failed_the_default_is_kept():
    runs = [lr_run(3e-3, None, failed="diverged"), lr_run(1e-3, 0.93, failed="collapsed"),
            lr_run(2e-4, 0.97, failed="collapsed")]
    assert sub.pick_lr(runs, default_lr=1e-3) == 1e-3


def test_every_profile_tries_its_default_rate_in_the_learning_rate_runs():
    for name, profile in sub.PROFILES.items():
        assert profile.train.get("lr", ddpm.Config.lr) in profile.lr_rates, name


def test_lr_results_record_each_run_its_failure_and_the_picked_rate(tmp_path):
    """The smoke profile's three rates: 3e-3 stopped on non-finite losses, 1e-3 (the default) trained, 2e-4 kept
    its losses finite but denoises barely better than predicting no noise. Evaluations are read from evals/."""
    args = sub.parse_args(["--data-dir", str(tmp_path), "--classes", "A,B", "--first-name", "A", "--roll-number",
                           "1", "--profile", "smoke", "--out-dir", str(tmp_path)])
    plan = sub.Plan(args, sub.PROFILES["smoke"], ddpm.Config(**sub.PROFILES["smoke"].train), [20, 20], seed=1)
    folders = {lr: folder for lr, folder, _ in plan.lr_runs}
    write_log(folders[3e-3], [(10, 0.4), (20, float("nan"))])
    for lr, per_t in [(1e-3, LOSS_PER_T), (2e-4, {"1": 1.0, "25": 0.95, "50": 0.91})]:
        write_log(folders[lr], [(10, 0.2), (20, 0.1)])
        (folders[lr] / "run_info.json").write_text(json.dumps({"steps": 20, "train_seconds": 2.0}))
        (folders[lr] / "evals").mkdir()
        (folders[lr] / "evals" / "model.json").write_text(json.dumps(
            {"step": 20, "denoising_loss": sum(per_t.values()) / len(per_t), "denoising_loss_per_t": per_t,
             "novelty": 1.0, "copy_share": 0.0, "asked_class_share": 0.5, "judged_class_share": 0.4}))
    sweep = sub.lr_results(plan, diverged=[3e-3])
    assert [(r["label"], r["failed"], r["is_default"]) for r in sweep["runs"]] == [
        ("3e-3", "diverged", False), ("1e-3", None, True), ("2e-4", "collapsed", False)]
    assert sweep["runs"][0]["denoising_loss_past_t1"] is None and sweep["runs"][0]["denoising_loss_per_t"] is None
    assert sweep["runs"][1]["denoising_loss_past_t1"] == pytest.approx(0.014866, abs=1e-6)
    assert sweep["runs"][2]["denoising_loss_past_t1"] == pytest.approx(0.93)
    assert {k: v for k, v in sweep.items() if k != "runs"} == {
        "epochs": 4, "default_lr": 1e-3, "default_label": "1e-3", "picked_lr": 1e-3, "picked_label": "1e-3",
        "pick_margin": 0.1, "collapse_loss": 0.5, "all_failed": False}


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
    stages.refuse_other_runs("train", {"seed": 1})  # the same settings: it continues
    with pytest.raises(ddpm.UserError, match="runs made with other classes, photos or settings"):
        stages.refuse_other_runs("train", {"seed": 2})
    assert stages.run("train", {"seed": 1}, lambda: "done") == "done"


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
    with pytest.raises(ddpm.UserError, match="needs a CUDA GPU"):
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
    plan = first.stderr[first.stderr.index("plan: "):first.stderr.index("== lr\n")]
    assert "Snow Owl, Red Fox, Moth (59 photos)" in plan and f"seed {sub.seed_from('i21-0001')}" in plan
    stages = [line.split()[0] for line in plan.splitlines()[1:-1]]
    assert stages == ["lr", "train", "evaluate", "choose", "results", "report", "package"]
    assert "warning: class Moth has 19 usable images" in first.stderr
    assert (out / "Report.pdf").is_file() and (out / "notes.md").is_file()
    assert first.zips == []


def test_a_rerun_skips_every_finished_stage(smoke_submission):
    _, first, second = smoke_submission
    assert second.returncode == 0, second.stderr[-2000:]
    for stage in ("lr", "lr-results", "train", "evaluate", "choose", "results"):
        assert f"== {stage}\n" in first.stderr and f"== {stage}\n" not in second.stderr


def test_the_smoke_main_model_trains_after_the_lr_runs_at_the_rate_they_picked(smoke_submission):
    out, first, _ = smoke_submission
    started = [line[3:] for line in first.stderr.splitlines() if line.startswith("== ")]
    assert started[:3] == ["lr", "lr-results", "train"]
    metrics = json.loads((out / "results" / "metrics.json").read_text())
    sweep = metrics["lr_sweep"]
    assert [r["label"] for r in sweep["runs"]] == ["3e-3", "1e-3", "2e-4"] and sweep["default_lr"] == 1e-3
    assert metrics["config"]["lr"] == sweep["picked_lr"] and sweep["picked_label"] in ("3e-3", "1e-3", "2e-4")
    assert sweep["all_failed"] == all(r["failed"] for r in sweep["runs"])
    for run in sweep["runs"]:
        assert run["failed"] in (None, "diverged", "collapsed")
        if run["failed"] != "diverged":
            assert run["denoising_loss_past_t1"] == pytest.approx(sub.loss_past_t1(run["denoising_loss_per_t"]))
    assert all(c["denoising_loss_past_t1"] > 0 for c in metrics["checkpoints"])


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
    notebook = json.loads((folder / "test_single_sample.ipynb").read_text())
    for cell in notebook["cells"]:  # the images' base64 text can hold any short name by chance
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("image/png", None)
    others = (folder / "Readme.txt").read_text() + json.dumps(notebook)
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
