"""A student's own submission from their photos, in one command: model, results, report and zip.

    python tools/make_submission.py --data-dir PATH --classes A,B,C,D,E --first-name NAME --roll-number ROLL \
        [--profile auto|cpu|gpu|smoke] [--out-dir DIR]

The stages, in order (the runs go to DIR/runs/submission/; DIR is --out-dir, default this repository):

  lr          the learning-rate experiment: the profile's recipe, shortened, at three peak rates
  lr-results  each learning-rate run's loss and final model, tested as the checkpoints are; the rate picked (pick_lr)
  train       the main model at the picked rate through its whole schedule, a checkpoint kept every tenth of it
  evaluate    every checkpoint of the full-resolution phase: novelty, copy share, asked-class share, loss
  choose      the latest checkpoint that meets the targets (or the nearest) -> DIR/saved_models/ddpm_animals.pt
  results     every figure and number of the report -> DIR/results/
  report      DIR/notes.md (one blank per section, for your own reading) and DIR/Report.pdf
  package     DIR/dist/NAME_ROLL_04.zip (tools/package_submission.py), once notes.md has no blank left

It first prints its plan with a time estimate per stage, from the training speed it measures here. A rerun skips
every stage finished with the same settings, and an interrupted training continues from its last checkpoint: after
writing notes.md, a rerun only rebuilds the report and the zip.
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import rollNumber_05 as ddpm  # noqa: E402
import make_results as figures  # noqa: E402

SCRIPT = ROOT / "rollNumber_05.py"
# Early stopping before memorisation: the latest checkpoint whose samples show the asked class, sit about as far
# from the photos as a new photo would, and copy few of them (Favero et al. 2025: copying sets in later the more
# photos there are; the copy test is the photos' own leave-one-out distance).
# The class target, 70% of the samples named their class by evaluate's judges: the repository's own model scores
# 88% (a person names 90% of its samples), five brown and grey animals 39-49% (a person 44-56%), with 4-6 points
# between draws (results/ablation_64px). It sits above what the judges score on new real photos (51-72%): guided
# samples are more typical of their class than photos are.
TARGETS = {"judged_class_share": 0.7, "novelty": 0.75, "copy_share": 0.4}
AT_MOST = {"copy_share"}  # the other targets are lower bounds
TARGET_NAMES = {"judged_class_share": "judged class", "novelty": "novelty", "copy_share": "copies"}
GUIDANCE_SCALES = (1.0, 2.0, 3.0, 5.0)
# Another learning rate replaces the default only if its loss is this much lower: the default is the rate the recipe
# was tested at through its whole schedule, and a small lead after a shortened run need not last that long.
PICK_MARGIN = 0.1
# Predicting no noise at all scores 1.0 (the noise's variance) at every t: a run above half of that has not learnt
# to denoise, although its losses stayed finite (it collapsed).
COLLAPSE_LOSS = 0.5


@dataclass(frozen=True)
class Profile:
    device: str
    train: dict = field(default_factory=dict)  # `train` flags beyond its defaults, by Config field name
    lr_rates: tuple = (3e-3, 1e-3, 2e-4)       # the default rate and one three to five times either side
    lr_epochs: int = 400                        # the learning-rate runs: the recipe shortened to this many passes
    checkpoints: int = 10                       # checkpoints kept, evenly spaced through the schedule
    eval_samples: int = 100                     # samples per checkpoint for novelty, copies and class share
    lr_eval_samples: int = 50
    figure_samples: int = 6                     # per class in samples.png


PROFILES = {
    # 64 px in about 50 minutes on a 2-core CPU (results/cpu_64px); the rest of the command about 40 more
    "cpu": Profile(device="cpu"),
    # the shipped GPU model's U-Net and batch with the CPU recipe's options; 2,500 steps of 256 for 99 photos
    "gpu": Profile(device="cuda", train={"base_channels": 64, "channel_mults": [1, 2, 2, 2], "dropout": 0.1,
                                         "lr": 5e-4, "epochs": 6464, "compile": True},
                   lr_rates=(1.5e-3, 5e-4, 1.5e-4), lr_epochs=2000, eval_samples=200, lr_eval_samples=100,
                   figure_samples=8),
    # seconds on a CPU: checks that every stage runs, says nothing about quality
    "smoke": Profile(device="cpu", train={"image_size": 16, "patch_size": 1, "base_channels": 8,
                                          "channel_mults": [1, 2], "attention_resolutions": [8],
                                          "timesteps": 50, "batch_size": 8, "epochs": 12, "sample_every": 0},
                     lr_epochs=4, checkpoints=4, eval_samples=10, lr_eval_samples=5, figure_samples=2),
}


# --- Settings: the profile's recipe for this student's data ---------------------------------------------------

def seed_from(roll_number):
    """A training seed from the roll number: the same student gets the same model, two students different ones."""
    return int(hashlib.sha256(roll_number.strip().encode()).hexdigest(), 16) % 1_000_000


def as_flags(settings):
    """{"base_channels": 64, "compile": True, "channel_mults": [1, 2]} -> ["--base-channels", "64", "--compile",
    "--channel-mults", "1,2"]."""
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return flags


@dataclass
class Plan:
    """Everything the stages need: the student's choices, the profile and the numbers derived from the data."""
    args: argparse.Namespace
    profile: Profile
    cfg: ddpm.Config       # the main run's settings, as `train` will see them (lr: the default until picked)
    photos_per_class: list
    seed: int

    @property
    def runs(self):
        return self.args.out_dir / "runs" / "submission"

    @property
    def main_run(self):
        return self.runs / "main"

    @property
    def total_steps(self):
        return math.ceil(self.cfg.epochs * sum(self.photos_per_class) / self.cfg.batch_size)

    @property
    def main_settings(self):
        """The main run's `train` flags: its learning rate, and every checkpoint kept for the choice after it."""
        return {**self.profile.train, "seed": self.seed, "lr": self.cfg.lr,
                "save_every": max(1, math.ceil(self.total_steps / self.profile.checkpoints)), "keep_checkpoints": 0}

    @functools.cached_property
    def judges(self):
        """evaluate's class judges with their accuracy on photos, trained once and shared by every evaluation."""
        images, labels = ddpm.training_images(self.args.data_dir, self.cfg)
        return ddpm.class_judges(images, labels, self.cfg.num_classes, self.seed)

    @property
    def lr_runs(self):
        """(rate, folder, `train` flags) of each learning-rate run, highest rate first."""
        return [(lr, self.runs / f"lr_{figures.lr_label(lr)}",
                 {**self.profile.train, "seed": self.seed, "lr": lr, "epochs": self.profile.lr_epochs,
                  "sample_every": 0})
                for lr in sorted(self.profile.lr_rates, reverse=True)]


