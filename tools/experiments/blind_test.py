"""A blind test of a model's classes: shuffled samples for a person to name, and the tally of their answers.

    python tools/experiments/blind_test.py make MODEL.pt OUT_DIR [--per-class 10] [--seed 0] [--guidance 3,5]
    python tools/experiments/blind_test.py score OUT_DIR/key.json ANSWERS.txt

`make` draws --per-class samples of every class (DDIM 50, the default guidance, the same sampler as the report's
grid), shuffles them and writes OUT_DIR/blind.png (numbered tiles, no labels) and OUT_DIR/key.json (which class
and guidance scale each number was asked for). With several --guidance scales each draws its own set (noise seed
--seed plus its place in the list) and the sets are shuffled together, so the rater cannot tell the scales apart.
The rater sees only blind.png and the class names, and writes one line per tile, "NUMBER NAME" with NAME a class
or "?" (cannot tell). `score` prints, per asked class (and per scale when there are several), how many were named
right, named as another class, or not told, and writes OUT_DIR/tally.json beside the key.
"""
import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402


def make(model_path, out_dir, per_class, seed, scales=(None,)):
    model, schedule, cfg = ddpm.load_model(model_path, "cpu")
    labels = torch.arange(cfg.num_classes).repeat_interleave(per_class)
    images, asked, guidance = [], [], []
    for place, scale in enumerate(scales):
        scale = ddpm.guidance_for(cfg, scale)
        noise = ddpm.seeded_noise(len(labels), cfg.image_size, seed + place)
        images += ddpm.generate_from_noise(model, schedule, noise, "ddim", 50, labels=labels, guidance=scale,
                                           seed=seed + place)
        asked += [cfg.classes[label] for label in labels]
        guidance += [scale] * len(labels)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    columns = 10
    plt = ddpm.pyplot()
    fig, axes = plt.subplots(-(-len(order) // columns), columns, figsize=(1.5 * columns, 1.6 * len(order) / columns),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for number, index in enumerate(order, 1):
        ax = axes.flat[number - 1]
        ax.imshow(ddpm.to_display(images[index]))
        ax.set_title(str(number), fontsize=9)
    ddpm.save_figure(fig, Path(out_dir) / "blind.png")
    key = {"model": str(model_path), "classes": cfg.classes, "seed": seed,
           "asked": {str(number): asked[index] for number, index in enumerate(order, 1)},
           "guidance": {str(number): guidance[index] for number, index in enumerate(order, 1)}}
    (Path(out_dir) / "key.json").write_text(json.dumps(key, indent=2))


def score(key_path, answers_path):
    key = json.loads(Path(key_path).read_text())
    answers = dict(line.split(maxsplit=1) for line in Path(answers_path).read_text().splitlines() if line.strip())
    guidance = key.get("guidance", {})  # keys written before --guidance existed have one scale and no entry
    scales = sorted(set(guidance.values()))
    tallies = {f"guidance {scale:g}": tally_of(key, answers, {n for n, g in guidance.items() if g == scale})
               for scale in scales} if len(scales) > 1 else {"": tally_of(key, answers, set(key["asked"]))}
    for heading, tally in tallies.items():
        if heading:
            print(heading)
        for name, counts in tally.items():
            print(f"{name:12s} right {counts['right']:2d}  other class {counts['other class']:2d}  "
                  f"cannot tell {counts['cannot tell']:2d}")
        print(f"{'all':12s} right {sum(c['right'] for c in tally.values())} of "
              f"{sum(sum(c.values()) for c in tally.values())}")
    (Path(key_path).parent / "tally.json").write_text(json.dumps(tallies.get("", tallies), indent=2))


def tally_of(key, answers, numbers):
    tally = {name: {"right": 0, "other class": 0, "cannot tell": 0} for name in key["classes"]}
    for number in numbers:
        asked, named = key["asked"][number], answers.get(number, "?").strip()
        tally[asked]["right" if named == asked else "cannot tell" if named == "?" else "other class"] += 1
    return tally


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("make")
    p.add_argument("model", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=lambda text: [float(x) for x in text.split(",")], default=[None],
                   help="guidance scales, comma-separated (default: the model's)")
    p = commands.add_parser("score")
    p.add_argument("key", type=Path)
    p.add_argument("answers", type=Path)
    args = parser.parse_args(argv)
    if args.command == "make":
        args.out_dir.mkdir(parents=True, exist_ok=True)
        make(args.model, args.out_dir, args.per_class, args.seed, args.guidance)
    else:
        score(args.key, args.answers)


if __name__ == "__main__":
    main()
