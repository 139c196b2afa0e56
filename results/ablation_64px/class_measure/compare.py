"""Which automatic class measure agrees with the blind test (issue 28, item 2): the experiment behind README.md.

    python results/ablation_64px/class_measure/compare.py samples    # the 2 x 50 blind-rated samples, redrawn
    python results/ablation_64px/class_measure/compare.py color      # classifier on the photos, colour
    python results/ablation_64px/class_measure/compare.py gray       # the same on grey images
    python results/ablation_64px/class_measure/compare.py cas        # trained on the samples, tested on the photos
    python results/ablation_64px/class_measure/compare.py curve      # colour, at the default run's last checkpoints
    python results/ablation_64px/class_measure/compare.py score MODEL.pt   # colour, on MODEL's blind-test samples
    python results/ablation_64px/class_measure/compare.py samples long     # the long row's blind-rated samples
    python results/ablation_64px/class_measure/compare.py folds      # the measure as evaluate has it, on all three
    python results/ablation_64px/class_measure/compare.py samples no_augment no_min_snr   # two more rows, then
    python results/ablation_64px/class_measure/compare.py folds no_augment no_min_snr     # the same on them
    python results/ablation_64px/class_measure/compare.py seeds      # one judge, three training seeds, hard and long
    python results/ablation_64px/class_measure/compare.py folds_seeds   # evaluate's five judges at seeds 1 and 2

Kept as it ran (an experiment, not a tool): the measure the comparison favours moves into the script's evaluate.
The samples are the blind tests' own (tools/experiments/blind_test.py make, seed 1, 10 per class), redrawn from
saved_models/ddpm_animals.pt and runs/ablation_64px/default/model.pt (that row's command in ../README.md), with the
rater's verdict per sample from ../blind_shipped and ../default/blind.
"""
import json, math, random, sys, time
from pathlib import Path

import torch, torch.nn as nn, torch.nn.functional as F
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm
from torchvision.transforms import v2
torch.set_num_threads(1)
DATA = ROOT.parent / "shared" / "data" / "animals"
OUT = Path("/tmp/class_measure"); OUT.mkdir(exist_ok=True)
MODE = sys.argv[1] if len(sys.argv) > 1 else "color"

BLIND = [("easy", f"{ROOT}/saved_models/ddpm_animals.pt", f"{ROOT}/results/ablation_64px/blind_shipped"),
         ("hard", f"{ROOT}/runs/ablation_64px/default/model.pt", f"{ROOT}/results/ablation_64px/default/blind"),
         ("long", f"{ROOT}/runs/ablation_64px/long/model.pt", f"{ROOT}/results/ablation_64px/long/blind"),
         ("no_augment", f"{ROOT}/runs/ablation_64px/no_augment/model.pt", f"{ROOT}/results/ablation_64px/no_augment/blind"),
         ("no_min_snr", f"{ROOT}/runs/ablation_64px/no_min_snr/model.pt", f"{ROOT}/results/ablation_64px/no_min_snr/blind")]
if MODE == "samples":  # add a name after "samples" to draw only that model's
    for name, model_path, blind in [b for b in BLIND if len(sys.argv) < 3 or b[0] in sys.argv[2:]]:
        model, schedule, cfg = ddpm.load_model(model_path, "cpu")
        per_class, seed = 10, 1
        labels = torch.arange(cfg.num_classes).repeat_interleave(per_class)
        images = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(len(labels), cfg.image_size, seed), "ddim",
                                          50, labels=labels, guidance=ddpm.guidance_for(cfg), seed=seed)
        import random
        order = list(range(len(labels))); random.Random(seed).shuffle(order)
        key = json.load(open(f"{blind}/key.json"))
        answers = dict(l.split(maxsplit=1) for l in open(f"{blind}/answers.txt").read().splitlines() if l.strip())
        verdict = [None] * len(labels)
        for number, index in enumerate(order, 1):
            assert key["asked"][str(number)] == cfg.classes[labels[index]]
            a = answers.get(str(number), "?").strip()
            verdict[index] = "right" if a == cfg.classes[labels[index]] else ("?" if a == "?" else "other")
        torch.save({"images": images, "labels": labels, "verdict": verdict, "classes": cfg.classes, "cfg": cfg}, f"{OUT}/{name}_blind.pt")
        print(name, [sum(v == "right" for v in verdict[k*10:(k+1)*10]) for k in range(5)])
    sys.exit()