def make_plan(args):
    profile = PROFILES[args.profile]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise ddpm.UserError("--profile gpu needs a CUDA GPU (none found); use --profile cpu")
    cfg = ddpm.Config(**{**ddpm.device_defaults(profile.device), **profile.train, "data_dir": str(args.data_dir)})
    data = ddpm.AnimalPhotos(args.data_dir, args.classes, len(args.classes), cfg.images_per_class, cfg.image_size,
                             flip=False)  # reads every photo now: a bad folder stops here, not after an hour
    photos_per_class = [int((data.labels == k).sum()) for k in range(len(data.class_names))]
    cfg = dataclasses.replace(cfg, classes=data.class_names, num_classes=len(data.class_names))
    ddpm.check_image_size(cfg)
    assert cfg.lr in profile.lr_rates, "the learning-rate runs must try the default rate, to compare with it"
    return Plan(args, profile, cfg, photos_per_class, seed_from(args.roll_number))


# --- The time estimate: this machine's training speed, measured in its first seconds ---------------------------

def seconds_per_image(cfg, device, size):
    """Seconds a training step spends per image at `size` px: three steps timed after two warm-up ones (the first
    steps at a new size are slow while the convolution library picks its kernels)."""
    trainer = ddpm.build_trainer(dataclasses.replace(cfg, compile=False), device, total_steps=5)
    x0 = torch.randn(cfg.batch_size, 3, size, size, device=device)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    for step in range(2):
        ddpm.train_step(trainer, x0, labels, step)
    start = time.time()
    for step in range(2, 5):
        ddpm.train_step(trainer, x0, labels, step)
    return (time.time() - start) / (3 * cfg.batch_size)


