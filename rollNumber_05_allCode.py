"""The code of the submission in one file: rollNumber_05.py and test_single_sample.ipynb, each under a header.

Each file runs on its own as shipped; this file gathers them for reading and only has to compile.
"""


####################################################################################################
# ==== file: rollNumber_05.py ====
####################################################################################################
"""A denoising diffusion model (DDPM, Ho et al. 2020) that learns from a handful of animal photos.

One file, read top to bottom in the order of the assignment:
  1 data  2 forward process  3 model  4 loss  5 training  6 sampling  7 evaluation and figures  8 CLI

    python rollNumber_05.py train --data-dir DATA --classes Dolphin,Giraffe,Panda,Tiger,Zebra
    python rollNumber_05.py sample --out samples.png
    python rollNumber_05.py forward --data-dir DATA --out forward.png
    python rollNumber_05.py evaluate --data-dir DATA --out-json metrics.json
    torchrun --nproc_per_node 4 rollNumber_05.py train ...    (several GPUs; --batch-size is per process)

Symbols follow the paper: x_0 is a clean image, x_t its noised version at step t, epsilon the
Gaussian noise, beta_t the schedule, alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s.
Timestep indices run 0..T-1 in code; index i is the paper's step t = i + 1.
"""
import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "saved_models" / "ddpm_animals.pt"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line, without a traceback."""


@dataclass
class Config:
    """Everything that defines a run. Saved inside every checkpoint as plain types."""
    # data
    data_dir: str = ""
    classes: list = field(default_factory=list)  # class names, resolved when the data is read
    num_classes: int = 5
    images_per_class: int = 20
    image_size: int = 32  # 32 px: recognisable animals within 30 minutes on a 2-core CPU; 64 px wants a GPU
    flip: bool = True
    # forward process
    timesteps: int = 1000
    schedule: str = "linear"
    # model
    patch_size: int = 2
    base_channels: int = 32
    channel_mults: list = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 1
    attention_resolutions: list = field(default_factory=lambda: [8])
    dropout: float = 0.0
    conditional: bool = True  # class-conditional: every class can be asked for, and guidance sharpens it
    cond_drop: float = 0.1
    # loss
    loss: str = "mse"
    prediction: str = "eps"
    # training
    epochs: int = 1600  # 6,400 steps of 32: 31 minutes on a 2-core CPU at 32 px (results/cpu_training.png)
    batch_size: int = 32
    lr: float = 1e-3  # the best of the learning-rate sweep (results/lr_sweep.png)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    log_every: int = 10
    sample_every: int = 100
    save_every: str = "5m"
    max_bad_steps: int = 20


ARCHITECTURE_KEYS = ("image_size", "timesteps", "patch_size", "base_channels", "channel_mults", "num_res_blocks",
                     "attention_resolutions", "conditional", "num_classes", "prediction")


def config_from_dict(stored):
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in stored.items() if k in known})


def check_image_size(cfg):
    if not cfg.channel_mults:
        raise UserError("--channel-mults needs at least one level, e.g. 1,2,2,4")
    factor = cfg.patch_size * 2 ** (len(cfg.channel_mults) - 1)
    if cfg.image_size < 8 or cfg.image_size % factor:
        raise UserError(f"--image-size {cfg.image_size} does not fit this U-Net: it must be at least 8 and a multiple "
                        f"of {factor} (patches of {cfg.patch_size}, then {len(cfg.channel_mults) - 1} halvings); "
                        f"try {max(math.ceil(8 / factor), round(cfg.image_size / factor)) * factor}")


# ---------------------------------------------------------------------------------------------
# 1. Data: a folder of class subfolders -> a tensor of images in [-1, 1] with class labels
# ---------------------------------------------------------------------------------------------

def list_class_folders(root):
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist (expected {root}/<Class>/*.jpg)")
    # hidden folders and the __MACOSX folder that Mac zips carry are not classes
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    if not folders:
        raise UserError(f"data folder {root} has no class subfolders (expected {root}/<Class>/*.jpg)")
    return folders


def select_classes(root, class_names=None, num_classes=5):
    """Picks class folders by name, or the first `num_classes` alphabetically."""
    folders = {p.name: p for p in list_class_folders(root)}
    if class_names:
        lower = {name.lower(): name for name in folders}
        missing = [c for c in class_names if c.lower() not in lower]
        if missing:
            raise UserError(f"no class folder named {', '.join(missing)} in {root}; "
                            f"classes there: {', '.join(folders)}")
        return [folders[lower[c.lower()]] for c in class_names]
    if num_classes < 1 or num_classes > len(folders):
        raise UserError(f"--num-classes {num_classes} asked, but {root} has {len(folders)} class folders")
    return list(folders.values())[:num_classes]


def image_files(folder):
    """Candidate image files under a class folder (nested folders too), skipping hidden ones."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return files