def net(k):
    def blk(i, o): return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(), nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(), nn.MaxPool2d(2))
    return nn.Sequential(blk(3, 16), blk(16, 32), blk(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, k))

def prep(x):  # x in [-1,1]
    if x.shape[-1] != 32: x = F.interpolate(x, size=32, mode="area")
    if MODE == "gray":
        x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return x

aug = v2.Compose([v2.RandomResizedCrop(32, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                  v2.ColorJitter(0.4, 0.4, 0.4, 0.05), v2.RandomGrayscale(0.3)])

def train(images, labels, k, epochs=100, seed=0):
    torch.manual_seed(seed)
    m = net(k); opt = torch.optim.AdamW(m.parameters(), 2e-3, weight_decay=0.05)
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    steps = epochs * math.ceil(len(images) / 32); sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    m.train()
    for ep in range(epochs):
        perm = torch.randperm(len(images))
        for s in range(0, len(images), 32):
            idx = perm[s:s+32]
            x = torch.stack([aug(u8[i]) for i in idx]).float() / 127.5 - 1
            loss = F.cross_entropy(m(prep(x)), labels[idx], label_smoothing=0.1)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    return m.eval()

@torch.no_grad()
def probs(m, x):
    return (F.softmax(m(prep(x)), 1) + F.softmax(m(prep(x.flip(-1))), 1)) / 2

def auc(score, truth):
    pos, neg = score[truth], score[~truth]
    if len(pos) == 0 or len(neg) == 0: return float("nan")
    return float((pos[:, None] > neg[None]).float().mean() + 0.5 * (pos[:, None] == neg[None]).float().mean())


if MODE == "score":  # the colour measure on a model's blind-test samples (blind_test.py make ... --seed 1)
    model, schedule, cfg = ddpm.load_model(sys.argv[2], "cpu")
    images, labels = ddpm.training_images(DATA, cfg)
    judge = train(images, labels, cfg.num_classes)
    asked = torch.arange(cfg.num_classes).repeat_interleave(10)
    samples = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(len(asked), cfg.image_size, 1), "ddim", 50,
                                       labels=asked, guidance=ddpm.guidance_for(cfg), seed=1)
    sure = probs(judge, samples)[torch.arange(len(asked)), asked] >= 0.5
    print(f"{sys.argv[2]}: colour p>=0.5 {sure.float().mean():.2f}  by class "
          f"{[int(sure[asked == k].sum()) for k in range(cfg.num_classes)]}")
    sys.exit()

if MODE == "curve":  # the colour measure at each full-size checkpoint of the hard set's default run
    run = ROOT / "runs" / "ablation_64px" / "default"
    cfg = ddpm.load_model(run / "model.pt", "cpu")[2]
    images, labels = ddpm.training_images(DATA, cfg)
    judge = train(images, labels, cfg.num_classes)
    info = {r["step"]: r for r in ddpm.read_log(run / "log.csv")}
    for path in sorted((run / "checkpoints").glob("step_*.pt"))[-5:]:
        model, schedule, _ = ddpm.load_model(path, "cpu")
        asked = torch.arange(cfg.num_classes).repeat_interleave(10)
        samples = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(len(asked), cfg.image_size, 1), "ddim",
                                           50, labels=asked, guidance=ddpm.guidance_for(cfg), seed=1)
        sure = probs(judge, samples)[torch.arange(len(asked)), asked] >= 0.5
        step = int(path.stem.split("_")[1])
        passes = float(info[max(s for s in info if s <= step)]["passes"])
        print(f"step {step:5d}  {passes:6.0f} passes  colour p>=0.5 {sure.float().mean():.2f}  by class "
              f"{[int(sure[asked == k].sum()) for k in range(cfg.num_classes)]}", flush=True)
    sys.exit()

