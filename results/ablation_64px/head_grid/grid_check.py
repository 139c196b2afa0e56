"""Does the U-Net without its full-resolution head leave the 2 x 2 grid of the depth-to-space in its samples?

    python results/ablation_64px/head_grid/grid_check.py default no_head     # run folders in runs/ablation_64px

For each run, 50 samples (10 per class, DDIM 50, guidance 3, noise seed 1: the blind test's draw) and the photos.
Grid ratio: the mean absolute difference between neighbouring pixels that straddle a 2 x 2 block boundary
(columns/rows 2k+1 and 2k+2) over the same for neighbours inside a block (2k and 2k+1). About 1 when nothing marks
the blocks; above 1 when block edges show. Writes crops.png: the top-left quarter of one sample per class of each run, enlarged.
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "animals"


def grid_ratio(images):
    across_w = (images[..., 2::2] - images[..., 1:-1:2]).abs().mean()
    inside_w = (images[..., 1::2] - images[..., 0::2]).abs().mean()
    across_h = (images[..., 2::2, :] - images[..., 1:-1:2, :]).abs().mean()
    inside_h = (images[..., 1::2, :] - images[..., 0::2, :]).abs().mean()
    return float((across_w + across_h) / (inside_w + inside_h))


crops = []
for name in sys.argv[1:]:
    model, schedule, cfg = ddpm.load_model(ROOT / "runs" / "ablation_64px" / name / "model.pt", "cpu")
    labels = torch.arange(cfg.num_classes).repeat_interleave(10)
    samples = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(len(labels), cfg.image_size, 1), "ddim", 50,
                                       labels=labels, guidance=ddpm.guidance_for(cfg), seed=1)
    print(f"{name:10s} grid ratio of the samples {grid_ratio(samples):.3f}", flush=True)
    crops.append((name, samples[::10, :, :32, :32]))  # the first sample of each class
photos, _ = ddpm.training_images(DATA, cfg)
print(f"{'photos':10s} grid ratio {grid_ratio(photos):.3f}")
plt = ddpm.pyplot()
fig, axes = plt.subplots(len(crops), cfg.num_classes, figsize=(2.2 * cfg.num_classes, 2.3 * len(crops)),
                         squeeze=False)
for row, (name, images) in zip(axes, crops):
    for ax, image in zip(row, images):
        ax.imshow(ddpm.to_display(image), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
ddpm.save_figure(fig, Path(__file__).parent / "crops.png")
