"""What more training minutes buy on the hard set: minutes_curve.png, from the numbers already in this folder.

    python results/ablation_64px/plot_minutes.py

Left: evaluate's judged class share at every full-size checkpoint of the default run and of the 1.5 x run (their
evals/step_N.json, written by judge_curve.py) and at the end of the two runs with every step at full size, for the
default's minutes and for its passes (no_low_res_short/ and no_low_res/eval_final.json). Right: the blind test at each run's end (blind/tally.json):
samples a person named right, of 50. Minutes: what a step takes on a free 2-core CPU, from the default run's 49.7
minutes there (results/cpu_64px) with a half-size step at a third of a full-size one, as in the README.
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import rollNumber_05 as ddpm  # noqa: E402

DEFAULT_MINUTES, DEFAULT_STEPS, LOW_RES_SHARE = 49.7, 8438, 0.6


def full_size_steps(step, total, low_res_share):
    """The cost of training to `step` of a `total`-step run, in full-size steps (a half-size one costs a third)."""
    half = math.ceil(low_res_share * total)
    return min(step, half) / 3 + max(0, step - half)


MINUTES_PER_STEP = DEFAULT_MINUTES / full_size_steps(DEFAULT_STEPS, DEFAULT_STEPS, LOW_RES_SHARE)
RUNS = [("default recipe", "default", 8438, LOW_RES_SHARE), ("1.5 x the passes", "long", 12657, LOW_RES_SHARE),
        ("every step at full size, same minutes", "no_low_res_short", 5063, 0.0),
        ("every step at full size, same passes (58% copies)", "no_low_res", 8438, 0.0)]


def named_right(run):
    return sum(counts["right"] for counts in json.loads((HERE / run / "blind" / "tally.json").read_text()).values())


plt = ddpm.pyplot()
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
for label, run, total, share in RUNS:
    paths = sorted((HERE / run / "evals").glob("step_*.json")) or [HERE / run / "eval_final.json"]
    results = [json.loads(path.read_text()) for path in paths]
    minutes = [MINUTES_PER_STEP * full_size_steps(r["step"], total, share) for r in results]
    left.plot(minutes, [100 * r["judged_class_share"] for r in results], "o-", label=label)
    right.plot(minutes[-1], named_right(run), "o", markersize=8, label=label)
left.set(xlabel="training minutes on a free 2-core CPU", ylabel="judged class share (%)", ylim=(0, 100),
         title="evaluate's judges (51% right on new photos)")
right.set(xlabel="training minutes on a free 2-core CPU", ylabel="named right by a person, of 50", ylim=(0, 50),
          title="blind test at the end of each run")
right.axhline(40, color="grey", linestyle="--", label="target: 8 of 10 per class (40)")
left.legend(fontsize=7)
right.legend(fontsize=7)
ddpm.save_figure(fig, HERE / "minutes_curve.png")
print(f"wrote {HERE / 'minutes_curve.png'}")
