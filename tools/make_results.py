"""The figures of the report, drawn from a submission's chosen model and runs (tools/make_submission.py calls these).

Each function draws one figure into `out` (a results/ folder) and returns the numbers the report quotes beside it.
Figures kept in results/ hold generated images only: the dataset's photos have an unknown licence and stay out of
the repository. The report builder draws the figures that show photos (training_photos, nearest_neighbours with
show_photos, the forward process of a photo) at build time, into a student's own report only.
"""
import hashlib
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


def sha256(path):
    """The file's fingerprint: how the packager and the report tie a model, its results and its report together."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def timed_samples(model, schedule, cfg, noise, labels, sampler, steps=50, guidance=ddpm.DEFAULT_GUIDANCE, seed=0):
    start = time.time()
    images = ddpm.generate_from_noise(model, schedule, noise, sampler, steps, labels=labels,
                                      guidance=ddpm.guidance_for(cfg, guidance if cfg.conditional else None),
                                      seed=seed)
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
    ddpm.save_figure(fig, path)


def per_class_samples(model, schedule, cfg, out, per_class, seed):
    """samples.png: `per_class` guided DDIM-50 samples of every class, each from its own fixed noise."""
    rows = []
    for label in range(cfg.num_classes):
        noise = ddpm.seeded_noise(per_class, cfg.image_size, seed + label)
        rows.append(timed_samples(model, schedule, cfg, noise, torch.full((per_class,), label), "ddim", 50,
                                  seed=seed)[0])
    plot_class_grid(rows, cfg.classes, out / "samples.png",
                    f"{per_class} samples per class (DDIM 50 steps, guidance {ddpm.DEFAULT_GUIDANCE:g})")


def sampler_comparison(model, schedule, cfg, out, seed):
    """Same noise through DDPM (all T steps) and DDIM (50 and 25 steps): pictures side by side, seconds per batch."""
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
                    f"one noise per column, {cfg.num_classes} images per batch, time on {device_name(model)}")
    return seconds


def device_name(model):
    device = next(model.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{device.type}, {torch.get_num_threads()} threads"


def guidance_comparison(model, schedule, cfg, out, seed, scales):
    noise = ddpm.seeded_noise(cfg.num_classes, cfg.image_size, seed)
    labels = ddpm.class_labels(cfg, cfg.num_classes)
    rows = [timed_samples(model, schedule, cfg, noise, labels, "ddim", 50, scale, seed)[0] for scale in scales]
    plot_class_grid(rows, [f"guidance {s:g}" for s in scales], out / "guidance.png",
                    "classifier-free guidance scale, same noise (DDIM 50), one class per column")


def nearest_neighbours(model, schedule, cfg, images, out, seed, count=8, show_photos=False):
    """nearest_neighbours.png: `count` samples with the distance to their nearest (d1) and second-nearest (d2)
    training photo; with show_photos, those two photos below each sample (only in a student's own report: the
    photos' licence keeps them out of the repository)."""
    samples, _ = timed_samples(model, schedule, cfg, ddpm.seeded_noise(count, cfg.image_size, seed),
                               ddpm.class_labels(cfg, count), "ddim", 50, seed=seed)
    distances, indices = ddpm.nearest_training_images(samples, images)
    rows = [samples] + ([images[indices[:, 0]], images[indices[:, 1]]] if show_photos else [])
    plt = ddpm.pyplot()
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.7 * len(rows) + 0.3), squeeze=False)
    for row, name in zip(axes, ["sample", "nearest photo", "second nearest"]):
        row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
    for col, (d1, d2) in enumerate(distances.tolist()):
        axes[0, col].set_title(f"d1={d1:.2f}\nd2={d2:.2f}", fontsize=8)
        for row, images_of_row in zip(axes, rows):
            row[col].imshow(ddpm.to_display(images_of_row[col]))
            row[col].axis("off")
    ddpm.save_figure(fig, Path(out) / "nearest_neighbours.png")


def training_photos(images, labels, classes, path, per_class=10):
    """The first photos of each class as the model sees them (resized, cropped, in [-1, 1]), one row per class."""
    plt = ddpm.pyplot()
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class, len(classes)), squeeze=False)
    for k, (row, name) in enumerate(zip(axes, classes)):
        for ax, image in zip(row, images[labels == k][:per_class]):
            ax.imshow(ddpm.to_display(image))
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        row[0].set_ylabel(name, fontsize=10)
    ddpm.save_figure(fig, path)