def estimate(plan):
    """Seconds per stage. A guided sampling step runs the network twice without gradients: about two thirds of what
    a training step (forward and backward) spends per image. The loss on the photos, a tenth of an evaluation, the
    nearest-photo search and the class judges (trained once, about 2 minutes on a 2-core CPU) are left out."""
    cfg, profile, device = plan.cfg, plan.profile, torch.device(plan.profile.device)
    full = seconds_per_image(cfg, device, cfg.image_size)
    half = seconds_per_image(cfg, device, cfg.image_size // 2) if cfg.low_res_share else full
    one_pass = sum(plan.photos_per_class) * (cfg.low_res_share * half + (1 - cfg.low_res_share) * full)
    sample = 50 * 2 / 3 * full  # one DDIM-50 sample
    # results: DDPM through all T steps once per class and for the reverse process, DDIM-50 for the other figures
    figure_samples = ((1 + cfg.num_classes) * cfg.timesteps / 50 + 8
                      + cfg.num_classes * (profile.figure_samples + len(GUIDANCE_SCALES) + 2))
    return {"lr": len(profile.lr_rates) * (profile.lr_epochs * one_pass + profile.lr_eval_samples * sample),
            "train": cfg.epochs * one_pass,
            "evaluate": profile.checkpoints * (1 - cfg.low_res_share) * profile.eval_samples * sample,
            "choose": 1, "results": figure_samples * sample, "report": 30,
            "package": cfg.num_classes * sample + 60}  # the notebook draws one sample per class


def print_plan(plan, seconds, done):
    cfg = plan.cfg
    print(f"plan: {', '.join(cfg.classes)} ({sum(plan.photos_per_class)} photos), profile {plan.args.profile} on "
          f"{plan.profile.device}, {cfg.image_size} px, {plan.total_steps:,} steps of {cfg.batch_size} at the rate the "
          f"lr runs pick (default {figures.lr_label(cfg.lr)}), seed {plan.seed} (from the roll number) -> "
          f"{plan.args.out_dir}", file=sys.stderr)
    for name, s in seconds.items():
        print(f"  {name:9s} {'done, skipped' if name in done else f'about {ddpm.format_seconds(s)}'}", file=sys.stderr)
    left = sum(s for name, s in seconds.items() if name not in done)
    print(f"  in all about {ddpm.format_seconds(left)} from now", file=sys.stderr)


# --- Stages: each records its settings and time in runs/submission/stages.json when it finishes ------------------

def as_json(value):
    """value as it reads back from stages.json (tuples become lists, number keys strings), so that settings compare
    equal across runs."""
    return json.loads(json.dumps(value))


class Stages:
    """runs/submission/stages.json: for each stage its settings, the seconds spent on it (summed over interrupted
    attempts) and, once finished, its result."""

    def __init__(self, path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}

    def refuse_other_runs(self, name, settings):
        """Stops before a stage whose runs here were started with other data or settings: they would mix."""
        if name in self.done and self.done[name]["settings"] != as_json(settings):
            raise ddpm.UserError(f"{self.path.parent} holds runs made with other classes, photos or settings; use "
                                 f"another --out-dir, or delete {self.path.parent} to start again")

    def run(self, name, settings, work, output=None):
        """work()'s result, kept for the stages after it; work() is skipped if it finished with these settings and
        its output is there."""
        settings, record = as_json(settings), self.done.get(name, {})
        if "result" in record and record["settings"] == settings and (output is None or output.exists()):
            return record["result"]
        print(f"== {name}", file=sys.stderr)
        spent = record.get("seconds", 0) if record.get("settings") == settings else 0
        self.done[name] = record = {"settings": settings, "seconds": spent}
        start = time.time()
        try:
            record["result"] = as_json(work())
        finally:
            record["seconds"] = round(spent + time.time() - start, 1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.done, indent=2))
        return record["result"]


