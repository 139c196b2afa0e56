"""Rebuilds results/ (figures and metrics.json) from the shipped model and its training runs.

    python tools/make_results.py --run runs/ship \
        --sweep runs/lrexp_3e-3 runs/lrexp_1e-3 runs/lrexp_2e-4 runs/lrexp_5e-5 \
        --experiments runs/full2500 runs/dropout3 runs/dropout3_wd --cpu-run runs/cpu_default \
        --gpu-run runs/gpu_default --step-evals runs/ship_evals/*.json --data-dir ../shared/data/animals

--run is the folder `rollNumber_05.py train` wrote for the shipped model (log.csv, run_info.json); the model
itself is read from --model (default saved_models/ddpm_animals.pt). Each --sweep folder is the same run at another
learning rate (log.csv, config.json, run_info.json, model.pt, samples/final.png); each --experiments folder another
configuration tried (model.pt); --cpu-run and --gpu-run the default configuration trained on a CPU and on a GPU
(log.csv, run_info.json, samples/); --step-evals the `evaluate` results of the shipped run's earlier checkpoints.
--only reruns the steps named (e.g. `--only lr-sweep --sweep ...`) and updates the metrics.json already in --out
with their keys. Figures hold generated images only: the dataset's photos have an unknown licence and stay out of
the repository.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402
from bits_per_dim import variational_bound_bpd  # noqa: E402


def timed_samples(model, schedule, cfg, noise, labels, sampler, steps=50, guidance=ddpm.DEFAULT_GUIDANCE, seed=0,
                  eta=0.0):
    start = time.time()
    images = ddpm.generate_from_noise(model, schedule, noise, sampler, steps, eta, labels=labels,
                                      guidance=ddpm.guidance_for(cfg, guidance if cfg.conditional else None), seed=seed)
    return images, time.time() - start


def final_mean(rows, key, last=10):
    """A logged value at the end of a run: its mean over the last `last` log rows, as one row is noisy."""
    return sum(r[key] for r in rows[-last:]) / len(rows[-last:])


def plot_class_grid(rows, row_names, path, title=""):
    """One row of images per name (a class, a sampler, a guidance scale)."""
    plt = ddpm.pyplot()
    cols = len(rows[0])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 1, 1.3 * len(rows)), squeeze=False)
    for r, (images, name) in enumerate(zip(rows, row_names)):
        for c in range(cols):
            axes[r, c].imshow(ddpm.to_display(images[c]))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def per_class_samples(model, schedule, cfg, out, per_class, seed):
    """samples.png: `per_class` DDIM-100 samples of every class, guided, from fixed noise."""
    rows = []
    for label in range(cfg.num_classes):
        noise = ddpm.seeded_noise(per_class, cfg.image_size, seed + label)
        images, _ = timed_samples(model, schedule, cfg, noise, torch.full((per_class,), label), "ddim", 100, seed=seed)
        rows.append(images)
    plot_class_grid(rows, cfg.classes, out / "samples.png",
                    f"{per_class} samples per class (DDIM 100 steps, guidance {ddpm.DEFAULT_GUIDANCE})")


def sampler_comparison(model, schedule, cfg, out, seed):
    """Same noise through DDPM (all T steps) and DDIM (50 and 25 steps): quality side by side, time per batch."""
    noise = ddpm.seeded_noise(cfg.num_classes, cfg.image_size, seed)
    labels = ddpm.class_labels(cfg, cfg.num_classes)
    rows, names, seconds = [], [], {}
    for sampler, steps in [("ddpm", cfg.timesteps), ("ddim", 50), ("ddim", 25)]:
        images, took = timed_samples(model, schedule, cfg, noise, labels, sampler, steps, seed=seed)
        name = f"{sampler.upper()} {steps}"
        rows.append(images)
        names.append(f"{name}\n{took:.0f} s")
        seconds[name] = round(took, 2)
    plot_class_grid(rows, names, out / "ddpm_vs_ddim.png",
                    f"one noise per column, {cfg.num_classes} images per batch, time on a CPU, {torch.get_num_threads()} threads")
    return seconds


def guidance_comparison(model, schedule, cfg, out, seed, scales=(1.0, 2.0, 3.0, 5.0)):
    noise = ddpm.seeded_noise(cfg.num_classes, cfg.image_size, seed)
    labels = ddpm.class_labels(cfg, cfg.num_classes)
    rows = [timed_samples(model, schedule, cfg, noise, labels, "ddim", 50, scale, seed)[0] for scale in scales]
    plot_class_grid(rows, [f"guidance {s:g}" for s in scales], out / "guidance.png",
                    "classifier-free guidance scale, same noise (DDIM 50)")


def memorisation_by_guidance(model, schedule, cfg, data_dir, seed, scales=(1.0, 1.5, 2.0, 3.0), num_samples=50):
    """The evaluation's nearest-neighbour test on its 50 DDIM-50 samples at each guidance scale, and once more at
    the default scale with DDIM's noise switched on (eta 1, stochastic like DDPM): how sampling changes copying."""
    images, photo_labels = ddpm.training_images(data_dir, cfg)
    reference = ddpm.leave_one_out(images)
    noise, labels = ddpm.seeded_noise(num_samples, cfg.image_size, seed), ddpm.class_labels(cfg, num_samples)
    runs = [(f"{scale:g}", scale, 0.0) for scale in scales] + [(f"{ddpm.DEFAULT_GUIDANCE:g}, eta 1", ddpm.DEFAULT_GUIDANCE, 1.0)]
    results = {}
    for name, scale, eta in runs:
        samples, _ = timed_samples(model, schedule, cfg, noise, labels, "ddim", 50, scale, seed, eta)
        summary = ddpm.nearest_neighbour_summary(*ddpm.nearest_training_images(samples, images), reference, labels,
                                                 photo_labels)
        results[name] = {k: summary[k] for k in ("memorisation_rate", "nearest_distance_mean",
                                                 "nearest_photos_distinct")}
    return results


