"""What more training buys on the hard set: evaluate's numbers at every full-size checkpoint of the ablation runs.

    python results/ablation_64px/judge_curve.py RUN [RUN ...]     # e.g. default long (folders in runs/ablation_64px)

For each RUN, `evaluate` (100 samples, DDIM 50, guidance 3, seed 0) at each checkpoint taken after the half-size
phase, with one set of class judges (seed 0) shared by all checkpoints of the same photos; each result goes to
results/ablation_64px/RUN/evals/step_N.json, and one line per checkpoint is printed. A checkpoint already evaluated
is read back, not sampled again.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "animals"
judges = None
for name in sys.argv[1:]:
    run = ROOT / "runs" / "ablation_64px" / name
    cfg = ddpm.load_model(run / "model.pt", "cpu")[2]
    if judges is None:  # every run here trains on the same 100 photos
        judges = ddpm.class_judges(*ddpm.training_images(DATA, cfg), cfg.num_classes)
    paths = sorted((run / "checkpoints").glob("step_*.pt"))  # the last one is the end of training
    total = int(paths[-1].stem.split("_")[1])
    for path in paths:
        step = int(path.stem.split("_")[1])
        if step <= cfg.low_res_share * total:
            continue
        out = ROOT / "results" / "ablation_64px" / name / "evals" / f"{path.stem}.json"
        result = (json.loads(out.read_text()) if out.is_file() else
                  ddpm.evaluate(path, DATA, out, "cpu", 100, judges=judges))
        passes = step * cfg.batch_size / result["train_images"]
        print(f"{name:10s} step {step:6d} ({passes:5.0f} passes): novelty {result['novelty']:.2f}, copies "
              f"{result['copy_share']:.0%}, pixel class {result['asked_class_share']:.0%}, judged "
              f"{result['judged_class_share']:.0%} {[round(20 * s) for s in result['judged_class_share_by_class']]}"
              f" of 20, judges on new photos {result['judge_photo_accuracy']:.0%}", flush=True)