def to_rgb(img):
    """Any PIL mode to RGB: EXIF orientation applied, 16-bit scaled to 8-bit, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_image(path, size):
    """Decodes one file to a uint8 tensor [3, size, size]: short side resized, centre cropped."""
    with Image.open(path) as img:
        img = ImageOps.fit(to_rgb(img), (size, size), method=Image.Resampling.BICUBIC)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


class AnimalPhotos(torch.utils.data.Dataset):
    """The chosen classes' photos, decoded once and cached in memory as uint8 (the set is tiny).

    Items are (image in [-1, 1], class index); a random horizontal flip is applied when `flip` is set.
    Unreadable files are skipped and counted in `skipped`.
    """

    def __init__(self, root, class_names=None, num_classes=5, images_per_class=20, image_size=64, flip=True):
        self.root, self.flip = Path(root), flip
        folders = select_classes(root, class_names, num_classes)
        self.class_names = [f.name for f in folders]
        self.skipped = []
        images, labels = [], []
        for label, folder in enumerate(folders):
            taken = self._read_class(folder, images_per_class, image_size)
            self._check_count(folder, len(taken), images_per_class)
            images += taken
            labels += [label] * len(taken)
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels)

    def _check_count(self, folder, found, asked):
        """A few photos short is a warning; under half of what was asked would unbalance the classes: an error."""
        if found >= asked:
            return
        skipped = sum(1 for path, _ in self.skipped if path.is_relative_to(folder))
        counts = f"class {folder.name} has {found} usable images in {folder}" + \
            (f" ({skipped} unreadable files skipped)" if skipped else "")
        if found < max(1, (asked + 1) // 2):
            raise UserError(f"{counts}, {asked} asked; use --images-per-class {found} or add photos"
                            if found else f"{counts}; add photos or choose another class")
        print(f"warning: {counts}, {asked} asked; using {found}", file=sys.stderr)

    def _read_class(self, folder, count, size):
        taken = []
        for path in image_files(folder):
            if len(taken) == count:
                break
            try:
                taken.append(load_image(path, size))
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
                self.skipped.append((path, f"{type(err).__name__}: {err}"))
        return taken

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float() / 127.5 - 1
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])


class Shard(NamedTuple):
    """This process's place among torchrun's processes; rank 0 of 1 for a plain run."""
    rank: int = 0
    world_size: int = 1


def epoch_order(num_images, batch_size, epoch, seed, shard=Shard()):
    """This rank's image indices for one epoch, a row per step: a seeded permutation (repeated when the global
    batch is larger than the set), cut into global batches of batch_size x world_size, of which each rank takes
    its own slice. Depends only on (epoch, seed), so a resumed run sees the data order of an uninterrupted one."""
    global_batch = batch_size * shard.world_size
    steps = math.ceil(num_images / global_batch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    needed = steps * global_batch
    order = torch.cat([torch.randperm(num_images, generator=gen) for _ in range(math.ceil(needed / num_images))])
    return order[:needed].view(steps, shard.world_size, batch_size)[:, shard.rank]


def draw_for_global_batch(draw, local_size, shard):
    """Draws random numbers for the whole global batch and keeps this rank's slice, so that every rank, and a
    single process given the same global batch, use the same numbers for the same image."""
    return draw(local_size * shard.world_size)[shard.rank * local_size:(shard.rank + 1) * local_size]


def batch_to_model_input(images_uint8, flip, shard=Shard()):
    """uint8 batch on the device -> float in [-1, 1], each image flipped left-right with probability 1/2."""
    x = images_uint8.float() / 127.5 - 1
    if flip:
        mirror = draw_for_global_batch(lambda n: torch.rand(n, 1, 1, 1, device=x.device) < 0.5, len(x), shard)
        x = torch.where(mirror, x.flip(-1), x)
    return x


# ---------------------------------------------------------------------------------------------
# 2. Forward process q(x_t | x_0): the noise schedule and everything derived from it
# ---------------------------------------------------------------------------------------------

def make_betas(kind, timesteps):
    if kind == "linear":  # DDPM paper, section 4: beta from 1e-4 to 0.02
        return torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    if kind == "cosine":  # Nichol & Dhariwal 2021, eq. 17, with their s = 0.008 and beta capped at 0.999
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise UserError(f"unknown --schedule {kind!r}; use linear or cosine")


class NoiseSchedule:
    """beta_t, alpha_t, alpha_bar_t (the cumulative product) and the posterior q(x_{t-1} | x_t, x_0) terms,
    computed once in float64 and stored as float32 on the training device."""

    def __init__(self, timesteps=1000, kind="linear", device="cpu"):
        self.timesteps = timesteps
        betas = make_betas(kind, timesteps)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)  # beta tilde, eq. 7
        terms = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        }
        for name, value in terms.items():
            setattr(self, name, value.to(device=device, dtype=torch.float32))

    @staticmethod
    def gather(values, t):
        """values[t] shaped to broadcast over a batch of images."""
        return values[t].view(-1, 1, 1, 1)

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) epsilon: q(x_t | x_0) in closed form (eq. 4)."""
        return self.gather(self.sqrt_alphas_cumprod, t) * x0 + self.gather(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def q_step(self, x_prev, t, noise):
        """One step of the chain: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) epsilon (eq. 2)."""
        beta = self.gather(self.betas, t)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def predict_x0(self, x_t, t, eps):
        """Inverts q_sample: the clean image implied by x_t and a noise estimate."""
        return (x_t - self.gather(self.sqrt_one_minus_alphas_cumprod, t) * eps) / self.gather(self.sqrt_alphas_cumprod, t)

    def predict_eps(self, x_t, t, x0):
        return (x_t - self.gather(self.sqrt_alphas_cumprod, t) * x0) / self.gather(self.sqrt_one_minus_alphas_cumprod, t)

    def velocity(self, x0, t, noise):
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022), the --prediction v target."""
        return self.gather(self.sqrt_alphas_cumprod, t) * noise - self.gather(self.sqrt_one_minus_alphas_cumprod, t) * x0

    def q_posterior_mean(self, x0, x_t, t):
        """Mean of q(x_{t-1} | x_t, x_0) (eq. 7)."""
        return self.gather(self.posterior_mean_coef1, t) * x0 + self.gather(self.posterior_mean_coef2, t) * x_t

    def x0_from_output(self, model_out, x_t, t, prediction):
        """The clean image implied by the network output (a noise estimate, or v for --prediction v)."""
        if prediction == "eps":
            return self.predict_x0(x_t, t, model_out)
        return self.gather(self.sqrt_alphas_cumprod, t) * x_t - self.gather(self.sqrt_one_minus_alphas_cumprod, t) * model_out

    def eps_and_x0(self, model_out, x_t, t, prediction):
        """Noise and clean-image estimates for sampling, with x_0 clipped to the data range [-1, 1]."""
        x0 = self.x0_from_output(model_out, x_t, t, prediction).clamp(-1, 1)
        return self.predict_eps(x_t, t, x0), x0

    def training_target(self, x0, t, noise, prediction):
        return noise if prediction == "eps" else self.velocity(x0, t, noise)


# ---------------------------------------------------------------------------------------------
# 3. Model: a small time-conditioned U-Net that predicts the noise in x_t
# ---------------------------------------------------------------------------------------------

def group_norm(channels):
    # GroupNorm, not BatchNorm: statistics per image, so it behaves the same at batch 1 (sampling) and with tiny batches
    return nn.GroupNorm(min(8, channels), channels)


def zero_init(module):
    # A layer that starts at zero makes its residual branch start as the identity: stable early training
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def timestep_embedding(t, dim):
    """Sinusoidal features of t (Transformer positional encoding): smooth in t and distinct for every step."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip path; the (time, class) embedding scales and shifts the features."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)  # 3x3: smallest kernel that sees neighbours; stacked for reach
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)  # per-channel scale and shift: how noisy x_t is changes every feature
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)  # regulariser against memorising 100 photos (0 by default; raise for long runs)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))  # zero: the block starts as the identity
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()  # 1x1 only to match channels

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # SiLU: smooth and non-zero for negatives (no dead units), as in DDPM
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # applied after the norm, so the norm cannot undo the conditioning
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h  # residual: gradients flow straight through a deep net


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a feature map: relates distant parts (head and tail)."""

    def __init__(self, channels, head_channels=32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)  # 1x1 conv = a linear map per pixel to queries, keys, values
        self.out = zero_init(nn.Conv2d(channels, channels, 1))  # zero: starts as the identity

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        # fused attention kernel (flash / memory-efficient where available): no h*w x h*w matrix kept for backward
        attended = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A ResBlock, followed by self-attention at the low resolutions where it is cheap (quadratic in pixels)."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout, attention):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch) if attention else nn.Identity()

    def forward(self, x, emb):
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # learned stride-2 conv: keeps what pooling throws away

    def forward(self, x, emb):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)  # nearest + conv: no checkerboard of transposed convs

    def forward(self, x, emb):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """epsilon_theta(x_t, t[, class]): down path, middle, up path with skip connections (Ronneberger et al.)."""

    def __init__(self, cfg):
        super().__init__()
        ch, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        self.prediction, self.base_channels = cfg.prediction, ch
        self.null_class = cfg.num_classes if cfg.conditional else None  # the "no class" label for guidance
        self.time_mlp = nn.Sequential(  # MLP on the sinusoid: lets the net learn its own features of t
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # learned class vectors plus one "no class" entry, added to the time embedding (classifier-free guidance)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.conditional else None
        # space-to-depth: each p x p patch becomes one pixel of 3p^2 channels, so every layer runs on p^2 times
        # fewer pixels (the biggest saving on a CPU); p = 1 keeps full resolution
        self.patch = cfg.patch_size
        self.stem = nn.Conv2d(3 * self.patch ** 2, ch, 3, padding=1)  # pixels -> feature channels
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, res, in_ch = [ch], cfg.image_size // self.patch, ch
        last = len(cfg.channel_mults) - 1
        for level, mult in enumerate(cfg.channel_mults):  # halve the size, widen the channels: more context per pixel
            for _ in range(cfg.num_res_blocks):
                self.down.append(Block(in_ch, ch * mult, emb_dim, cfg.dropout, res in cfg.attention_resolutions))
                in_ch = ch * mult
                skips.append(in_ch)
            if level != last:
                self.down.append(Downsample(in_ch))
                skips.append(in_ch)
                res //= 2
        self.middle = nn.ModuleList([  # the lowest resolution: global context through attention
            Block(in_ch, in_ch, emb_dim, cfg.dropout, attention=True),
            Block(in_ch, in_ch, emb_dim, cfg.dropout, attention=False)])
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):  # skips from the down path restore the detail lost by downsampling
                self.up.append(Block(in_ch + skips.pop(), ch * mult, emb_dim, cfg.dropout, res in cfg.attention_resolutions))
                in_ch = ch * mult
            if level != 0:
                self.up.append(Upsample(in_ch))
                res *= 2
        self.out_norm = group_norm(in_ch)
        # zero: the first prediction is 0, the noise's mean; depth-to-space turns 3p^2 channels back into p x p pixels
        self.out_conv = zero_init(nn.Conv2d(in_ch, 3 * self.patch ** 2, 3, padding=1))

    def forward(self, x, t, labels=None):
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            labels = torch.full_like(t, self.null_class) if labels is None else labels
            emb = emb + self.class_emb(labels)
        h = self.stem(F.pixel_unshuffle(x, self.patch))
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, Block):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb)
        return F.pixel_shuffle(self.out_conv(F.silu(self.out_norm(h))), self.patch)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# 4. Loss: our own per-image error between the network output and its target
# ---------------------------------------------------------------------------------------------

def diffusion_loss(prediction, target, kind="mse"):
    """Mean error per image (shape [batch]): squared (the DDPM simple loss, eq. 14), absolute, or Huber
    (squared below 1, absolute above: robust to the rare large error)."""
    err = prediction.float() - target.float()
    if kind == "mse":
        per_pixel = err * err
    elif kind == "l1":
        per_pixel = err.abs()
    elif kind == "huber":
        size = err.abs()
        per_pixel = torch.where(size <= 1, 0.5 * err * err, size - 0.5)
    else:
        raise UserError(f"unknown --loss {kind!r}; use mse, l1 or huber")
    return per_pixel.flatten(1).mean(dim=1)


def training_loss(model, schedule, x0, labels, cfg, shard=Shard()):
    """Ho et al. algorithm 1: random t, noise x_0 through q(x_t | x_0), score the network's guess.
    Returns the per-image losses and the timesteps drawn (for the per-timestep log)."""
    n, device = x0.shape[0], x0.device
    t = draw_for_global_batch(lambda k: torch.randint(0, schedule.timesteps, (k,), device=device), n, shard)
    noise = draw_for_global_batch(lambda k: torch.randn((k, *x0.shape[1:]), device=device), n, shard)
    x_t = schedule.q_sample(x0, t, noise)
    if labels is not None and cfg.cond_drop > 0:  # drop the class sometimes, so one net is also the unconditional one
        dropped = draw_for_global_batch(lambda k: torch.rand(k, device=device), n, shard) < cfg.cond_drop
        labels = torch.where(dropped, torch.full_like(labels, cfg.num_classes), labels)
    target = schedule.training_target(x0, t, noise, cfg.prediction)
    return diffusion_loss(model(x_t, t, labels), target, cfg.loss), t


# ---------------------------------------------------------------------------------------------
# 5. Training
# ---------------------------------------------------------------------------------------------

def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


GPU_BATCH_SIZE = 256  # below this a GPU step is launch-bound: as fast at 32 images as at 256 (results/bench_cuda.json)


def device_defaults(device_type):
    """Config values whose best default depends on the device, for flags not given: a batch that fills a GPU."""
    return {"batch_size": GPU_BATCH_SIZE} if device_type == "cuda" else {}


def use_bf16(cfg, device):
    """bf16 autocast: on by default on CUDA (tensor cores); on CPU only when asked (--precision bf16)."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def use_channels_last(cfg, device):
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def autocast(device, enabled):
    # no cache of bf16 weight copies: a cached copy made while a CUDA graph records would outlive the recording
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)