def default_run(run_dir, path, grids=4):
    """A figure and numbers for the default configuration trained on one machine: its fixed-seed sample grids at
    evenly spaced steps with the time they took, and its loss curve."""
    plt = ddpm.pyplot()
    cfg = json.loads((run_dir / "config.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    rows = ddpm.read_log(run_dir / "log.csv")
    saved = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "samples").glob("step_*.png"))
    shown = [saved[math.ceil(len(saved) * (i + 1) / grids) - 1] for i in range(grids)]  # the last one included
    seconds = {step: next(r["elapsed_s"] for r in rows if r["step"] >= step) for step in shown}
    in_minutes = info["train_seconds"] > 300
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.9 * (len(shown) + 1), 2.6))
    axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], alpha=0.3)
    axes[0].plot([r["step"] for r in rows], ddpm.smooth([r["loss"] for r in rows]))
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    for ax, step in zip(axes[1:], shown):
        ax.imshow(Image.open(run_dir / "samples" / f"step_{step:08d}.png"))
        took = f"{seconds[step] / 60:.0f} min" if in_minutes else f"{seconds[step]:.0f} s"
        ax.set_title(f"step {step}: {took}", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"default configuration on {info['device']}: {cfg['image_size']} px, "
                 f"{info['parameters'] / 1e6:.1f} M parameters, batch {cfg['batch_size']}, lr {cfg['lr']:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {**info, "image_size": cfg["image_size"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
            "epochs": cfg["epochs"], "images_per_s": info["images_seen"] / info["train_seconds"],
            "final_loss": final_mean(rows, "loss"),
            "grid_seconds": {str(step): round(s, 1) for step, s in seconds.items()}}


