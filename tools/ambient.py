"""Experiment: train rollNumber_05's model the ambient way at high noise (Shah et al. 2025, "Does Generation Require
Memorization? Creative Diffusion Models using Ambient Diffusion"), to compare with `train --augment`.

    OMP_NUM_THREADS=1 python tools/ambient.py --noisy-from 300 train --data-dir DATA --out-dir runs/mem/amb300 ...

Everything after --noisy-from N is a `train` command of the script, run unchanged except for two things:
- each photo x_0 gets one noisy copy x_N ~ q(x_N | x_0), drawn once from a seed and kept for the whole run;
- at the steps t > N (paper numbering) the network learns from those copies only: x_t ~ q(x_t | x_N), and its
  estimate of x_0 is scored by the x_N it implies (the mean of q(x_N | x_t, x_0)) against the kept copy. At t <= N
  it trains as usual on the clean photos.
So the high-noise part of the network, which decides what is drawn, never sees a clean photo; the low-noise part,
which draws the fine detail, does. With fresh noise every step the loss would have the ordinary minimiser (the
copies would average back to the photo), hence one copy per photo. The patches reach a GPU run's data-loading
worker because Linux forks it (Python before 3.14). Not part of the submission: at 32 px, on top of
the default augmentation, it kept samples a little further from the photos at the same class share, not enough
to change what the default recipe gives at the default guidance (results/memorisation_32px); it becomes a `train`
flag if tools/gpu_candidates.sh shows more at 64 px.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rollNumber_05 as ddpm  # noqa: E402

COPY_SEED = 12_345  # the noisy copies: the same in every run with the same --noisy-from


def item_with_copy_noise(self, i):
    """AnimalPhotos.__getitem__ with 6 channels: the photo and the noise of its one noisy copy (drawn from a seed, so
    the same in every pass), flipped and augmented together. The loss makes the copy x_N from the two."""
    clean = ddpm.to_model_range(self.images[i])
    x = torch.cat([clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(COPY_SEED + i))])
    if self.flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    x, params = ddpm.augment_image(x, self.augment)
    return x, int(self.labels[i]), params


def ambient_terms(schedule, t, noisy_from):
    """For x_t made from x_N: the coefficients of the posterior mean E[x_N | x_t, x_0] = c1 x_0 + c2 x_t."""
    alpha_bar_t = schedule.gather(schedule.alphas_cumprod, t)
    alpha_bar_n = schedule.alphas_cumprod[noisy_from - 1]
    c1 = alpha_bar_n.sqrt() * (1 - alpha_bar_t / alpha_bar_n) / (1 - alpha_bar_t)
    c2 = (alpha_bar_t / alpha_bar_n).sqrt() * (1 - alpha_bar_n) / (1 - alpha_bar_t)
    return alpha_bar_t, alpha_bar_n, c1, c2


def ambient_loss(model, schedule, photo_and_copy_noise, labels, cfg, augment=None, noisy_from=300):
    """The script's training_loss, with the steps t > N trained on the noisy copies.

    From x_N the forward process runs on: x_t = sqrt(a_t / a_N) x_N + sqrt(1 - a_t / a_N) epsilon (a: alpha_bar).
    The network's noise guess e gives x_0 = (x_t - sqrt(1 - a_t) e) / sqrt(a_t) and so a guess of x_N,
    c1 x_0 + c2 x_t; its error against the copy, times sqrt(a_t / (1 - a_t) / a_N), is in the units of the noise
    loss (the same at t = T, smaller near N where the target is mostly noise). Written without dividing by
    sqrt(a_t), which is tiny at t = T. Its expectation over copies is c1 / sqrt(a_N) times the ordinary noise error."""
    x0, copy_noise = photo_and_copy_noise.chunk(2, dim=1)
    if not 1 <= noisy_from < schedule.timesteps:
        raise ddpm.UserError(f"--noisy-from {noisy_from} must be a step between 1 and {schedule.timesteps - 1}")
    step_n = torch.full((len(x0),), noisy_from - 1, device=x0.device)
    copy = schedule.q_sample(x0, step_n, copy_noise)  # x_N ~ q(x_N | x_0)
    t = torch.randint(0, schedule.timesteps, (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    alpha_bar_t, alpha_bar_n, c1, c2 = ambient_terms(schedule, t, noisy_from)
    ratio = (alpha_bar_t / alpha_bar_n).clamp(max=1)
    from_copy = (t >= noisy_from).view(-1, 1, 1, 1)  # index t >= N is paper step t + 1 > N
    x_t = torch.where(from_copy, ratio.sqrt() * copy + (1 - ratio).sqrt() * noise, schedule.q_sample(x0, t, noise))
    if labels is not None and cfg.cond_drop > 0:
        dropped = torch.rand(len(x0), device=x0.device) < cfg.cond_drop
        labels = torch.where(dropped, torch.full_like(labels, cfg.num_classes), labels)
    guess = model(x_t, t, labels, augment).float()
    sigma_t, root_a_t = (1 - alpha_bar_t).sqrt(), alpha_bar_t.sqrt()
    scale = 1 / (sigma_t * alpha_bar_n.sqrt())
    target = ((c1 + c2 * root_a_t) * x_t - root_a_t * copy) * scale
    ambient = ddpm.diffusion_loss(c1 / alpha_bar_n.sqrt() * guess, target)
    return torch.where(from_copy.flatten(), ambient, ddpm.diffusion_loss(guess, noise)), t


def main(argv):
    if len(argv) < 2 or argv[0] != "--noisy-from" or not argv[1].isdigit():
        sys.exit("usage: python tools/ambient.py --noisy-from N train ...")
    noisy_from, rest = int(argv[1]), argv[2:]
    if rest[:1] == ["train"]:  # half-size steps would average the copy noise over 2x2 pixels and shrink its variance
        rest = [*rest, "--low-res-share", "0"]
    ddpm.AnimalPhotos.__getitem__ = item_with_copy_noise
    ddpm.training_loss = lambda *args, **kwargs: ambient_loss(*args, **kwargs, noisy_from=noisy_from)
    return ddpm.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