def compile_model(model, device, cuda_graphs=True):
    """torch.compile (--compile) fuses the elementwise work around the convolutions. On CUDA its 'reduce-overhead'
    mode also replays forward and backward as CUDA graphs: at the batches 100 photos allow, a GPU step waits on
    kernel launches more than on arithmetic. Not under torchrun, whose gradient averaging runs inside backward."""
    return torch.compile(model, mode="reduce-overhead" if cuda_graphs and device.type == "cuda" else "default")


def lr_factor(step, warmup_steps, total_steps):
    """Linear warm-up (AdamW's first steps are noisy), then cosine decay to 10% of the peak."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the weights: the averaged model samples far better than the raw one.
    Its decay warms up as min(decay, (1 + step) / (10 + step)) so that short runs are not dominated by the init."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step):
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)


def parse_save_every(text):
    """'500' -> every 500 steps; '5m' -> every 5 minutes. Returns (steps, seconds), one of them None."""
    text = str(text).strip().lower()
    try:
        if text.endswith("m"):
            minutes = float(text[:-1])
            if 0 < minutes < math.inf:
                return None, minutes * 60
        elif int(text) > 0:
            return int(text), None
    except ValueError:
        pass
    raise UserError(f"--save-every {text!r} is not a positive step count (500) or minutes (5m)")


def checkpoint_dir(out_dir):
    return Path(out_dir) / "checkpoints"


def save_atomically(payload, path):
    """Write to a temporary file in the same folder, fsync, then rename over the target: a crash at any moment
    leaves either the old file or the complete new one, never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"could not write {path} ({err.strerror or err}); the previous checkpoint is intact") from None
        raise


def remove_stale_temp_files(out_dir):
    """Temporary files of a save that a kill -9 interrupted: never complete, so never worth keeping."""
    for stale in [*checkpoint_dir(out_dir).glob(".step_*.pt.*.tmp"), *Path(out_dir).glob(".model.pt.*.tmp")]:
        stale.unlink(missing_ok=True)


def save_training_checkpoint(out_dir, payload, keep=2):
    """checkpoints/step_XXXXXXXX.pt; the older ones beyond `keep` are removed only once the new one is complete."""
    folder = checkpoint_dir(out_dir)
    save_atomically(payload, folder / f"step_{payload['step']:08d}.pt")
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink()


def load_checkpoint(path):
    """torch.load with weights_only=True: tensors and plain values only, so a crafted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError, KeyError: unsafe or damaged
        unsafe = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if unsafe:
            raise UserError(f"{path} holds Python objects other than tensors and plain values ({unsafe[0][:120]}); "
                            f"refused: loading it could run code") from None
        raise UserError(f"{path} is not a readable checkpoint: damaged, truncated or not a PyTorch file "
                        f"({type(err).__name__})") from None
    if not isinstance(payload, dict) or "config" not in payload or not ({"ema", "model"} & payload.keys()):
        raise UserError(f"{path} is not a checkpoint of this script (no config and weights inside)")
    return payload


def latest_checkpoint(out_dir):
    """Newest loadable training checkpoint in out_dir; damaged ones are reported and passed over."""
    candidates = sorted(checkpoint_dir(out_dir).glob("step_*.pt"), reverse=True)
    if not candidates:
        raise UserError(f"--resume: no checkpoint in {checkpoint_dir(out_dir)}")
    for path in candidates:
        try:
            return load_checkpoint(path), path
        except UserError as err:
            print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr)
    raise UserError(f"--resume: no readable checkpoint in {checkpoint_dir(out_dir)}")


def build_model(cfg, state_dict=None):
    """A U-Net for sampling, with the given weights. Channels-last: at the small batches of sampling, oneDNN's
    convolutions run faster in that layout on a CPU (DDIM 50 at 64 px: about 0.7 s instead of 0.8), as cuDNN's do."""
    model = UNet(cfg).to(memory_format=torch.channels_last)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise UserError(f"checkpoint weights do not fit the model its config describes: "
                            f"{str(err).splitlines()[1].strip()[:200] if len(str(err).splitlines()) > 1 else err}") from None
    return model


def load_model(path=DEFAULT_CHECKPOINT, device="cpu", weights="ema"):
    """A checkpoint -> (model in eval mode, its NoiseSchedule, its Config). Needs no training flags."""
    payload = load_checkpoint(path)
    cfg = config_from_dict(payload["config"])
    if weights == "raw" and "model" not in payload:
        raise UserError(f"{path} holds only the EMA weights (an exported model.pt); use --weights ema or a "
                        f"checkpoints/step_*.pt file")
    model = build_model(cfg, payload["ema"] if weights == "ema" and "ema" in payload else payload["model"])
    device = torch.device(device)
    return model.to(device).eval(), NoiseSchedule(cfg.timesteps, cfg.schedule, device), cfg


def resumed_config(stored, given, explicit):
    """The stored run's config, with the flags given on this command line applied. Architecture flags must
    match what the checkpoint was trained with."""
    cfg = config_from_dict(stored)
    clashes = [f"--{k.replace('_', '-')} {getattr(given, k)} (checkpoint has {getattr(cfg, k)})"
               for k in explicit if k in ARCHITECTURE_KEYS and getattr(given, k) != getattr(cfg, k)]
    if clashes:
        raise UserError("--resume: the checkpoint was trained with a different model: " + "; ".join(clashes))
    return dataclasses.replace(cfg, **{k: getattr(given, k) for k in explicit if k not in ARCHITECTURE_KEYS})