def loss_by_t(curves, path):
    """The plain noise error against t (log scale), one line per model: {name: {t: loss}} as evaluate measures it."""
    plt = ddpm.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, per_t in curves.items():
        ts = sorted(per_t, key=int)
        ax.plot([int(t) for t in ts], [per_t[t] for t in ts], "o-", label=name)
    ax.set(xlabel="t", ylabel="noise error (plain, fixed noise)", yscale="log", title="denoising loss by t")
    ax.legend(fontsize=8)
    ddpm.save_figure(fig, path)


def reverse_process(model, schedule, cfg, out, seed):
    """reverse_process.png: one DDPM trajectory of the first class, noise to image."""
    _, trajectory = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(1, cfg.image_size, seed), "ddpm",
                                             labels=ddpm.class_labels(cfg, 1), guidance=ddpm.guidance_for(cfg),
                                             seed=seed, return_trajectory=True)
    ddpm.plot_trajectory(trajectory, Path(out) / "reverse_process.png",
                         f"reverse process of a {cfg.classes[0]} sample: x_T (noise) to x_0, DDPM")


def checkpoint_choice(checkpoints, targets, chosen_step, path):
    """checkpoints.png: judged class share, novelty and copy share of each evaluated checkpoint against its step,
    the targets dashed and the chosen checkpoint marked."""
    plt = ddpm.pyplot()
    steps = [c["step"] for c in checkpoints]
    panels = [("judged_class_share", "named its class by the judges", "at least"),
              ("novelty", "novelty (1: like a new real photo)", "at least"),
              ("copy_share", "copy share", "at most")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, (key, title, bound) in zip(axes, panels):
        ax.plot(steps, [c[key] for c in checkpoints], "o-")
        ax.axhline(targets[key], color="grey", linestyle="--", label=f"target: {bound} {targets[key]:.2f}")
        ax.axvline(chosen_step, color="red", alpha=0.5, label=f"chosen: step {chosen_step:,}")
        ax.set(xlabel="training step", title=title, ylim=(0, max(1.05, ax.get_ylim()[1])))
        ax.legend(fontsize=7)
    ddpm.save_figure(fig, path)


def lr_label(lr):
    """0.0002 -> '2e-4', as the learning rates are written in the text."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def lr_run_summary(folder):
    """One run of the learning-rate experiment in numbers: its loss at the end (overall and per quarter of the t
    range), its steps and time. A run stopped by non-finite losses has no run_info.json: its log says how far it
    came; the losses it never had are None."""
    rows = ddpm.read_log(folder / "log.csv")
    finite = [r for r in rows if math.isfinite(r["loss"])]
    info = folder / "run_info.json"
    info = json.loads(info.read_text()) if info.is_file() else {"steps": int(rows[-1]["step"]),
                                                                  "train_seconds": rows[-1]["elapsed_s"]}
    return {"steps": info["steps"], "train_seconds": info["train_seconds"],
            "final_loss": final_mean(finite, "loss") if finite else None,
            "final_loss_per_t_quarter": [final_mean(finite, f"loss_t{q}") for q in range(1, 5)] if finite else None}


def lr_sweep(runs, out):
    """lr_sweep.png: the smoothed loss of each rate (left) and each run's final fixed-noise samples (right).
    `runs`: (lr, folder) pairs, highest rate first; a run without samples/final.png stopped early (diverged)."""
    plt = ddpm.pyplot()
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4.2 + 3.2 * len(runs), 3.4),
                             gridspec_kw={"width_ratios": [1.3] + [1] * len(runs)})
    for ax, (lr, folder) in zip(axes[1:], runs):
        rows = ddpm.read_log(folder / "log.csv")
        axes[0].plot([r["step"] for r in rows], ddpm.smooth([r["loss"] for r in rows]), label=f"lr {lr_label(lr)}")
        final = folder / "samples" / "final.png"
        if final.is_file():
            ax.imshow(Image.open(final), interpolation="nearest")
        ax.set_title(f"lr {lr_label(lr)}: samples at the end" if final.is_file() else f"lr {lr_label(lr)}: stopped",
                     fontsize=9)
        ax.axis("off")
    axes[0].set(xlabel="step", ylabel="training loss (smoothed)", yscale="log", title="training loss")
    axes[0].legend()
    ddpm.save_figure(fig, out / "lr_sweep.png")