if MODE == "folds":  # the measure as evaluate has it: five judges, each trained on four fifths of the photos
    for name, _, _ in [b for b in BLIND if len(sys.argv) < 3 or b[0] in sys.argv[2:]]:
        d = torch.load(f"{OUT}/{name}_blind.pt", weights_only=False)
        cfg = d["cfg"]
        images, labels = ddpm.training_images(DATA, cfg)
        t0 = time.time()
        judges, accuracy = ddpm.class_judges(images, labels, cfg.num_classes)
        p = ddpm.judge_probabilities(judges, d["images"])
        asked = d["labels"]; right = torch.tensor([v == "right" for v in d["verdict"]])
        sure = p[torch.arange(len(asked)), asked] >= 0.5
        print(f"{name}: judges' accuracy on held-out photos {accuracy:.2f} ({time.time() - t0:.0f} s); judged "
              f"{sure.float().mean():.2f}, rater {right.float().mean():.2f}; agree on {(sure == right).float().mean():.2f} "
              f"of the samples; AUC {auc(p[torch.arange(len(asked)), asked], right):.2f}")
        print(f"  by class judged {[int(sure[asked == k].sum()) for k in range(cfg.num_classes)]}  rater "
              f"{[int(right[asked == k].sum()) for k in range(cfg.num_classes)]}  {cfg.classes}", flush=True)
        pa = p[torch.arange(len(asked)), asked]
        torch.save({"p_asked": pa, "right": right, "asked": asked, "accuracy": accuracy}, f"{OUT}/{name}_folds.pt")
        for threshold in (0.6, 0.7, 0.8, 0.9):
            sure = pa >= threshold
            print(f"  p >= {threshold}: judged {sure.float().mean():.2f}, agree {(sure == right).float().mean():.2f}, "
                  f"by class {[int(sure[asked == k].sum()) for k in range(cfg.num_classes)]}", flush=True)
    sys.exit()

if MODE == "seeds":  # how much one judge's verdict depends on its training draw: the same samples, three seeds
    for name, _, _ in BLIND[1:]:
        d = torch.load(f"{OUT}/{name}_blind.pt", weights_only=False)
        images, labels = ddpm.training_images(DATA, d["cfg"])
        asked = d["labels"]; right = torch.tensor([v == "right" for v in d["verdict"]])
        for seed in range(3):
            for who, judge in [("compare.py's judge", train(images, labels, len(d["classes"]), seed=seed))] * (seed == 0) + [
                               ("the script's judge", ddpm.train_judge(images, labels, len(d["classes"]), seed))]:
                sure = (ddpm.judge_probabilities([judge], d["images"]) if who[4] == "s" else probs(judge, d["images"]))[torch.arange(len(asked)), asked] >= 0.5
                print(f"{name} seed {seed} {who}: judged {sure.float().mean():.2f} (rater {right.float().mean():.2f}), "
                      f"agree {(sure == right).float().mean():.2f}, by class {[int(sure[asked == k].sum()) for k in range(5)]}", flush=True)
    sys.exit()