class GracefulStop:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step (it then saves); a second Ctrl-C aborts."""

    def __init__(self):
        self.signal_name = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Progress:
    """A one-line progress display on stderr (a fresh line every 30 s when stderr is not a terminal)."""

    def __init__(self, total, label):
        self.total, self.label, self.start = total, label, time.time()
        self.is_tty, self.last_draw = sys.stderr.isatty(), 0.0

    def update(self, done, text=""):
        now = time.time()
        if now - self.last_draw < (0.25 if self.is_tty else 30) and done < self.total:
            return
        self.last_draw = now
        elapsed = now - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        line = f"{self.label} {done}/{self.total} [{format_seconds(elapsed)}<{format_seconds(eta)}] {text}"
        print(("\r" + line + "\033[K") if self.is_tty else line, end="" if self.is_tty else "\n",
              file=sys.stderr, flush=True)

    def close(self):
        if self.is_tty:
            print(file=sys.stderr)


def format_seconds(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes:02d}:{seconds:02d}"


LOG_FIELDS = ["step", "epoch", "loss", "loss_t1", "loss_t2", "loss_t3", "loss_t4", "lr", "grad_norm",
              "images_per_s", "elapsed_s", "bad_steps"]


class TrainLog:
    """log.csv: one row per --log-every steps. Losses are averaged over the window, also per quarter of the
    timestep range (t1 = the least noisy quarter), which shows where the model is still weak."""

    def __init__(self, path, resume_step, timesteps, shard=Shard(), device="cpu"):
        """path None: keep the statistics (every rank must join their all-reduce) but write no file."""
        self.path, self.timesteps, self.shard, self.device = path and Path(path), timesteps, shard, device
        if self.path:
            self._keep_rows_until(resume_step)
        self.reset()

    def _keep_rows_until(self, resume_step):
        kept = []
        if resume_step and self.path.exists():  # rows written after the checkpoint will be written again
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def reset(self):
        self.sums, self.counts, self.grad_norm, self.steps = None, None, 0.0, 0
        self.images, self.window_start = 0, time.time()

    def add(self, losses, t, grad_norm, images):
        """Accumulates on the device; nothing is copied to the host until `write`."""
        self.images += images
        quarter = (t * 4 // self.timesteps).clamp(max=3)
        sums = torch.zeros(4, device=t.device).index_add_(0, quarter, losses.detach().float())
        counts = torch.bincount(quarter, minlength=4).float()
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts
        self.grad_norm = self.grad_norm + grad_norm.detach().float()
        self.steps += 1

    def write(self, **values):
        """Appends the window's row and starts a new window. A window whose every step was skipped gets a row
        without losses (its bad_steps still count); then None is returned."""
        if not self.steps:
            if self.path:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, LOG_FIELDS).writerow(values)
            self.reset()
            return None
        totals = torch.cat([self.sums, self.counts])
        if self.shard.world_size > 1:  # the loss of the global batch, as a single process would log it
            torch.distributed.all_reduce(totals)
        sums, counts = totals[:4].tolist(), totals[4:].tolist()
        row = {"loss": sum(sums) / sum(counts), "grad_norm": float(self.grad_norm) / self.steps,
               "images_per_s": self.images / (time.time() - self.window_start), **values}
        row.update({f"loss_t{q + 1}": (s / c if c else "") for q, (s, c) in enumerate(zip(sums, counts))})
        if self.path:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, LOG_FIELDS).writerow(row)
        self.reset()
        return row


def read_log(path):
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()} for row in csv.DictReader(f)]


def checkpoint_payload(cfg, step, model, ema, optimizer, lr_schedule, bad_steps):
    return {
        "config": dataclasses.asdict(cfg), "class_names": list(cfg.classes), "step": step,
        "model": model.state_dict(), "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(), "bad_steps": bad_steps,
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def restore_training_state(payload, model, ema, optimizer, lr_schedule):
    model.load_state_dict(payload["model"])
    if ema:  # rank 0 only under torchrun
        ema.model.load_state_dict(payload["ema"])
    optimizer.load_state_dict(payload["optimizer"])
    lr_schedule.load_state_dict(payload["lr_schedule"])
    torch.set_rng_state(payload["rng"]["cpu"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"][:torch.cuda.device_count()])
    return payload["step"], payload.get("bad_steps", 0)


def export_model(cfg, ema, step, path):
    """The small file for sampling: EMA weights in float16 (half the size; loading casts them back), config
    and class names; no optimiser state."""
    weights = {name: value.half() for name, value in ema.model.state_dict().items()}
    save_atomically({"config": dataclasses.asdict(cfg), "class_names": list(cfg.classes), "step": step,
                     "ema": weights}, path)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_run_info(out_dir, cfg, device, model, step, seconds, checksums):
    """run_info.json: what the run cost and where it ran, for the report; one weight checksum per process."""
    info = {"device": device_name(device), "torch": torch.__version__, "parameters": count_parameters(model),
            "processes": len(checksums), "steps": step, "images_seen": step * cfg.batch_size * len(checksums),
            "train_seconds": round(seconds, 1), "weight_checksums": checksums}
    (Path(out_dir) / "run_info.json").write_text(json.dumps(info, indent=2))


def load_training_data(cfg):
    data = AnimalPhotos(cfg.data_dir, cfg.classes or None, cfg.num_classes, cfg.images_per_class,
                        cfg.image_size, cfg.flip)
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in data.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return data


def train_step(model, forward_model, ema, optimizer, schedule, x0, labels, cfg, bf16, step, shard=Shard()):
    """One AdamW update with gradient clipping and the EMA update. Returns (per-image losses, t, gradient norm),
    or None when the loss or the gradients are not finite: then the update is skipped, so one bad batch cannot
    poison the weights. Under torchrun the gradient norm is that of the averaged gradients, so every rank
    takes the same decision."""
    with autocast(x0.device, bf16):
        losses, t = training_loss(forward_model, schedule, x0, labels, cfg, shard)
    loss = losses.mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    finite = torch.isfinite(loss + grad_norm).item()  # the one host sync of a step
    if finite:
        optimizer.step()
        if ema:
            ema.update(model, step)
    optimizer.zero_grad(set_to_none=True)
    return (losses, t, grad_norm) if finite else None


def setup_distributed(device_name):
    """Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on CUDA, one GPU per process, gloo on
    CPU. A plain run is rank 0 of 1 and needs no process group."""
    device = pick_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return Shard(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(torch.distributed.get_rank(), world_size), device


def any_rank(flag, shard, device):
    """True on every rank when `flag` is true on any: all ranks must stop at the same step."""
    if shard.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def weight_checksums(model, shard, device):
    """Sum of all weights on each rank (float64): equal numbers show the ranks ended in sync."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().to(device)
    if shard.world_size == 1:
        return [float(total)]
    gathered = [torch.zeros_like(total) for _ in range(shard.world_size)]
    torch.distributed.all_gather(gathered, total)
    return [float(v) for v in gathered]


def train(cfg, out_dir, device="auto", resume=False, explicit=()):
    """Trains a U-Net on cfg's data, writing checkpoints, log.csv, sample grids and model.pt to out_dir.
    Under torchrun every process trains on its slice of each global batch; rank 0 alone keeps the EMA and
    writes files."""
    shard, device = setup_distributed(device)
    try:
        return train_on(cfg, Path(out_dir), device, shard, resume, explicit)
    finally:
        if shard.world_size > 1:
            torch.distributed.destroy_process_group()