def plot_nearest_neighbours(samples, distances, path):
    """Samples with their nearest-neighbour distances, and the histogram of d1 / d2 with Gu et al.'s 1/3 line.
    (Generated images only: the dataset's photos have an unknown licence.)"""
    plt = ddpm.pyplot()
    n = min(8, len(samples))
    fig, axes = plt.subplots(1, n + 1, figsize=(1.6 * (n + 1), 1.9), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(ddpm.to_display(samples[i]))
        axes[0, i].set_title(f"d1={distances[i, 0]:.2f}\nd2={distances[i, 1]:.2f}", fontsize=8)
    ratio = (distances[:, 0] / distances[:, 1]).numpy()
    for ax in axes.flat:
        ax.axis("off")
    hist = fig.add_subplot(1, n + 1, n + 1)
    hist.hist(ratio, bins=20, range=(0, 1))
    hist.axvline(1 / 3, color="red", linestyle="--")
    hist.set_title("d1 / d2 (red: 1/3)", fontsize=8)
    hist.tick_params(labelsize=7)
    ddpm.save_figure(fig, path)


def full_evaluation(path, data_dir, seed=0, figure=None):
    """rollNumber_05's `evaluate` (50 guided DDIM samples), plus the variational bound in bits/dim and, with
    `figure`, the samples beside their nearest-neighbour distances."""
    result = ddpm.evaluate(path, data_dir, None, "cpu", num_samples=50, seed=seed)
    model, schedule, cfg = ddpm.load_model(path)
    images, labels = ddpm.training_images(data_dir, cfg)
    result.update(variational_bound_bpd(model, schedule, images, labels, seed=seed))
    if figure:
        samples = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(50, cfg.image_size, seed), "ddim", 50,
                                           labels=ddpm.class_labels(cfg, 50), guidance=result["guidance"], seed=seed)
        distances, _ = ddpm.nearest_training_images(samples, images)
        plot_nearest_neighbours(samples, distances, figure)
    return result


def evaluations_by_step(paths):
    """The `evaluate` results of snapshots of the shipped run (JSON files), keyed by step: how copying grows."""
    keys = ("denoising_loss", "bpd", "nearest_distance_mean", "nearest_distance_min", "memorisation_rate")
    results = [json.loads(Path(p).read_text()) for p in paths]
    return {str(r["step"]): {k: r[k] for k in keys} for r in sorted(results, key=lambda r: r["step"])}


def reverse_and_forward(model, schedule, cfg, out, seed):
    """reverse_process.png: one DDPM trajectory; forward_process.png: that generated image noised again."""
    label = ddpm.class_labels(cfg, 1, "Panda" if "Panda" in cfg.classes else None)
    image, trajectory = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(1, cfg.image_size, seed), "ddpm",
                                                 labels=label, guidance=ddpm.guidance_for(cfg),
                                                 seed=seed, return_trajectory=True)
    ddpm.plot_trajectory(trajectory, out / "reverse_process.png", "reverse process: x_T (noise) to x_0, DDPM")
    snapshots = ddpm.plot_forward_process(ddpm.NoiseSchedule(cfg.timesteps, cfg.schedule), image[0],
                                          out / "forward_process.png", seed)
    x_T = snapshots[cfg.timesteps]
    return {"x_T_mean": float(x_T.mean()), "x_T_std": float(x_T.std())}


