"""How new are a model's samples, against the guidance scale: results/novelty_vs_guidance.png and its numbers.

    python tools/experiments/novelty.py --data-dir ../shared/data/animals    # the shipped model
    python tools/experiments/novelty.py --data-dir DATA --model old=saved_models/ddpm_animals.pt \
        --model new=runs/x/model.pt

For each model and guidance scale: DDIM-50 samples, --per-class of each class, measured by rollNumber_05's
nearest-neighbour test against the training photos (and their mirror images). Novelty is the samples' median
distance to their nearest photo over the photos' own leave-one-out median (about 1: as far from the set as a new
real photo; 0: copies); copies are samples closer than the leave-one-out 5th percentile; the class share is the
share whose nearest photo is of the class asked for. Writes the figure and a JSON of every number.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402


def novelty_by_guidance(path, data_dir, scales, per_class, grid=None):
    """{scale: nearest-neighbour summary} for one checkpoint. With `grid`, also writes there the first 4 samples of
    each class at the default guidance (a column per class)."""
    model, schedule, cfg = ddpm.load_model(path)
    images, photo_labels = ddpm.training_images(data_dir, cfg)
    reference = ddpm.leave_one_out(images)
    asked = ddpm.class_labels(cfg, per_class * cfg.num_classes)
    results = {}
    for scale in scales:
        chunks = ddpm.sample_in_chunks(model, schedule, cfg, asked, len(asked), sampler="ddim", steps=50,
                                       guidance=scale)
        samples = torch.cat([images_of_chunk for _, images_of_chunk in chunks])
        if grid and scale == ddpm.DEFAULT_GUIDANCE:
            ddpm.save_png(make_grid(ddpm.to_uint8(samples[:4 * cfg.num_classes]), nrow=cfg.num_classes, pad_value=255),
                          grid)
        results[f"{scale:g}"] = ddpm.nearest_neighbour_summary(*ddpm.nearest_training_images(samples, images),
                                                               reference, asked, photo_labels)
        print(f"{path}: guidance {scale:g}: novelty {results[f'{scale:g}']['novelty']:.2f}", file=sys.stderr)
    return results


def plot(results, path):
    """Novelty, copy share and class share against guidance, a line per model, and the frontier they trace:
    novelty against class share (up and to the right is better). Dotted: the photos' own values."""
    fig, axes = ddpm.pyplot().subplots(1, 4, figsize=(17, 3.6))
    for name, by_scale in results.items():
        scales = [float(s) for s in by_scale]
        for ax, key in zip(axes, ("novelty", "copy_share", "asked_class_share")):
            ax.plot(scales, [by_scale[s][key] for s in by_scale], "o-", label=name)
        line, = axes[3].plot([v["asked_class_share"] for v in by_scale.values()],
                             [v["novelty"] for v in by_scale.values()], "o-", label=name)
        for scale, v in by_scale.items():
            axes[3].annotate(scale, (v["asked_class_share"], v["novelty"]), fontsize=7, color=line.get_color())
    titles = ("novelty (1: like a new real photo)", "copy share", "nearest photo of the asked class",
              "novelty against class share (labels: guidance)")
    for ax, title in zip(axes, titles):
        ax.set(xlabel="guidance scale")
        ax.set_ylim(bottom=0, top=max(1.05, ax.get_ylim()[1]))  # novelty may pass 1: keep it in view
        ax.set_title(title, fontsize=10)
    photos = next(iter(next(iter(results.values())).values()))
    axes[0].axhline(1.0, color="grey", linestyle=":")
    axes[2].axhline(photos["leave_one_out_class_share"], color="grey", linestyle=":", label="the photos' own")
    axes[3].set(xlabel="nearest photo of the asked class", ylabel="novelty", xlim=(0, 1.05))
    axes[3].plot([photos["leave_one_out_class_share"]], [1.0], "k*", label="a new real photo")
    for ax in axes:
        ax.legend(fontsize=8)
    ddpm.save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--model", action="append", metavar="NAME=PATH",
                   help=f"a checkpoint to measure, repeatable (default: shipped={ddpm.DEFAULT_CHECKPOINT.relative_to(ROOT)})")
    p.add_argument("--scales", type=lambda text: [float(v) for v in text.split(",")], default=[1.0, 2.0, 3.0, 4.0])
    p.add_argument("--per-class", type=ddpm.positive_int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--grids", action="store_true", help="also write samples_NAME.png at the default guidance")
    args = p.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model or [f"shipped={ddpm.DEFAULT_CHECKPOINT}"])
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: novelty_by_guidance(path, args.data_dir, args.scales, args.per_class,
                                         grid=args.out / f"samples_{name}.png" if args.grids else None)
               for name, path in models.items()}
    plot(results, args.out / "novelty_vs_guidance.png")
    (args.out / "novelty_by_guidance.json").write_text(json.dumps(
        {"per_class": args.per_class, "sampler": "ddim", "steps": 50,
         "models": {name: os.path.relpath(path, ROOT) for name, path in models.items()}, "results": results}, indent=2))
    print(f"wrote {args.out / 'novelty_vs_guidance.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
