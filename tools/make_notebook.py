"""Writes test_single_sample.ipynb, the viva notebook, without outputs (so its diffs stay clean).

    python tools/make_notebook.py
"""
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    ("markdown", """# Noise in, animals out: one sample of each class from the trained DDPM
This notebook loads the model that `rollNumber_05.py train` saved and turns pure Gaussian noise into one image of every class,
with the sampler and guidance of the report's sample grid. Run all cells; change `SEED` in step 2 to draw other animals."""),
    ("code", """import time

import matplotlib.pyplot as plt
import torch

from rollNumber_05 import (DEFAULT_CHECKPOINT, class_labels, count_parameters, generate_from_noise, guidance_for,
                           load_model, seeded_noise, to_display)

device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", device)"""),
    ("markdown", """## 1. Load the saved model
The checkpoint holds the EMA weights of the U-Net together with the configuration it was trained with, so no training flags are needed.
`load_model` rebuilds the network and the noise schedule (betas, alphas and their cumulative product) from it."""),
    ("code", """model, schedule, cfg = load_model(DEFAULT_CHECKPOINT, device)
print(f"{count_parameters(model) / 1e6:.1f} M parameters, {cfg.image_size} px images, T = {schedule.timesteps} steps")
print("classes:", ", ".join(cfg.classes))"""),
    ("markdown", """## 2. Draw the starting noise x_T
The reverse process starts from x_T ~ N(0, I): every pixel is an independent standard normal number, with no trace of any image.
One noise image per class; the seed fixes them, so the same seed always gives the same animals."""),
    ("code", """SEED = 3
STEPS = 50                    # DDIM steps, as the report's sample grid
GUIDANCE = guidance_for(cfg)  # classifier-free guidance, as the grid and `sample` use; 1.0 turns it off

noise = seeded_noise(len(cfg.classes), cfg.image_size, SEED)
labels = class_labels(cfg, len(cfg.classes))  # noise k is denoised as class k
print(f"x_T: shape {tuple(noise.shape)}, mean {noise.mean():.3f}, std {noise.std():.3f}")"""),
    ("markdown", """## 3. Denoise it with DDIM
At each step the U-Net predicts the noise in x_t; DDIM turns that guess into an estimate of x_0 and puts the two back together at an earlier t,
so `STEPS` steps cover all T. It adds no fresh noise: the same x_T always gives the same image. The class steers every step."""),
    ("code", """start = time.time()
images, trajectory = generate_from_noise(model, schedule, noise, "ddim", STEPS, labels=labels, guidance=GUIDANCE,
                                         seed=SEED, return_trajectory=True)
print(f"{STEPS} DDIM steps at guidance {GUIDANCE:g} for {len(images)} images in {time.time() - start:.1f} s "
      f"on {device}")"""),
    ("markdown", """## 4. The result
The final x_0 of each class, mapped from [-1, 1] back to colours."""),
    ("code", """fig, axes = plt.subplots(1, len(cfg.classes), figsize=(2.2 * len(cfg.classes), 2.6), squeeze=False)
for ax, image, name in zip(axes[0], images, cfg.classes):
    ax.imshow(to_display(image))
    ax.set_title(name)
    ax.axis("off")
plt.show()"""),
    ("markdown", """## 5. The steps in between
One row per class, from left to right x_t as t goes from T down to 0. The coarse layout appears first, the fine detail only in the last steps."""),
    ("code", """fig, axes = plt.subplots(len(cfg.classes), len(trajectory), squeeze=False,
                         figsize=(1.2 * len(trajectory), 1.3 * len(cfg.classes)))
for col, (t, x) in enumerate(trajectory):
    axes[0, col].set_title(f"t = {t}", fontsize=9)
    for row in range(len(cfg.classes)):
        axes[row, col].imshow(to_display(x[row]))
        axes[row, col].set(xticks=[], yticks=[])
for row, name in enumerate(cfg.classes):
    axes[row, 0].set_ylabel(name, fontsize=9)
plt.show()"""),
]


def build_notebook():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
                      for kind, text in CELLS]
    for number, cell in enumerate(notebook.cells):
        cell.id = f"cell-{number:02d}"  # fixed ids: rebuilding the notebook changes nothing
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


if __name__ == "__main__":
    nbformat.write(build_notebook(), ROOT / "test_single_sample.ipynb")
    print("wrote test_single_sample.ipynb")