def lr_label(lr):
    """0.0002 -> '2e-4', as the learning rates are written in the text."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def sweep_run_summary(rows, folder):
    """One run of the sweep in numbers: its loss at the end (overall and per quarter of the t range), its lowest
    loss and when (a run that diverges climbs away from it), and its time."""
    lowest = min((r for r in rows if math.isfinite(r["loss"])), key=lambda r: r["loss"])
    info = json.loads((folder / "run_info.json").read_text())
    return {"steps": int(rows[-1]["step"]), "final_loss": final_mean(rows, "loss"),
            "final_loss_per_t_quarter": [final_mean(rows, f"loss_t{q}") for q in range(1, 5)],
            "lowest_loss": lowest["loss"], "lowest_loss_step": int(lowest["step"]),
            "device": info["device"], "train_seconds": info["train_seconds"]}


def lr_sweep(sweep_dirs, out):
    """lr_sweep.png: the loss curves of the same run at each learning rate (left, over both rows), and each run's
    final fixed-noise samples (two rows of grids), so the reader sees what each rate draws."""
    plt = ddpm.pyplot()
    runs = sorted(((json.loads((d / "config.json").read_text())["lr"], ddpm.read_log(d / "log.csv"), d)
                   for d in sweep_dirs), reverse=True)
    cols = math.ceil(len(runs) / 2)
    fig = plt.figure(figsize=(4.5 + 3.6 * cols, 4.6))
    grid = fig.add_gridspec(2, cols + 1, width_ratios=[1.25] + [1] * cols)
    curves = fig.add_subplot(grid[:, 0])
    summary = {}
    for i, (lr, rows, folder) in enumerate(runs):
        curves.plot([r["step"] for r in rows], ddpm.smooth([r["loss"] for r in rows]), label=f"lr {lr_label(lr)}")
        summary[f"{lr:g}"] = sweep_run_summary(rows, folder)
        ax = fig.add_subplot(grid[i // cols, 1 + i % cols])
        ax.imshow(Image.open(folder / "samples" / "final.png"), interpolation="nearest")
        ax.set_title(f"lr {lr_label(lr)}: samples after {summary[f'{lr:g}']['steps']:,} steps", fontsize=9)
        ax.axis("off")
    curves.set(xlabel="step", ylabel="training loss (smoothed)", yscale="log", title="training loss")
    curves.legend()
    fig.tight_layout()
    fig.savefig(out / "lr_sweep.png", dpi=120)
    plt.close(fig)
    return summary


def sweep_eval_losses(sweep_dirs, data_dir):
    """The fixed-grid denoising loss of each sweep run's final model: a comparable number per learning rate."""
    losses = {}
    for folder in sweep_dirs:
        model, schedule, cfg = ddpm.load_model(folder / "model.pt")
        loss, _ = ddpm.denoising_loss_grid(model, schedule, *ddpm.training_images(data_dir, cfg))
        losses[f"{cfg.lr:g}"] = loss
    return losses


def experiments(model_path, shipped_result, experiment_dirs, data_dir, out, seed):
    """experiments.png and numbers: the shipped model beside other configurations tried, each evaluated the same
    way as the shipped one (memorisation of 50 guided DDIM samples, fixed-grid loss, bound), with samples."""
    runs = [("shipped", model_path)] + [(folder.name, folder / "model.pt") for folder in experiment_dirs]
    rows, names, summary = [], [], {}
    for name, path in runs:
        model, schedule, cfg = ddpm.load_model(path)
        result = shipped_result if name == "shipped" else full_evaluation(path, data_dir, seed)
        summary[name] = {"base_channels": cfg.base_channels, "channel_mults": cfg.channel_mults,
                         "dropout": cfg.dropout, "steps": result["step"], "parameters": ddpm.count_parameters(model),
                         "weight_decay": cfg.weight_decay,
                         **{k: result[k] for k in ("denoising_loss", "bpd", "nearest_distance_mean",
                                                   "nearest_distance_min", "memorisation_rate",
                                                   "nearest_photos_distinct")}}
        images, _ = timed_samples(model, schedule, cfg, ddpm.seeded_noise(2 * cfg.num_classes, cfg.image_size, seed),
                                  ddpm.class_labels(cfg, 2 * cfg.num_classes), "ddim", 50, seed=seed)
        rows.append(images)
        names.append(f"{name}\n{summary[name]['parameters'] / 1e6:.1f} M, {result['step']} steps")
    plot_class_grid(rows, names, out / "experiments.png", "same noise, DDIM 50, guidance 3: shipped model and others tried")
    return summary


STEPS = ("forward-reverse", "samples", "guidance", "memorisation-by-guidance", "samplers", "evaluation",
         "experiments", "cpu-run", "gpu-run", "step-evals", "lr-sweep")