def train_on(cfg, out_dir, device, shard, resume, explicit):
    is_main = shard.rank == 0
    payload = None
    if resume:
        payload, path = latest_checkpoint(out_dir)
        cfg = resumed_config(payload["config"], cfg, explicit)
        if is_main:
            print(f"resuming from {path} (step {payload['step']})", file=sys.stderr)
    check_image_size(cfg)
    save_steps, save_seconds = parse_save_every(cfg.save_every)
    torch.manual_seed(cfg.seed)  # the same stream on every rank: see draw_for_global_batch
    data = load_training_data(cfg)
    if payload and data.class_names != payload["class_names"]:
        raise UserError(f"--resume: the data has classes {data.class_names}, the checkpoint {payload['class_names']}")
    cfg = dataclasses.replace(cfg, classes=data.class_names, num_classes=len(data.class_names))
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out_dir)
        (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    memory_format = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    model = UNet(cfg).to(device, memory_format=memory_format)
    ema = EMA(model, cfg.ema_decay) if is_main else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")  # fused: one kernel for the whole update
    steps_per_epoch = math.ceil(len(data) / (cfg.batch_size * shard.world_size))
    total_steps = cfg.epochs * steps_per_epoch
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps))
    step, bad_steps = restore_training_state(payload, model, ema, optimizer, lr_schedule) if payload else (0, 0)
    schedule = NoiseSchedule(cfg.timesteps, cfg.schedule, device)
    images, labels = data.images.to(device), data.labels.to(device)  # the whole set lives on the device
    forward_model = model
    if shard.world_size > 1:  # averages gradients across ranks during backward
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        forward_model = compile_model(forward_model, device, cuda_graphs=shard.world_size == 1)
    bf16 = use_bf16(cfg, device)
    log = TrainLog(out_dir / "log.csv" if is_main else None, step, cfg.timesteps, shard, device)
    if is_main:
        print(f"training {count_parameters(model) / 1e6:.2f} M parameters on {len(data)} images of "
              f"{', '.join(data.class_names)} at {cfg.image_size} px, {device.type}{' bf16' if bf16 else ''}"
              f"{f' x {shard.world_size} processes' if shard.world_size > 1 else ''}; "
              f"{total_steps} steps ({cfg.epochs} epochs x {steps_per_epoch}) -> {out_dir}", file=sys.stderr)

    def save():
        if is_main:
            save_training_checkpoint(out_dir, checkpoint_payload(cfg, step, model, ema, optimizer, lr_schedule, bad_steps))

    progress = Progress(total_steps, "train") if is_main else None
    start = last_save = time.time()
    consecutive_bad = 0
    with GracefulStop() as stop:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            for batch in epoch_order(len(data), cfg.batch_size, epoch, cfg.seed, shard)[offset:]:
                batch = batch.to(device)
                x0 = batch_to_model_input(images[batch], cfg.flip, shard).contiguous(memory_format=memory_format)
                stats = train_step(model, forward_model, ema, optimizer, schedule, x0,
                                   labels[batch] if cfg.conditional else None, cfg, bf16, step, shard)
                if stats:
                    log.add(*stats, images=len(batch) * shard.world_size)
                    consecutive_bad = 0
                else:
                    bad_steps, consecutive_bad = bad_steps + 1, consecutive_bad + 1
                    if consecutive_bad >= cfg.max_bad_steps:
                        save()
                        raise UserError(f"{consecutive_bad} non-finite losses in a row at step {step}; "
                                        f"saved the last good state in {checkpoint_dir(out_dir)}; lower --lr")
                lr_schedule.step()
                step += 1
                if step % cfg.log_every == 0 or step == total_steps:
                    row = log.write(step=step, epoch=step / steps_per_epoch, lr=lr_schedule.get_last_lr()[0],
                                    bad_steps=bad_steps, elapsed_s=time.time() - start)
                    if progress:
                        progress.update(step, f"loss {row['loss']:.4f} {row['images_per_s']:.0f} img/s" if row else "")
                if is_main and step % steps_per_epoch == 0 and cfg.sample_every and \
                        (step // steps_per_epoch) % cfg.sample_every == 0:
                    write_sample_grid(ema.model, schedule, cfg, out_dir / "samples" / f"epoch_{step // steps_per_epoch:05d}.png")
                stopping = any_rank(stop.signal_name is not None, shard, device)
                if stopping or (save_steps and step % save_steps == 0) or \
                        (save_seconds and time.time() - last_save > save_seconds):
                    save()
                    last_save = time.time()
                if stopping:
                    checksums = weight_checksums(model, shard, device)
                    if is_main:
                        progress.close()
                        write_run_outputs(out_dir, cfg, device, model, ema, step, time.time() - start, checksums)
                        print(f"stopped at step {step}; checkpoint and model.pt saved. Continue with: python "
                              f"{Path(sys.argv[0]).name} train --out-dir {out_dir} --resume", file=sys.stderr)
                    return out_dir
                if step >= total_steps:
                    break
    save()
    checksums = weight_checksums(model, shard, device)
    if is_main:
        progress.close()
        finish_run(out_dir, cfg, device, model, ema, schedule, step, time.time() - start, checksums)
    return out_dir


def write_run_outputs(out_dir, cfg, device, model, ema, step, seconds, checksums):
    """What any run that ends leaves besides its checkpoints, stopped or finished: model.pt (samplable now,
    resumable later), run_info.json and loss_curve.png."""
    export_model(cfg, ema, step, out_dir / "model.pt")
    write_run_info(out_dir, cfg, device, model, step, seconds, checksums)
    plot_loss_curve(read_log(out_dir / "log.csv"), out_dir / "loss_curve.png")


def finish_run(out_dir, cfg, device, model, ema, schedule, step, seconds, checksums):
    """A finished run's files: those of write_run_outputs, and the final sample grid."""
    write_run_outputs(out_dir, cfg, device, model, ema, step, seconds, checksums)
    write_sample_grid(ema.model, schedule, cfg, out_dir / "samples" / "final.png")
    print(f"done: {step} steps in {format_seconds(seconds)}; model {out_dir / 'model.pt'}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# 6. Sampling: noise in, image out
# ---------------------------------------------------------------------------------------------

DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale: clear classes without the washed-out look of higher ones

def guided_output(model, x_t, t, labels, guidance):
    """Classifier-free guidance (Ho & Salimans 2022): push the class-conditional prediction away from the
    unconditional one by `guidance` (1 = plain conditional). Both run as one batch."""
    if labels is None or guidance == 1:
        return model(x_t, t, labels)
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                 torch.cat([labels, torch.full_like(labels, model.null_class)]))
    conditional, unconditional = both.float().chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def ddpm_step(schedule, x_t, t, x0, generator):
    """Ancestral step (algorithm 2) from integer step t: x_{t-1} ~ N(posterior mean, beta tilde_t); no noise
    at the last step."""
    mean = schedule.q_posterior_mean(x0, x_t, t)
    if t == 0:
        return mean
    z = torch.randn(x_t.shape, generator=generator, device=x_t.device)
    return mean + schedule.gather(schedule.posterior_variance, t).sqrt() * z


def ddim_step(schedule, x_t, t, t_prev, eps, x0, eta, generator):
    """DDIM (Song et al. 2021, eq. 12): deterministic for eta = 0, DDPM-like for eta = 1. t_prev = -1 is x_0."""
    alpha_bar = schedule.gather(schedule.alphas_cumprod, t)
    alpha_bar_prev = schedule.gather(schedule.alphas_cumprod, t_prev) if t_prev >= 0 else torch.ones_like(alpha_bar)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0 and t_prev >= 0:
        x_prev = x_prev + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device)
    return x_prev


class CUDAGraphCall:
    """fn(x, t) recorded once as a CUDA graph and replayed at every sampling step. At the batch of 1 to 16 that
    sampling uses, the GPU otherwise idles while Python launches the network's few hundred kernels one by one.
    The returned tensor is overwritten by the next call."""

    def __init__(self, fn, x, t):
        self.x, self.t = x.clone(), t.clone()  # the fixed addresses the graph reads its inputs from
        warm_up = torch.cuda.Stream()  # cuDNN and cuBLAS choose kernels and allocate workspace outside the recording
        warm_up.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm_up):
            fn(self.x, self.t)
        torch.cuda.current_stream().wait_stream(warm_up)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.x, self.t)

    def __call__(self, x, t):
        self.x.copy_(x)
        self.t.copy_(t)
        self.graph.replay()
        return self.out