def run_training(plan, out_dir, settings):
    """`train` in a child process, continued with --resume where a checkpoint exists; returns its exit code. Ctrl-C
    reaches the child too, which saves a checkpoint: wait for it before stopping, or the save would be cut off."""
    command = [sys.executable, str(SCRIPT), "train", "--data-dir", str(plan.args.data_dir), "--classes",
               ",".join(plan.cfg.classes), "--device", plan.profile.device, "--out-dir", str(out_dir),
               *as_flags(settings), *["--resume"] * any(ddpm.checkpoint_dir(out_dir).glob("step_*.pt"))]
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def train_main(plan):
    code = run_training(plan, plan.main_run, plan.main_settings)
    if code or not (plan.main_run / "samples" / "final.png").is_file():
        raise ddpm.UserError(f"training stopped before its last step (exit {code}); rerun this command to continue")


def train_lr_runs(plan):
    """The learning-rate runs; a run that stops on non-finite losses is a result (it diverged), not an error."""
    diverged = []
    for lr, folder, settings in plan.lr_runs:
        code = run_training(plan, folder, settings)
        if not (folder / "samples" / "final.png").is_file():
            if code != 2:  # 2: the trainer's own error, here its stop after too many non-finite losses
                raise ddpm.UserError(f"the lr {lr:g} run stopped early (exit {code}); rerun this command to continue")
            diverged.append(lr)
    return diverged


# --- Evaluation and the choice of checkpoint and learning rate --------------------------------------------------

def loss_past_t1(loss_per_t):
    """The mean denoising loss over the t > 1 of evaluate's grid. At t = 1 the added noise is 1% of the image and
    cannot be told from it, so every model scores about 1.0 there: that one term is about 88% of evaluate's mean
    and would hide how much better one model denoises than another. (Keys may be strings, as read from JSON.)"""
    past = [loss for t, loss in loss_per_t.items() if int(t) > 1]
    return sum(past) / len(past)


def evaluate_checkpoint(plan, path, num_samples, out_json):
    """`evaluate`'s numbers for one checkpoint, at the guidance `sample` and the notebook use, with its loss past
    t = 1; kept in a JSON file so a rerun does not sample again."""
    if out_json.is_file():
        result = json.loads(out_json.read_text())
    else:
        with contextlib.redirect_stderr(io.StringIO()):  # the data's warnings were shown once, in the plan
            result = ddpm.evaluate(path, plan.args.data_dir, out_json, plan.profile.device, num_samples,
                                   seed=plan.seed, judges=plan.judges)
    result["denoising_loss_past_t1"] = loss_past_t1(result["denoising_loss_per_t"])
    print(f"  {out_json.parent.parent.name} step {result['step']}: loss past t = 1 "
          f"{result['denoising_loss_past_t1']:.4f}, novelty {result['novelty']:.2f}, copies "
          f"{result['copy_share']:.0%}, asked class {result['asked_class_share']:.0%}, judged its class "
          f"{result['judged_class_share']:.0%}", file=sys.stderr)
    return result


def evaluate_main(plan):
    """Every checkpoint taken after the half-resolution phase: the ones that can be shipped."""
    paths = sorted(ddpm.checkpoint_dir(plan.main_run).glob("step_*.pt"))  # step_%08d: name order is step order
    return [evaluate_checkpoint(plan, path, plan.profile.eval_samples, plan.main_run / "evals" / f"{path.stem}.json")
            for path in paths if int(path.stem.split("_")[1]) > plan.cfg.low_res_share * plan.total_steps]


def misses(result):
    """The targets a checkpoint misses, in words, e.g. ['judged class 42% (target: at least 70%)']."""
    def shown(key, value):
        return f"{value:.2f}" if key == "novelty" else f"{value:.0%}"  # the shares in percent
    return [f"{TARGET_NAMES[k]} {shown(k, result[k])} (target: {'at most' if k in AT_MOST else 'at least'} "
            f"{shown(k, t)})" for k, t in TARGETS.items() if (result[k] > t if k in AT_MOST else result[k] < t)]