def shipped_run(args, model, cfg):
    """The start of metrics.json: the shipped model, its config and its training run; and loss_curve.png."""
    metrics = {"model": str(args.model.relative_to(ROOT) if args.model.is_absolute() else args.model),
               "config": ddpm.dataclasses.asdict(cfg),
               "parameters": ddpm.count_parameters(model),
               "training": json.loads((args.run / "run_info.json").read_text())}
    rows = ddpm.read_log(args.run / "log.csv")
    metrics["training"]["final_loss"] = final_mean(rows, "loss")
    metrics["training"]["final_loss_per_t_quarter"] = [final_mean(rows, f"loss_t{q}") for q in range(1, 5)]
    ddpm.plot_loss_curve(rows, args.out / "loss_curve.png")
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="the shipped model's run folder (needed unless --only)")
    parser.add_argument("--model", type=Path, default=ddpm.DEFAULT_CHECKPOINT)
    parser.add_argument("--sweep", type=Path, nargs="*", default=[])
    parser.add_argument("--experiments", type=Path, nargs="*", default=[],
                        help="run folders of other configurations tried (model.pt each)")
    parser.add_argument("--cpu-run", type=Path, help="run folder of the default configuration trained on a CPU")
    parser.add_argument("--gpu-run", type=Path, help="run folder of the default configuration trained on a GPU")
    parser.add_argument("--step-evals", type=Path, nargs="*", default=[],
                        help="`evaluate` JSON files of earlier snapshots of the shipped run")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=STEPS, metavar="STEP",
                        help=f"run only these steps, keeping the rest of --out's metrics.json ({', '.join(STEPS)})")
    args = parser.parse_args()
    if not args.only and not args.run:
        parser.error("--run is needed to rebuild all of results/ (or name the steps to rerun with --only)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model, schedule, cfg = ddpm.load_model(args.model)
    metrics = json.loads((args.out / "metrics.json").read_text()) if args.only else shipped_run(args, model, cfg)
    steps = [("forward-reverse", lambda: metrics.update(reverse_and_forward(model, schedule, cfg, args.out, args.seed))),
             ("samples", lambda: per_class_samples(model, schedule, cfg, args.out, 8, args.seed)),
             ("guidance", lambda: guidance_comparison(model, schedule, cfg, args.out, args.seed)),
             ("memorisation-by-guidance", lambda: metrics.update(memorisation_by_guidance=memorisation_by_guidance(
                 model, schedule, cfg, args.data_dir, args.seed))),
             ("samplers", lambda: metrics.update(sampling_seconds_cpu=sampler_comparison(model, schedule, cfg, args.out,
                                                                                          args.seed))),
             ("evaluation", lambda: metrics.update(evaluation=full_evaluation(
                 args.model, args.data_dir, args.seed, args.out / "nearest_neighbours.png")))]
    if args.experiments:
        steps.append(("experiments", lambda: metrics.update(
            experiments=experiments(args.model, metrics["evaluation"], args.experiments, args.data_dir, args.out,
                                    args.seed))))
    if args.cpu_run:
        steps.append(("cpu-run", lambda: metrics.update(
            cpu_training=default_run(args.cpu_run, args.out / "cpu_training.png"))))
    if args.gpu_run:
        steps.append(("gpu-run", lambda: metrics.update(
            gpu_training=default_run(args.gpu_run, args.out / "gpu_training.png"))))
    if args.step_evals:
        steps.append(("step-evals", lambda: metrics.update(evaluation_by_step=evaluations_by_step(args.step_evals))))
    if args.sweep:
        steps.append(("lr-sweep", lambda: metrics.update(lr_sweep=lr_sweep(args.sweep, args.out),
                                                         lr_sweep_eval_loss=sweep_eval_losses(args.sweep, args.data_dir))))
    missing = set(args.only or []) - {name for name, _ in steps}
    if missing:
        parser.error(f"--only {' '.join(sorted(missing))}: give the folders that step reads (see --help)")
    for name, step in steps:
        if args.only and name not in args.only:
            continue
        start = time.time()
        step()
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    metrics["evaluation"].pop("checkpoint", None)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