def sampling_timesteps(timesteps, sampler, steps):
    """The t visited, from T-1 down: all of them for DDPM, `steps` evenly spaced ones for DDIM."""
    if sampler == "ddpm":
        return list(range(timesteps - 1, -1, -1))
    return torch.linspace(timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()


@torch.inference_mode()
def generate_from_noise(model, schedule, noise, sampler="ddpm", steps=50, eta=0.0, labels=None, guidance=1.0,
                        seed=0, return_trajectory=False, trajectory_points=10, progress=False, cuda_graph=True):
    """Denoises `noise` (x_T, shape [n, 3, H, W]) into images in [-1, 1].

    sampler 'ddpm' runs all T ancestral steps; 'ddim' runs `steps` DDIM steps with `eta`. `labels` (class
    indices) and `guidance` apply to class-conditional models. `seed` fixes the noise drawn on the way.
    With return_trajectory, also returns [(t, x_t)] at about `trajectory_points` steps, from noise to image.
    On a GPU the network call is replayed as a CUDA graph unless cuda_graph is False (same images, faster)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    ts = sampling_timesteps(schedule.timesteps, sampler, steps)
    keep = set(ts[::max(1, len(ts) // trajectory_points)])
    bf16 = device.type == "cuda"
    x = noise.to(device).float().contiguous(memory_format=torch.channels_last)  # the layout build_model gives
    labels = None if labels is None else torch.as_tensor(labels, device=device).view(-1).expand(x.shape[0])
    trajectory = []

    def denoise(x_t, t):
        with autocast(device, bf16):
            return guided_output(model, x_t, t, labels, guidance)

    if cuda_graph and device.type == "cuda":
        denoise = CUDAGraphCall(denoise, x, torch.full((x.shape[0],), ts[0], device=device, dtype=torch.long))
    bar = Progress(len(ts), f"{sampler}") if progress else None
    for i, t_now in enumerate(ts):
        t = torch.full((x.shape[0],), t_now, device=device, dtype=torch.long)
        out = denoise(x, t)
        eps, x0 = schedule.eps_and_x0(out.float(), x, t, model.prediction)
        if return_trajectory and t_now in keep:
            trajectory.append((t_now + 1, x.cpu()))  # paper numbering: x_t at t = index + 1
        if sampler == "ddpm":
            x = ddpm_step(schedule, x, t_now, x0, generator)
        else:
            x = ddim_step(schedule, x, t_now, ts[i + 1] if i + 1 < len(ts) else -1, eps, x0, eta, generator)
        if bar:
            bar.update(i + 1)
    if bar:
        bar.close()
    x = x.clamp(-1, 1).cpu()
    if return_trajectory:
        return x, trajectory + [(0, x)]
    return x


def seeded_noise(num_samples, image_size, seed):
    """x_T ~ N(0, I), the same on every device for a given seed (drawn on the CPU)."""
    return torch.randn(num_samples, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def to_uint8_grid(images, nrow):
    """[-1, 1] images -> one PIL image, `nrow` per row."""
    from torchvision.utils import make_grid
    grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    return Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())


def guidance_for(cfg, guidance=None):
    """The guidance scale to sample with: as asked, else DEFAULT_GUIDANCE for conditional models, else 1 (none)."""
    return guidance if guidance is not None else (DEFAULT_GUIDANCE if cfg.conditional else 1.0)


def check_guidance(guidance, cfg):
    if guidance is not None and not cfg.conditional:
        raise UserError("--guidance needs a class-conditional model (trained with --conditional)")


def class_labels(cfg, num_samples, class_name=None):
    """One label per sample: the named class, or the classes in turn (a column each in the grid)."""
    if not cfg.conditional:
        return None
    if class_name is None:
        return torch.arange(num_samples) % cfg.num_classes
    lower = [c.lower() for c in cfg.classes]
    if class_name.lower() not in lower:
        raise UserError(f"--class-name {class_name!r} is not one of this model's classes: {', '.join(cfg.classes)}")
    return torch.full((num_samples,), lower.index(class_name.lower()))


def write_sample_grid(model, schedule, cfg, path, num_samples=None, sampler="ddim", steps=50, guidance=None,
                      seed=0, class_name=None, eta=0.0, progress=False):
    """A fixed-seed grid; for conditional models each column is a class."""
    num_samples = num_samples or (2 * cfg.num_classes if cfg.conditional else 16)
    labels = class_labels(cfg, num_samples, class_name)
    guidance = guidance_for(cfg, guidance)
    images = generate_from_noise(model, schedule, seeded_noise(num_samples, cfg.image_size, seed), sampler, steps,
                                 eta, labels, guidance, seed=seed, progress=progress)
    nrow = cfg.num_classes if cfg.conditional and class_name is None else math.ceil(math.sqrt(num_samples))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_uint8_grid(images, nrow).save(path)
    return images



# ---------------------------------------------------------------------------------------------
# 7. Evaluation and figures
# ---------------------------------------------------------------------------------------------

def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: works headless and on every OS
    import matplotlib.pyplot as plt
    return plt


def to_display(x):
    """[-1, 1] CHW tensor -> HWC array in [0, 1] for matplotlib."""
    return ((x.float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def forward_chain(schedule, x0, snapshot_steps, seed=0):
    """Runs x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps from x_0 for every t, keeping x_t at the
    paper-numbered steps in `snapshot_steps` (0 is x_0 itself)."""
    generator = torch.Generator().manual_seed(seed)
    x, snapshots = x0, {0: x0} if 0 in snapshot_steps else {}
    for i in range(schedule.timesteps):
        x = schedule.q_step(x, i, torch.randn(x.shape, generator=generator))
        if i + 1 in snapshot_steps:
            snapshots[i + 1] = x
    return snapshots


def plot_forward_process(schedule, x0, path, seed=0):
    """The assignment's Figure 1 (x_t at t = 0, 50, 100, 200, ..., T from the step-by-step chain) with the
    statistics that show x_T is standard normal."""
    plt = pyplot()
    steps = [0, 50] + list(range(100, schedule.timesteps + 1, 100))
    steps = sorted({s for s in steps if s <= schedule.timesteps} | {schedule.timesteps})
    snapshots = forward_chain(schedule, x0[None], set(steps), seed)
    fig = plt.figure(figsize=(1.4 * len(steps), 5.2))
    grid = fig.add_gridspec(2, len(steps), height_ratios=[1, 1.6], hspace=0.45)
    for col, t in enumerate(steps):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(to_display(snapshots[t][0]))
        ax.set_title(f"t = {t}", fontsize=9)
        ax.axis("off")
    ts = torch.arange(1, schedule.timesteps + 1)
    ax = fig.add_subplot(grid[1, : len(steps) // 2])
    ax.plot(ts, schedule.sqrt_alphas_cumprod.cpu(), label="signal: sqrt(alpha_bar_t)")
    ax.plot(ts, schedule.sqrt_one_minus_alphas_cumprod.cpu(), label="noise: sqrt(1 - alpha_bar_t)")
    measured = [float(snapshots[t].std()) for t in steps]
    ax.plot(steps, measured, "o", label="std of x_t (measured)")
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
    ax.set_title("how much of x_0 survives", fontsize=9)
    x_T = snapshots[schedule.timesteps].flatten()
    ax = fig.add_subplot(grid[1, len(steps) // 2:])
    ax.hist(x_T.numpy(), bins=60, density=True, alpha=0.6, label="pixels of x_T")
    grid_x = torch.linspace(-4, 4, 200)
    ax.plot(grid_x, torch.exp(-grid_x ** 2 / 2) / math.sqrt(2 * math.pi), label="N(0, 1)")
    ax.set_title(f"x_T: mean {x_T.mean():.3f}, std {x_T.std():.3f}, "
                 f"alpha_bar_T = {schedule.alphas_cumprod[-1]:.1e}", fontsize=9)
    ax.legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return snapshots


def smooth(values, weight=0.9):
    """Exponential moving average for plots; a missing value (NaN) keeps the previous average."""
    out, running = [], None
    for v in values:
        if math.isfinite(v):
            running = v if running is None else weight * running + (1 - weight) * v
        out.append(running if running is not None else float("nan"))
    return out


def plot_loss_curve(rows, path):
    """Training loss (raw and smoothed) and learning rate against step, and the loss per timestep quarter."""
    plt = pyplot()
    rows = [r for r in rows if math.isfinite(r["loss"])]  # windows of skipped steps have no loss
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_lr, ax_t) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(steps, [r["loss"] for r in rows], alpha=0.3, label="raw")
    ax_loss.plot(steps, smooth([r["loss"] for r in rows]), label="smoothed")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in rows])
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    names = ["t in 1-250 (least noise)", "t in 251-500", "t in 501-750", "t in 751-1000 (most noise)"]
    for q, name in enumerate(names):
        ax_t.plot(steps, smooth([r[f"loss_t{q + 1}"] for r in rows]), label=name)
    ax_t.set(xlabel="step", ylabel="loss (smoothed)", yscale="log", title="loss per timestep range")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectory(trajectory, path, title=""):
    """One sample's reverse process: x_T (noise) on the left to x_0 on the right."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(trajectory), figsize=(1.4 * len(trajectory), 1.9))
    for ax, (t, x) in zip(axes, trajectory):
        ax.imshow(to_display(x[0]))
        ax.set_title(f"t = {t}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


@torch.inference_mode()
def denoising_loss_grid(model, schedule, images, labels, points=10, seed=0, batch_size=64):
    """The training loss (MSE on the model's target) at `points` fixed, evenly spaced t with fixed noise: comparable across checkpoints."""
    device = next(model.parameters()).device
    ts = torch.linspace(0, schedule.timesteps - 1, points).round().long().tolist()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    per_t = {}
    for t_now in ts:
        total = 0.0
        for start in range(0, len(images), batch_size):
            x0, eps = images[start:start + batch_size].to(device), noise[start:start + batch_size].to(device)
            t = torch.full((len(x0),), t_now, device=device)
            y = None if labels is None else labels[start:start + batch_size].to(device)
            out = model(schedule.q_sample(x0, t, eps), t, y)
            total += float(diffusion_loss(out, schedule.training_target(x0, t, eps, model.prediction)).sum())
        per_t[t_now + 1] = total / len(images)
    return sum(per_t.values()) / len(per_t), per_t


def normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def decoder_nll(x0, mean, log_scale):
    """-log p(x_0 | x_1) with the discrete decoder of DDPM eq. 13: a Gaussian integrated over each of the
    256 pixel bins (edge bins extend to infinity). Returns nats per image."""
    centered, inv_std = x0 - mean, torch.exp(-log_scale)
    cdf_plus = normal_cdf(inv_std * (centered + 1 / 255))
    cdf_minus = normal_cdf(inv_std * (centered - 1 / 255))
    log_prob = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                           torch.where(x0 > 0.999, torch.log((1 - cdf_minus).clamp(min=1e-12)),
                                       torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))))
    return -log_prob.flatten(1).sum(1)


def vlb_timesteps(timesteps, points):
    """Log-spaced t in 1..T-1 and how many of the T-1 KL terms each stands for. The terms fall by orders of
    magnitude over the first hundred steps, so small t are evaluated one by one and large t share a point."""
    ts = torch.logspace(0, math.log10(timesteps - 1), points, dtype=torch.float64).round().long().unique()
    edges = torch.cat([torch.tensor([0.5]), (ts[:-1] + ts[1:]) / 2, torch.tensor([timesteps - 0.5])])
    return ts.tolist(), (edges[1:].ceil() - edges[:-1].ceil()).long().tolist()