def shortfall(result):
    """How far a checkpoint is from meeting every target: the sum of its relative misses (0 when it meets them)."""
    return sum(max(0.0, (result[k] - t) if k in AT_MOST else (t - result[k])) / t for k, t in TARGETS.items())


def choose_checkpoint(results):
    """The latest checkpoint that meets every target; if none does, the one nearest to them (the later of equals).
    Never the clock: a later checkpoint is only better until the samples start copying the photos."""
    meeting = [r for r in results if not misses(r)]
    return max(meeting, key=lambda r: r["step"]) if meeting else min(results, key=lambda r: (shortfall(r), -r["step"]))


def choose(plan, results):
    """The chosen checkpoint exported as the model.pt a run writes: what `sample` and the notebook load."""
    chosen = choose_checkpoint(results)
    payload = ddpm.load_checkpoint(ddpm.checkpoint_dir(plan.main_run) / f"step_{chosen['step']:08d}.pt")
    model_path = plan.args.out_dir / "saved_models" / "ddpm_animals.pt"
    ddpm.save_model(payload["config"], payload["class_names"], payload["step"], payload["ema"], model_path)
    missed = misses(chosen)
    print(f"  chosen: step {chosen['step']}" + (f", missing {'; '.join(missed)}" if missed else ", meets every target"),
          file=sys.stderr)
    return {"step": chosen["step"], "meets_targets": not missed, "misses": missed,
            "is_last": chosen["step"] == plan.total_steps, "model_sha256": figures.sha256(model_path)}


def failure(diverged, loss_past_t1):
    """Why a learning-rate run failed, or None: "diverged" (stopped by non-finite losses) or "collapsed" (finite
    losses, but it denoises little better than predicting no noise)."""
    return "diverged" if diverged else "collapsed" if loss_past_t1 > COLLAPSE_LOSS else None


def pick_lr(runs, default_lr):
    """The main model's learning rate: the default unless another run's loss past t = 1 is at least PICK_MARGIN
    lower and its judged class share no lower (then the lowest such loss). A failed run is never picked; if the
    default's run failed, the lowest loss of the others; if every run failed, the default."""
    candidates = [r for r in runs if not r["failed"]]
    default = next((r for r in candidates if r["lr"] == default_lr), None)
    if default is not None:  # then only a clearly better rate replaces it
        loss, share = default["denoising_loss_past_t1"], default["judged_class_share"]
        candidates = [r for r in candidates
                      if r["denoising_loss_past_t1"] <= (1 - PICK_MARGIN) * loss and r["judged_class_share"] >= share]
    return min(candidates, key=lambda r: r["denoising_loss_past_t1"])["lr"] if candidates else default_lr


def lr_results(plan, diverged):
    """Each learning-rate run in numbers (its loss, its final model's loss past t = 1, novelty and class share,
    whether it failed) and the rate picked for the main model."""
    runs = []
    for lr, folder, _ in plan.lr_runs:
        evaluation = {} if lr in diverged else evaluate_checkpoint(
            plan, folder / "model.pt", plan.profile.lr_eval_samples, folder / "evals" / "model.json")
        run = {"lr": lr, "label": figures.lr_label(lr), "is_default": lr == plan.cfg.lr,
               **figures.lr_run_summary(folder),
               **{k: evaluation.get(k) for k in ("denoising_loss", "novelty", "copy_share", "asked_class_share",
                                                 "judged_class_share", "denoising_loss_per_t",
                                                 "denoising_loss_past_t1")}}
        run["failed"] = failure(lr in diverged, run["denoising_loss_past_t1"])
        runs.append(run)
    picked, default = pick_lr(runs, plan.cfg.lr), figures.lr_label(plan.cfg.lr)
    all_failed = all(r["failed"] for r in runs)
    print(f"  the main model trains at lr {figures.lr_label(picked)}"
          + (" (the default)" if picked == plan.cfg.lr else f" (the default: {default})")
          + ("; every learning-rate run failed" if all_failed else ""), file=sys.stderr)
    return {"epochs": plan.profile.lr_epochs, "runs": runs, "default_lr": plan.cfg.lr, "default_label": default,
            "picked_lr": picked, "picked_label": figures.lr_label(picked),
            "pick_margin": PICK_MARGIN, "collapse_loss": COLLAPSE_LOSS, "all_failed": all_failed}