if MODE == "folds_seeds":  # the five judges of evaluate at two more seeds: how much the adopted measure moves
    for name, _, _ in BLIND:
        d = torch.load(f"{OUT}/{name}_blind.pt", weights_only=False)
        images, labels = ddpm.training_images(DATA, d["cfg"])
        asked = d["labels"]; right = torch.tensor([v == "right" for v in d["verdict"]])
        for seed in (1, 2):
            judges, accuracy = ddpm.class_judges(images, labels, len(d["classes"]), seed)
            share, by_class = ddpm.judged_class_share(judges, d["images"], asked)
            sure = ddpm.judge_probabilities(judges, d["images"])[torch.arange(len(asked)), asked] >= ddpm.JUDGE_SURE
            print(f"{name} seed {seed}: accuracy on new photos {accuracy:.2f}; judged {share:.2f} (rater "
                  f"{right.float().mean():.2f}), agree {(sure == right).float().mean():.2f}, by class "
                  f"{[round(10 * s) for s in by_class]}", flush=True)
    sys.exit()

if MODE == "cas":
    for name in ["easy", "hard"]:
        d = torch.load(f"{OUT}/{name}_blind.pt", weights_only=False)
        cfg = d["cfg"]; k = len(d["classes"])
        images, labels = ddpm.training_images(DATA, cfg)
        right = torch.tensor([v == "right" for v in d["verdict"]])
        accs = []
        for seed in range(3):
            m = train(d["images"], d["labels"], k, seed=seed)
            accs.append(probs(m, images).argmax(1) == labels)
        acc = torch.stack(accs).float().mean(0)
        print(f"{name} CAS: photos right {acc.mean():.2f}; rater {right.float().mean():.2f}")
        for c in range(k):
            print(f"  {d['classes'][c]:9s} rater {int(right[d['labels']==c].sum()):2d}/10  CAS recall {acc[labels==c].mean():.2f}")
    sys.exit()

for name in ["easy", "hard"]:
    d = torch.load(f"{OUT}/{name}_blind.pt", weights_only=False)
    cfg = d["cfg"]; k = len(d["classes"])
    images, labels = ddpm.training_images(DATA, cfg)
    # held-out accuracy on real photos: 5 folds
    t0 = time.time()
    g = torch.Generator().manual_seed(0); order = torch.randperm(len(images), generator=g)
    correct = torch.zeros(len(images), dtype=torch.bool)
    for f in range(5):
        test = order[f::5]; trainidx = torch.tensor([i for i in order.tolist() if i not in set(test.tolist())])
        m = train(images[trainidx], labels[trainidx], k)
        correct[test] = probs(m, images[test]).argmax(1) == labels[test]
    m = train(images, labels, k)
    p = probs(m, d["images"])
    asked = d["labels"]; right = torch.tensor([v == "right" for v in d["verdict"]])
    pa = p[torch.arange(len(p)), asked]; hit = p.argmax(1) == asked
    # pixel NN
    dist, idx = ddpm.nearest_training_images(d["images"], images)
    nnhit = labels[idx[:, 0]] == asked
    torch.save({"pa": pa, "hit": hit, "right": right, "asked": asked, "nnhit": nnhit, "correct": correct, "labels": labels}, f"{OUT}/{name}_{MODE}_scores.pt")
    print(f"{name} {MODE}: photos held-out acc {correct.float().mean():.2f} ({time.time()-t0:.0f}s); rater right {right.float().mean():.2f}")
    sure = pa >= 0.5  # the asked class more likely than the other four together
    print(f"  p_asked >= 0.5 {sure.float().mean():.2f} (agrees with the rater on {(sure == right).float().mean():.2f} of the samples)")
    print(f"  classifier argmax==asked {hit.float().mean():.2f}  AUC(p_asked vs rater) {auc(pa, right):.2f}   pixelNN hit {nnhit.float().mean():.2f} AUC {auc(nnhit.float(), right):.2f}")
    for c in range(k):
        s = asked == c
        print(f"  {d['classes'][c]:9s} rater {int(right[s].sum()):2d}/10  clf {int(hit[s].sum()):2d}/10  p_asked {pa[s].mean():.2f}  p>=0.5 {int(sure[s].sum()):2d}/10  pixNN {int(nnhit[s].sum()):2d}/10  photos-heldout {correct[labels==c].float().mean():.2f}")