@torch.inference_mode()
def variational_bound_bpd(model, schedule, images, labels, points=50, seed=0, batch_size=64):
    """The DDPM variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (section 3.3) in bits per dimension.
    L_0 (the discrete decoder) and the prior L_T exactly; the T-1 KL terms from `points` log-spaced t, each
    weighted by the terms it stands for. The reverse variance is the posterior's beta tilde_t, the mean comes
    from the unclipped x_0 estimate."""
    device = next(model.parameters()).device
    dims = images[0].numel()
    kl_ts, weights = vlb_timesteps(schedule.timesteps, points)
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(3)  # prior, decoder, KL terms; nats summed over images
    for start in range(0, len(images), batch_size):
        x0 = images[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        alpha_bar_T = schedule.alphas_cumprod[-1]
        prior_kl = 0.5 * (alpha_bar_T * x0 ** 2 + (1 - alpha_bar_T) - 1 - torch.log(1 - alpha_bar_T))
        totals[0] += float(prior_kl.sum())
        for t_now, weight in [(0, 1)] + list(zip(kl_ts, weights)):
            t = torch.full((len(x0),), t_now, device=device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            x_t = schedule.q_sample(x0, t, noise)
            x0_hat = schedule.x0_from_output(model(x_t, t, y).float(), x_t, t, model.prediction)
            mean = schedule.q_posterior_mean(x0_hat, x_t, t)
            if t_now == 0:
                log_scale = 0.5 * torch.log(schedule.posterior_variance[1])
                totals[1] += float(decoder_nll(x0, mean, log_scale).sum())
            else:
                true_mean = schedule.q_posterior_mean(x0, x_t, t)
                kl = (true_mean - mean) ** 2 / (2 * schedule.posterior_variance[t_now])
                totals[2] += float(kl.sum()) * weight
    per_dim_bits = totals / (len(images) * dims * math.log(2))
    return {"bpd": float(per_dim_bits.sum()), "prior_bpd": float(per_dim_bits[0]),
            "decoder_bpd": float(per_dim_bits[1]), "diffusion_bpd": float(per_dim_bits[2]), "kl_points": len(kl_ts)}


def nearest_training_images(samples, train_images):
    """For each sample: RMS pixel distance to its nearest and second-nearest training image (a training image
    counts with its mirror image, since training flips), and their indices."""
    candidates = torch.stack([train_images, train_images.flip(-1)]).flatten(2)  # [2, N, D]
    flat = samples.flatten(1)
    dists = torch.cdist(flat[None].expand(2, -1, -1).float(), candidates.float()).amin(0) / math.sqrt(flat.shape[1])
    nearest = dists.topk(2, dim=1, largest=False)
    return nearest.values, nearest.indices


def memorisation_rate(distances):
    """Share of samples whose nearest training image is closer than 1/3 of the second nearest (Gu et al. 2023)."""
    return float((distances[:, 0] < distances[:, 1] / 3).float().mean())


def nearest_neighbour_summary(distances, indices):
    """The numbers of the nearest-neighbour test, from nearest_training_images' distances and indices."""
    return {"nearest_distance_mean": float(distances[:, 0].mean()),
            "nearest_distance_min": float(distances[:, 0].min()),
            "memorisation_rate": memorisation_rate(distances),
            # fewer distinct nearest photos than samples: several noises end at the same photo (mode collapse)
            "nearest_photos_distinct": len(set(indices[:, 0].tolist()))}


def plot_nearest_neighbours(samples, distances, path, train_images=None, indices=None):
    """Samples with their nearest-neighbour distances; with train_images, the nearest photo beside each.
    (Keep figures that show dataset photos out of the repository: their licence is unknown.)"""
    plt = pyplot()
    n = min(8, len(samples))
    cols = 2 if train_images is not None else 1
    fig, axes = plt.subplots(cols, n + 1, figsize=(1.6 * (n + 1), 1.9 * cols), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(to_display(samples[i]))
        axes[0, i].set_title(f"d1={distances[i, 0]:.2f}\nd2={distances[i, 1]:.2f}", fontsize=8)
        if train_images is not None:
            axes[1, i].imshow(to_display(train_images[indices[i, 0]]))
    ratio = (distances[:, 0] / distances[:, 1]).numpy()
    for ax in axes.flat:
        ax.axis("off")
    hist = fig.add_subplot(1, n + 1, n + 1)
    hist.hist(ratio, bins=20, range=(0, 1))
    hist.axvline(1 / 3, color="red", linestyle="--")
    hist.set_title("d1 / d2 (red: 1/3)", fontsize=8)
    hist.tick_params(labelsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_images(data_dir, cfg):
    """The photos a model was trained on, unflipped, in [-1, 1], and their labels (None for an unconditional model)."""
    data = AnimalPhotos(data_dir, cfg.classes, len(cfg.classes), cfg.images_per_class, cfg.image_size, flip=False)
    return data.images.float() / 127.5 - 1, data.labels if cfg.conditional else None


def evaluate(checkpoint, data_dir, out_json, device="auto", num_samples=50, sampler="ddim", steps=50,
             guidance=None, loss_points=10, vlb_points=50, seed=0, figure=None, show_photos=False):
    """Loss on a fixed t grid, variational bound (bits/dim) and memorisation of a checkpoint; writes JSON."""
    device = pick_device(device)
    model, schedule, cfg = load_model(checkpoint, device)
    check_guidance(guidance, cfg)
    images, labels = training_images(data_dir, cfg)
    loss, loss_per_t = denoising_loss_grid(model, schedule, images, labels, loss_points, seed)
    vlb = variational_bound_bpd(model, schedule, images, labels, vlb_points, seed)
    guidance = guidance_for(cfg, guidance)
    samples = generate_from_noise(model, schedule, seeded_noise(num_samples, cfg.image_size, seed), sampler, steps,
                                  labels=class_labels(cfg, num_samples), guidance=guidance, seed=seed)
    distances, indices = nearest_training_images(samples, images)
    result = {"checkpoint": str(checkpoint), "step": load_checkpoint(checkpoint).get("step"),
              "classes": cfg.classes, "train_images": len(images),
              "denoising_loss": loss, "denoising_loss_per_t": loss_per_t, **vlb,
              "samples": num_samples, "sampler": sampler, "steps": steps, "guidance": guidance,
              **nearest_neighbour_summary(distances, indices)}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    if figure:
        plot_nearest_neighbours(samples, distances, figure, images if show_photos else None, indices)
    return result


# ---------------------------------------------------------------------------------------------
# 8. Command line
# ---------------------------------------------------------------------------------------------

def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def probability(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive whole numbers, got {text!r}")
    return values


def name_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def add_config_option(parser, flag, help, **kwargs):
    """An option that fills the Config field of the same name; the help shows the Config default."""
    name = flag.lstrip("-").replace("-", "_")
    default = getattr(Config(), name)
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    parser.add_argument(flag, dest=name, help=f"{help} (default: {shown})", **kwargs)


def add_train_parser(commands):
    p = commands.add_parser("train", help="train a model on a folder of class subfolders",
                            argument_default=argparse.SUPPRESS,  # only the flags given reach the Config
                            description="Train a DDPM. Writes checkpoints/, log.csv, samples/, loss_curve.png and "
                                        "model.pt to --out-dir.")
    data = p.add_argument_group("data")
    add_config_option(data, "--data-dir", "folder holding one subfolder of images per class")
    add_config_option(data, "--classes", "comma-separated class names, e.g. Dolphin,Zebra", type=name_list)
    add_config_option(data, "--num-classes", "without --classes: the first N classes alphabetically", type=positive_int)
    add_config_option(data, "--images-per-class", "photos per class, in sorted file order", type=positive_int)
    add_config_option(data, "--image-size", "training resolution in pixels", type=positive_int)
    data.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    process = p.add_argument_group("forward process")
    add_config_option(process, "--timesteps", "diffusion steps T", type=positive_int)
    add_config_option(process, "--schedule", "beta schedule", choices=["linear", "cosine"])
    model = p.add_argument_group("model")
    add_config_option(model, "--patch-size", "pixels per side folded into channels before the U-Net", type=positive_int)
    add_config_option(model, "--base-channels", "channels at full resolution", type=positive_int)
    add_config_option(model, "--channel-mults", "channel multiplier per resolution level", type=int_list)
    add_config_option(model, "--num-res-blocks", "residual blocks per level", type=positive_int)
    add_config_option(model, "--attention-resolutions", "feature-map sizes with self-attention", type=int_list)
    add_config_option(model, "--dropout", "dropout in residual blocks", type=probability)
    add_config_option(model, "--conditional", "class-conditional (enables --class-name, --guidance); "
                                              "--no-conditional for one model of all classes",
                      action=argparse.BooleanOptionalAction)
    add_config_option(model, "--cond-drop", "probability of training a step without its class", type=probability)
    add_config_option(model, "--loss", "loss function", choices=["mse", "l1", "huber"])
    add_config_option(model, "--prediction", "network target: the noise (eps) or v", choices=["eps", "v"])
    opt = p.add_argument_group("training")
    add_config_option(opt, "--epochs", "passes over the data", type=positive_int)
    add_config_option(opt, "--batch-size", f"images per step and process, {GPU_BATCH_SIZE} on a GPU unless given "
                                           f"(under torchrun the global batch is this x processes)", type=positive_int)
    add_config_option(opt, "--lr", "peak AdamW learning rate", type=positive_float)
    add_config_option(opt, "--weight-decay", "AdamW weight decay", type=non_negative_float)
    add_config_option(opt, "--warmup-steps", "linear learning-rate warm-up steps", type=non_negative_int)
    add_config_option(opt, "--grad-clip", "gradient-norm clip", type=positive_float)
    add_config_option(opt, "--ema-decay", "EMA decay of the sampling weights", type=probability)
    add_config_option(opt, "--seed", "random seed", type=int)
    add_config_option(opt, "--precision", "auto: bf16 autocast on CUDA, fp32 on CPU", choices=["auto", "fp32", "bf16"])
    add_config_option(opt, "--channels-last", "NHWC memory layout; auto: on for CUDA", choices=["auto", "on", "off"])
    opt.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    add_config_option(opt, "--log-every", "steps per log.csv row", type=positive_int)
    add_config_option(opt, "--sample-every", "epochs between sample grids (0: only at the end)", type=non_negative_int)
    add_config_option(opt, "--save-every", "checkpoint every N steps (500) or minutes (5m)")
    add_config_option(opt, "--max-bad-steps", "stop after this many non-finite losses in a row", type=positive_int)
    run = p.add_argument_group("run")
    run.add_argument("--out-dir", help="run folder (default: runs/<timestamp>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its latest checkpoint")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA if present)")
    p.set_defaults(run=cmd_train)


def add_sampling_options(p):
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="default: %(default)s")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim",
                   help="ddpm: all T ancestral steps; ddim: --steps steps (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=positive_float, help=f"classifier-free guidance scale, conditional models "
                                                           f"only (default: {DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not the whole usage: the user sees what is wrong and where to look."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = Parser(prog="rollNumber_05.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)

    p = commands.add_parser("sample", help="turn noise into images with a trained model")
    add_sampling_options(p)
    p.add_argument("--num-samples", type=positive_int,
                   help="default: 4 per class for class-conditional models (a column each), else 16")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic) (default: %(default)s)")
    p.add_argument("--class-name", help="only this class (conditional models)")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="default: %(default)s")
    p.add_argument("--trajectory", help="also write the first sample's denoising steps to this PNG")
    p.add_argument("--out", default="samples.png", help="PNG grid to write (default: %(default)s)")
    p.set_defaults(run=cmd_sample)

    p = commands.add_parser("forward", help="figure of one photo noised by the forward process")
    p.add_argument("--data-dir", help="take the first photo of --class-name (or of the first class) here")
    p.add_argument("--class-name")
    p.add_argument("--image", help="or noise this image file")
    p.add_argument("--image-size", type=positive_int, default=64, help="default: %(default)s")
    p.add_argument("--timesteps", type=positive_int, default=1000, help="default: %(default)s")
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="forward_process.png", help="default: %(default)s")
    p.set_defaults(run=cmd_forward)

    p = commands.add_parser("evaluate", help="loss, bits/dim and memorisation of a checkpoint")
    add_sampling_options(p)
    p.add_argument("--data-dir", required=True, help="the training data folder")
    p.add_argument("--num-samples", type=positive_int, default=50, help="samples for the nearest-neighbour test")
    p.add_argument("--vlb-points", type=positive_int, default=50, help="timesteps for the bound estimate")
    p.add_argument("--out-json", default="metrics_eval.json", help="default: %(default)s")
    p.add_argument("--figure", help="PNG of samples and their nearest-neighbour distances")
    p.add_argument("--show-photos", action="store_true", help="put the nearest training photos in the figure")
    p.set_defaults(run=cmd_evaluate)
    return parser


def cmd_train(args):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    if not getattr(args, "resume", False) and not given.get("data_dir"):
        raise UserError("train needs --data-dir (a folder of class subfolders), or --resume with --out-dir")
    if getattr(args, "resume", False) and not getattr(args, "out_dir", None):
        raise UserError("--resume needs the --out-dir of the run to continue")
    out_dir = Path(getattr(args, "out_dir", None) or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if not getattr(args, "resume", False) and any(checkpoint_dir(out_dir).glob("step_*.pt")):
        raise UserError(f"{out_dir} already holds a run; continue it with --resume or pick another --out-dir")
    device = getattr(args, "device", "auto")
    cfg = Config(**{**device_defaults(pick_device(device).type), **given})
    train(cfg, out_dir, device, getattr(args, "resume", False), given.keys())


def cmd_sample(args):
    model, schedule, cfg = load_model(args.checkpoint, pick_device(args.device), args.weights)
    check_guidance(args.guidance, cfg)
    if args.class_name and not cfg.conditional:
        raise UserError("--class-name needs a class-conditional model (trained with --conditional)")
    num_samples = args.num_samples or (4 * cfg.num_classes if cfg.conditional and not args.class_name else 16)
    write_sample_grid(model, schedule, cfg, args.out, num_samples, args.sampler, args.steps, args.guidance,
                      args.seed, args.class_name, args.eta, progress=True)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.trajectory:
        _, trajectory = generate_from_noise(model, schedule, seeded_noise(1, cfg.image_size, args.seed), args.sampler,
                                            args.steps, args.eta, class_labels(cfg, 1, args.class_name),
                                            guidance_for(cfg, args.guidance),
                                            seed=args.seed, return_trajectory=True)
        plot_trajectory(trajectory, args.trajectory)


def cmd_forward(args):
    if args.image:
        try:
            x0 = load_image(args.image, args.image_size).float() / 127.5 - 1
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"cannot read image {args.image}: {err}") from None
    elif args.data_dir:
        data = AnimalPhotos(args.data_dir, [args.class_name] if args.class_name else None, 1, 1, args.image_size, False)
        x0 = data[0][0]
    else:
        raise UserError("forward needs --data-dir or --image")
    snapshots = plot_forward_process(NoiseSchedule(args.timesteps, args.schedule), x0, args.out, args.seed)
    x_T = snapshots[args.timesteps]
    print(f"wrote {args.out}; x_T has mean {x_T.mean():.3f} and std {x_T.std():.3f}", file=sys.stderr)


def cmd_evaluate(args):
    result = evaluate(args.checkpoint, args.data_dir, args.out_json, args.device, args.num_samples, args.sampler,
                      args.steps, args.guidance, vlb_points=args.vlb_points, seed=args.seed, figure=args.figure,
                      show_photos=args.show_photos)
    print(json.dumps({k: v for k, v in result.items() if k != "denoising_loss_per_t"}, indent=2))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


####################################################################################################
# ==== file: test_single_sample.ipynb ====
####################################################################################################
# ---- notebook cell 1 ----
import time

import matplotlib.pyplot as plt
import torch

from rollNumber_05 import DEFAULT_CHECKPOINT, count_parameters, generate_from_noise, load_model, seeded_noise, to_display

device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", device)

# ---- notebook cell 3 ----
model, schedule, cfg = load_model(DEFAULT_CHECKPOINT, device)
print(f"{count_parameters(model) / 1e6:.1f} M parameters, {cfg.image_size} px images, T = {schedule.timesteps} steps")
print("classes:", ", ".join(cfg.classes))

# ---- notebook cell 5 ----
SEED = 3
CLASS_NAME = "Panda" if "Panda" in cfg.classes else cfg.classes[0]
GUIDANCE = 1.0  # 1: the paper's sampler, one network pass per step; 3: classifier-free guidance, twice the time

noise = seeded_noise(1, cfg.image_size, SEED)
plt.figure(figsize=(2.5, 2.5))
plt.imshow(to_display(noise[0].clamp(-1, 1)))
plt.title("x_T: pure noise")
plt.axis("off")
plt.show()

# ---- notebook cell 7 ----
labels = [cfg.classes.index(CLASS_NAME)] if cfg.conditional else None
start = time.time()
image, trajectory = generate_from_noise(model, schedule, noise, sampler="ddpm", labels=labels,
                                        guidance=GUIDANCE if cfg.conditional else 1.0, seed=SEED,
                                        return_trajectory=True)
print(f"{schedule.timesteps} DDPM steps in {time.time() - start:.1f} s on {device}")

# ---- notebook cell 9 ----
plt.figure(figsize=(4, 4))
plt.imshow(to_display(image[0]))
plt.title(f"generated {CLASS_NAME if cfg.conditional else 'sample'} (seed {SEED})")
plt.axis("off")
plt.show()

# ---- notebook cell 11 ----
fig, axes = plt.subplots(1, len(trajectory), figsize=(1.5 * len(trajectory), 2))
for ax, (t, x) in zip(axes, trajectory):
    ax.imshow(to_display(x[0]))
    ax.set_title(f"t = {t}", fontsize=9)
    ax.axis("off")
plt.show()