def make_results(plan, checkpoints, chosen, lr_sweep, stages):
    """DIR/results/: every figure of the report and metrics.json, from the chosen model and the runs."""
    out, args, seed = plan.args.out_dir / "results", plan.args, plan.seed
    out.mkdir(parents=True, exist_ok=True)
    model, schedule, cfg = ddpm.load_model(args.out_dir / "saved_models" / "ddpm_animals.pt",
                                           torch.device(plan.profile.device))
    images, _ = ddpm.training_images(args.data_dir, cfg)
    log = ddpm.read_log(plan.main_run / "log.csv")
    ddpm.plot_loss_curve(log, out / "loss_curve.png")
    figures.checkpoint_choice(checkpoints, TARGETS, chosen["step"], out / "checkpoints.png")
    figures.lr_sweep([(lr, folder) for lr, folder, _ in plan.lr_runs], out)
    figures.per_class_samples(model, schedule, cfg, out, plan.profile.figure_samples, seed)
    figures.reverse_process(model, schedule, cfg, out, seed)
    sampling_seconds = figures.sampler_comparison(model, schedule, cfg, out, seed)
    figures.guidance_comparison(model, schedule, cfg, out, seed, GUIDANCE_SCALES)
    figures.nearest_neighbours(model, schedule, cfg, images, out, seed)
    evaluation = next(r for r in checkpoints if r["step"] == chosen["step"])
    metrics = {
        "classes": cfg.classes,
        "run": {"command": (f"python tools/make_submission.py --data-dir DATA --classes {','.join(args.classes)} "
                            f"--first-name NAME --roll-number ROLL --profile {args.profile}"),  # the name stays out
                "profile": args.profile, "seed": seed, "model_sha256": chosen["model_sha256"],
                "stage_seconds": {name: stages.done[name]["seconds"] for name in ("train", "lr", "evaluate")}},
        "config": dataclasses.asdict(cfg), "parameters": ddpm.count_parameters(model),
        "data": {"train_images": len(images), "photos_per_class": plan.photos_per_class,
                 "images_per_class_asked": cfg.images_per_class},
        "training": {**json.loads((plan.main_run / "run_info.json").read_text()), "total_steps": plan.total_steps,
                     "low_res_steps": math.ceil(plan.cfg.low_res_share * plan.total_steps),
                     "final_loss": figures.final_mean(log, "loss"),
                     "final_loss_per_t_quarter": [figures.final_mean(log, f"loss_t{q}") for q in range(1, 5)]},
        "targets": TARGETS,
        "checkpoints": [{k: r[k] for k in ("step", "denoising_loss", "denoising_loss_past_t1", "novelty", "copy_share",
                                           "asked_class_share", "judged_class_share", "memorisation_rate",
                                           "nearest_photos_distinct")}
                        | {"meets_targets": not misses(r)} for r in checkpoints],
        "chosen": {k: v for k, v in chosen.items() if k != "model_sha256"},
        "evaluation": {k: v for k, v in evaluation.items() if k != "checkpoint"},
        "lr_sweep": lr_sweep, "sampling_seconds": sampling_seconds, "sampling_device": figures.device_name(model),
        "guidance_scales": list(GUIDANCE_SCALES)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


# --- Report and package: quick, so they are rebuilt on every run ------------------------------------------------

def run_tool(*arguments):
    if subprocess.run([sys.executable, *map(str, arguments)]).returncode:
        raise ddpm.UserError(f"{Path(arguments[0]).name} failed (its message is above); fix it and rerun this command")


def report_and_zip(plan):
    """notes.md (written once, then the student's), Report.pdf and, once notes.md has no blank left, the zip;
    returns whether it packed."""
    import make_report  # Jinja2 and Typst: only the report needs them
    args, notes = plan.args, plan.args.out_dir / "notes.md"
    make_report.write_notes_template(notes)
    run_tool(ROOT / "tools" / "make_report.py", "--submission-dir", args.out_dir, "--name", args.first_name,
             "--roll-number", args.roll_number)
    blanks = make_report.blank_notes(notes)
    if blanks and not args.allow_blank_notes:
        print(f"not packed yet: {notes} still has blanks under {'; '.join(blanks)}. Write your own reading of the "
              f"results there, then rerun this command: only the report and the zip are rebuilt.", file=sys.stderr)
        return False
    run_tool(ROOT / "tools" / "package_submission.py", "--first-name", args.first_name, "--roll-number",
             args.roll_number, "--data-dir", args.data_dir, "--submission-dir", args.out_dir, "--out-dir",
             args.out_dir / "dist", *["--allow-blank-notes"] * args.allow_blank_notes)
    return True


# --- Command line ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding one subfolder of photos per class")
    p.add_argument("--classes", type=ddpm.name_list, required=True, help="your 5 classes, e.g. Bear,Cat,Cow,Dog,Elephant")
    p.add_argument("--first-name", required=True, help="for the zip's name and the report's title page")
    p.add_argument("--roll-number", required=True, help="for the zip's name; also seeds the training")
    p.add_argument("--profile", choices=["auto", *PROFILES], default="auto",
                   help="auto: gpu where CUDA is present, else cpu (default: auto)")
    p.add_argument("--out-dir", type=Path, default=ROOT, help="where the submission goes (default: this repository)")
    p.add_argument("--allow-blank-notes", action="store_true", help="pack although notes.md still has blanks")
    args = p.parse_args(argv)
    if args.profile == "auto":
        args.profile = "gpu" if torch.cuda.is_available() else "cpu"
    return args


def make_submission(args):
    plan = make_plan(args)
    stages = Stages(plan.runs / "stages.json")
    data = {"classes": plan.cfg.classes, "photos": plan.photos_per_class, "data_dir": str(args.data_dir)}
    lr_record = {**data, "flags": [settings for _, _, settings in plan.lr_runs]}
    stages.refuse_other_runs("lr", lr_record)
    print_plan(plan, estimate(plan), [name for name, record in stages.done.items() if "result" in record])
    diverged = stages.run("lr", lr_record, lambda: train_lr_runs(plan))
    lr_sweep = stages.run("lr-results", {"after": lr_record, "pick_margin": PICK_MARGIN,
                                         "collapse_loss": COLLAPSE_LOSS}, lambda: lr_results(plan, diverged))
    # the main run's settings are known only now: they hold the picked rate
    plan = dataclasses.replace(plan, cfg=dataclasses.replace(plan.cfg, lr=lr_sweep["picked_lr"]))
    main_record = {**data, "flags": plan.main_settings}
    stages.refuse_other_runs("train", main_record)
    stages.run("train", main_record, lambda: train_main(plan))
    checkpoints = stages.run("evaluate", {"after": main_record, "samples": plan.profile.eval_samples},
                             lambda: evaluate_main(plan))
    chosen = stages.run("choose", {"checkpoints": checkpoints, "targets": TARGETS}, lambda: choose(plan, checkpoints),
                        args.out_dir / "saved_models" / "ddpm_animals.pt")
    stages.run("results", {"chosen": chosen, "lr": lr_sweep},
               lambda: make_results(plan, checkpoints, chosen, lr_sweep, stages), args.out_dir / "results" / "metrics.json")
    packed = report_and_zip(plan)
    spent = {name: record["seconds"] for name, record in stages.done.items()}
    print(f"stages: {', '.join(f'{n} {ddpm.format_seconds(s)}' for n, s in spent.items())}; in all "
          f"{ddpm.format_seconds(sum(spent.values()))}" + ("" if packed else " (not packed yet)"), file=sys.stderr)


def main(argv=None):
    try:
        make_submission(parse_args(argv))
    except ddpm.UserError as err:  # one line, never a traceback
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue")


if __name__ == "__main__":
    main()
