"""Writes test_single_sample.ipynb, the viva notebook, without outputs (so its diffs stay clean).

    python tools/make_notebook.py
"""
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    ("markdown", """# Noise in, animal out: one sample from the trained DDPM
This notebook loads the model that `rollNumber_05.py train` saved and turns pure Gaussian noise into one animal image.
Run all cells; change `SEED` or `CLASS_NAME` in step 2 to draw another animal."""),
    ("code", """import time

import matplotlib.pyplot as plt
import torch

from rollNumber_05 import (DEFAULT_CHECKPOINT, DEFAULT_GUIDANCE, count_parameters, generate_from_noise, load_model,
                           seeded_noise, to_display)

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
The seed fixes this noise, so the same seed always gives the same animal."""),
    ("code", """SEED = 3
CLASS_NAME = cfg.classes[0]  # or any other name printed above
GUIDANCE = DEFAULT_GUIDANCE  # as `sample` uses: classifier-free guidance; 1.0: the paper's sampler, half the time

noise = seeded_noise(1, cfg.image_size, SEED)
plt.figure(figsize=(2.5, 2.5))
plt.imshow(to_display(noise[0].clamp(-1, 1)))
plt.title("x_T: pure noise")
plt.axis("off")
plt.show()"""),
    ("markdown", """## 3. Denoise it with the DDPM sampler
At each of the T steps the U-Net predicts the noise in x_t, the sampler removes part of it to get the mean of x_{t-1}, and adds a little fresh noise (none at the last step).
For a class-conditional model the class steers every step."""),
    ("code", """labels = [cfg.classes.index(CLASS_NAME)] if cfg.conditional else None
start = time.time()
image, trajectory = generate_from_noise(model, schedule, noise, sampler="ddpm", labels=labels,
                                        guidance=GUIDANCE if cfg.conditional else 1.0, seed=SEED,
                                        return_trajectory=True)
print(f"{schedule.timesteps} DDPM steps in {time.time() - start:.1f} s on {device}")"""),
    ("markdown", """## 4. The result
The final x_0, mapped from [-1, 1] back to colours."""),
    ("code", """plt.figure(figsize=(4, 4))
plt.imshow(to_display(image[0]))
plt.title(f"generated {CLASS_NAME if cfg.conditional else 'sample'} (seed {SEED})")
plt.axis("off")
plt.show()"""),
    ("markdown", """## 5. The steps in between
From left to right: x_t as t goes from T down to 0. The coarse layout appears first, the fine detail only in the last steps."""),
    ("code", """fig, axes = plt.subplots(1, len(trajectory), figsize=(1.5 * len(trajectory), 2))
for ax, (t, x) in zip(axes, trajectory):
    ax.imshow(to_display(x[0]))
    ax.set_title(f"t = {t}", fontsize=9)
    ax.axis("off")
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
