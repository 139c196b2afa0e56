"""Speed of rollNumber_05.py: training throughput against diffusers' UNet2DModel, and sampling time.

    python tools/bench.py                        # CUDA if present, else CPU; writes results/bench_<device>.json
    python tools/bench.py --quick --device cpu   # about a minute on a 2-core CPU (tests/test_bench.py runs it)
    python tools/bench.py --device cuda --compile --peak-tflops 989

Training: the trainer's own step (training_loss under autocast, AdamW, gradient clipping, EMA update, the
one host sync per step) on the default conditional model at 32 and 64 px, and the same step on a diffusers
UNet2DModel picked to have the same parameter count (within 10%). Reported: images/s from the median step
after warm-up, FLOPs per image (torch.utils.flop_counter, forward + backward) and the FLOP/s they imply,
and peak memory (CUDA: max allocated; CPU: growth of the peak RSS, approximate).

Sampling: rollNumber_05.generate_from_noise at 64 px, batch 1 and 16: DDPM over all T steps and DDIM at 50
and 25 steps, without guidance (one network pass per step) and with the classifier-free guidance the `sample`
command uses (two passes, batched). On CUDA each is timed eager and compiled as `sample --compile` compiles it
(CUDA graphs). Reported: the median of the timed runs and the fastest one (on a shared machine, the run least
slowed by other jobs).

diffusers is a benchmark-only dependency (requirements-dev.txt); rollNumber_05.py never imports it.
"""
import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rollNumber_05 as ddpm  # noqa: E402

# Widths and depths tried for the peer; the one closest to our parameter count is used. At the default Config
# that is (32, 64, 64, 128) with one block per level: our widths and depth, and within 0.1% of our count.
PEER_GRID = [(channels, layers) for layers in (1, 2) for channels in
             [(32, 64, 64, 128), (32, 48, 64, 128), (32, 64, 96, 96), (32, 64, 128, 96), (32, 64, 96, 128),
              (32, 64, 128, 128), (64, 128, 128, 256), (32, 64, 128, 256)]]
MAX_PARAM_MISMATCH = 0.10
PEER_NORM_GROUPS = 8  # as ours (min(8, channels)); diffusers' default 32 would leave one channel per group at width 32
PEER_HEAD_CHANNELS = 32  # as ours, so both run attention with the same number of heads


# ---------------------------------------------------------------------------------------------
# Models: ours from the script, the peer from diffusers behind the same call signature
# ---------------------------------------------------------------------------------------------

def our_config(image_size, args):
    """The shipped model: Config defaults, class-conditional, with this run's batch and precision settings."""
    return ddpm.Config(conditional=True, image_size=image_size, batch_size=args.batch_size,
                       precision=args.precision)


def peer_settings(block_channels, layers_per_block, cfg):
    """UNet2DModel arguments: self-attention at the lowest level and in the middle block (at 64 px that is 8x8,
    the size ours attends at), one embedding per class plus the "no class" entry classifier-free guidance needs."""
    levels = len(block_channels)
    return {"sample_size": cfg.image_size, "block_out_channels": tuple(block_channels),
            "layers_per_block": layers_per_block,
            "down_block_types": ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            "norm_num_groups": PEER_NORM_GROUPS, "attention_head_dim": PEER_HEAD_CHANNELS,
            "num_class_embeds": cfg.num_classes + 1 if cfg.conditional else None}


class PeerUNet(nn.Module):
    """diffusers' UNet2DModel called like ours: model(x_t, t, labels, augment) -> noise estimate. The bench
    feeds no augmentation parameters (tensors stand in for the photos), so `augment` is always None here."""

    def __init__(self, settings):
        super().__init__()
        from diffusers import UNet2DModel
        self.net = UNet2DModel(**settings)

    def forward(self, x, t, labels=None, augment=None):
        return self.net(x, t, class_labels=labels, return_dict=False)[0]


def matched_peer(cfg):
    """The PEER_GRID entry whose parameter count is closest to our model's, with both counts (models built on
    the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        ours = ddpm.count_parameters(ddpm.UNet(cfg))
        candidates = [peer_settings(channels, layers, cfg) for channels, layers in PEER_GRID]
        counts = [ddpm.count_parameters(PeerUNet(s)) for s in candidates]
    best = min(range(len(counts)), key=lambda i: abs(counts[i] - ours))
    if abs(counts[best] / ours - 1) > MAX_PARAM_MISMATCH:
        raise ddpm.UserError(f"no peer in PEER_GRID is within {MAX_PARAM_MISMATCH:.0%} of our {ours:,} parameters "
                             f"(closest {counts[best]:,}); add a wider or narrower entry to PEER_GRID")
    return candidates[best], ours, counts[best]


def build(kind, cfg, peer, device):
    model = ddpm.UNet(cfg) if kind == "ours" else PeerUNet({**peer, "sample_size": cfg.image_size})
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # as train() does
    return model.to(device, memory_format=memory_format), memory_format


# ---------------------------------------------------------------------------------------------
# Memory and timing on either device
# ---------------------------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device):
    """Frees what earlier measurements left behind, so the next one starts from the same floor."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # glibc keeps freed pages resident; hand them back so they do not hide the next run's growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def memory_in_use(device):
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:  # resident pages; Linux only, as is the peak reset below
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_memory(device):
    """Starts a fresh peak. On CPU, writing 5 to clear_refs resets the kernel's peak RSS, which getrusage reports;
    where that is not allowed the peak is the whole process's, and a smaller later run shows no growth."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def timed_runs(run, warmup, repeats, device):
    """Seconds of each of `repeats` calls of run(i), after `warmup` untimed ones (allocator, cuDNN and
    compile warm-up)."""
    for i in range(warmup):
        run(i)
    synchronize(device)
    seconds = []
    for i in range(warmup, warmup + repeats):
        start = time.perf_counter()
        run(i)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


# ---------------------------------------------------------------------------------------------
# Training throughput
# ---------------------------------------------------------------------------------------------

def bench_trainer(model, forward_model, cfg, device):
    """A rollNumber_05.Trainer around `model` (ours or the peer), with the optimiser, EMA, precision and loss
    scaling that train() gives its own; the learning rate stays at its peak."""
    amp_dtype = ddpm.autocast_dtype(cfg.precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")  # as train(): one kernel for the update on CUDA
    return ddpm.Trainer(cfg, model, forward_model, ddpm.EMA(model, cfg.ema_decay), optimizer,
                        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                        torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                        ddpm.NoiseSchedule(cfg.timesteps, cfg.schedule, device), amp_dtype, total_steps=0)


def bench_step(trainer, images, labels, step, memory_format):
    """One step of rollNumber_05.train's loop (its own train_step) on images already on the device, minus data
    loading, logging and checkpoints."""
    batch = torch.randint(len(images), (trainer.cfg.batch_size,), device=images.device)
    x0 = ddpm.to_model_range(images[batch]).contiguous(memory_format=memory_format)
    ddpm.train_step(trainer, x0, labels[batch] if trainer.cfg.conditional else None, step)


def flops_per_image(model, schedule, cfg, amp_dtype, memory_format, device, batch=2):
    """FLOPs of one training forward + backward per image, counted (not timed) on a small batch: matmuls,
    convolutions and attention scale linearly with the batch, elementwise work is not counted."""
    x0 = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device).contiguous(memory_format=memory_format)
    labels = torch.arange(batch, device=device) % cfg.num_classes
    counter = FlopCounterMode(display=False)
    with counter:
        with ddpm.autocast(device, amp_dtype):
            losses, _ = ddpm.training_loss(model, schedule, x0, labels, cfg)
        losses.mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def compile_as(kind, model, device):
    """'ours+compile' compiles as `train --compile` does; 'ours+compile:MODE' with that torch.compile mode."""
    if "+compile" not in kind:
        return model
    mode = kind.partition(":")[2]
    return torch.compile(model, mode=mode) if mode else ddpm.compile_model(model, device)


def measure_training(kind, image_size, peer, device, args):
    """images/s, FLOPs and peak memory of training `kind` ('ours', 'ours+compile[:MODE]' or 'peer') at image_size."""
    cfg = our_config(image_size, args)
    ddpm.check_image_size(cfg)
    release_memory(device)
    floor = memory_in_use(device)
    model, memory_format = build(kind.split("+")[0], cfg, peer, device)
    trainer = bench_trainer(model, compile_as(kind, model, device), cfg, device)
    flops = flops_per_image(model, trainer.schedule, cfg, trainer.amp_dtype, memory_format, device)
    # a stand-in for the photo set: 100 uint8 images on the device, as train() keeps them
    images = torch.randint(0, 256, (100, 3, image_size, image_size), dtype=torch.uint8, device=device)
    labels = torch.arange(100, device=device) % cfg.num_classes
    peak_reset = reset_peak_memory(device)
    seconds = timed_runs(lambda step: bench_step(trainer, images, labels, step, memory_format),
                         args.warmup_steps, args.steps, device)
    step_seconds = statistics.median(seconds)  # the median shrugs off steps slowed by other jobs on the machine
    images_per_s = cfg.batch_size / step_seconds
    return {"model": kind, "image_size": image_size, "batch_size": cfg.batch_size,
            "bf16": trainer.amp_dtype == torch.bfloat16,
            "channels_last": memory_format == torch.channels_last,
            "parameters": ddpm.count_parameters(model), "images_per_s": images_per_s,
            "step_seconds_median": step_seconds, "step_seconds": seconds,
            "flops_per_image": flops, "achieved_flops_per_s": flops * images_per_s,
            "peak_memory_bytes": max(0, peak_memory(device) - floor),
            "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else
            "peak RSS growth (approximate)" if peak_reset else "lifetime peak RSS growth (approximate, no reset)"}


# ---------------------------------------------------------------------------------------------
# Sampling time
# ---------------------------------------------------------------------------------------------

def sampling_model(checkpoint, device, args):
    """A trained model from --checkpoint, or a fresh default one at 64 px: timing does not depend on the weights."""
    if checkpoint:
        return ddpm.load_model(checkpoint, device)
    cfg = our_config(64, args)
    model = ddpm.build_model(cfg).to(device).eval()
    return model, ddpm.NoiseSchedule(cfg.timesteps, cfg.schedule, device), cfg


def time_sampler(model, schedule, cfg, sampler, steps, batch, timed_ddpm_steps, guidance, cuda_graph, device, args):
    """Seconds for one batch (cuda_graph: `model` is compiled as `sample --compile` does, CUDA graphs on a GPU). DDPM is timed over `timed_ddpm_steps` steps (a schedule of that length: every
    step costs the same) and scaled to T."""
    noise = ddpm.seeded_noise(batch, cfg.image_size, seed=0)
    labels = ddpm.class_labels(cfg, batch)
    if sampler == "ddpm" and timed_ddpm_steps < schedule.timesteps:
        run_schedule = ddpm.NoiseSchedule(timed_ddpm_steps, cfg.schedule, device)
        scale = schedule.timesteps / timed_ddpm_steps
    else:
        run_schedule, scale = schedule, 1.0

    def run(_):
        ddpm.generate_from_noise(model, run_schedule, noise, sampler, steps, labels=labels, guidance=guidance)
    runs = [seconds * scale for seconds in timed_runs(run, 0, args.sampling_repeats, device)]
    seconds = statistics.median(runs)
    return {"sampler": sampler, "steps": schedule.timesteps if sampler == "ddpm" else steps, "batch": batch,
            "image_size": cfg.image_size, "guidance": guidance, "cuda_graph": cuda_graph, "seconds_per_batch": seconds,
            "seconds_per_image": seconds / batch,
            # the fastest run: what the machine can do when no other job takes its cores (the median includes them)
            "seconds_per_batch_min": min(runs),
            "timed_steps": run_schedule.timesteps if sampler == "ddpm" else steps, "extrapolated": scale != 1.0}


def measure_sampling(device, args):
    model, schedule, cfg = sampling_model(args.checkpoint, device, args)
    scales = args.guidance if cfg.conditional else [1.0]
    batch = max(args.sample_batches)
    ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(batch, cfg.image_size, 0), "ddim", 2,
                             labels=ddpm.class_labels(cfg, batch),
                             guidance=max(scales))  # warm-up: allocator, cuDNN algorithm choice
    timed_ddpm_steps = min(args.ddpm_steps or schedule.timesteps, schedule.timesteps)
    # on CUDA also `sample --compile`: torch.compile's CUDA graphs replay each network call
    variants = [(False, model)] + ([(True, ddpm.compile_model(model, device))] if device.type == "cuda" else [])
    return [time_sampler(variant, schedule, cfg, sampler, steps, batch, timed_ddpm_steps, guidance, graph, device, args)
            for guidance in scales for batch in args.sample_batches for sampler, steps in args.samplers
            for graph, variant in variants]


# ---------------------------------------------------------------------------------------------
# Report: hardware, table, JSON
# ---------------------------------------------------------------------------------------------

def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device):
    import diffusers
    info = {"device": device.type, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "load_average_1m_at_start": os.getloadavg()[0]}  # other jobs on the machine slow every number here
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def speed_ratios(rows):
    """images/s of ours (and ours+compile) over the peer's, per image size."""
    peer = {r["image_size"]: r["images_per_s"] for r in rows if r["model"] == "peer"}
    return {f"{r['model']}/peer@{r['image_size']}px": r["images_per_s"] / peer[r["image_size"]]
            for r in rows if r["model"] != "peer" and r["image_size"] in peer}


def describe_peer(peer):
    return (f"block_out_channels {peer['block_out_channels']}, layers_per_block {peer['layers_per_block']}, "
            f"attention at the lowest resolution and in the middle block, norm groups {peer['norm_num_groups']}, "
            f"head dim {peer['attention_head_dim']}, {peer['num_class_embeds']} class embeddings")


def header_lines(result):
    hw, ours, peer = result["hardware"], result["models"]["ours"], result["models"]["peer"]
    return [f"bench on {hw.get('gpu', hw['cpu'])} ({hw['device']}), torch {hw['torch']}, {hw['torch_threads']} CPU "
            f"threads, load average {hw['load_average_1m_at_start']:.1f} at start"
            + ("" if hw["device"] == "cuda" else " (other jobs slow these numbers)"),
            f"ours: rollNumber_05.UNet, {ours['parameters']:,} parameters ({ours['description']})",
            f"peer: diffusers {hw['diffusers']} UNet2DModel, {peer['parameters']:,} parameters "
            f"({peer['parameters'] / ours['parameters'] - 1:+.1%}): {describe_peer(peer['settings'])}"]


def training_lines(rows, ratios, settings, on_gpu):
    first = rows[0]
    lines = [f"training: batch {first['batch_size']}, {'bf16 autocast' if first['bf16'] else 'fp32'}, "
             f"{'channels-last' if first['channels_last'] else 'contiguous'}, AdamW, grad clip, EMA; "
             f"median of {settings['steps']} steps after {settings['warmup_steps']} warm-up",
             f"{'model':<28}{'px':>4}{'images/s':>10}{'ms/step':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}"
             + (f"{'% peak':>8}" if on_gpu else "") + f"{'peak MB':>9}"]
    for r in rows:
        tflops = r["achieved_flops_per_s"] / 1e12
        lines.append(f"{r['model']:<28}{r['image_size']:>4}{r['images_per_s']:>10.1f}"
                     f"{r['step_seconds_median'] * 1e3:>10.1f}{r['flops_per_image'] / 1e9:>11.2f}{tflops:>9.3f}"
                     + (f"{100 * tflops / settings['peak_tflops']:>7.1f}%" if on_gpu else "")
                     + f"{r['peak_memory_bytes'] / 2 ** 20:>9.0f}")
    lines += [f"{name:<38}{ratio:>6.2f}x images/s" for name, ratio in ratios.items()]
    if not on_gpu:
        lines.append("(CPU peak MB: growth of the process's peak RSS during the run, approximate)")
    return lines


def sampling_lines(rows, trained):
    lines = [f"sampling at {rows[0]['image_size']} px, {'trained' if trained else 'freshly initialised'} model; "
             f"guidance 1 is one network pass per step, other scales two (batched); s/batch is the median of the "
             f"timed runs, fastest the quickest of them (s/batch)",
             f"{'sampler':<9}{'steps':>6}{'guidance':>9}{'batch':>6}{'graph':>6}{'s/batch':>10}{'s/image':>10}"
             f"{'fastest':>9}"]
    for r in rows:
        note = f"  extrapolated from {r['timed_steps']} steps" if r["extrapolated"] else ""
        lines.append(f"{r['sampler']:<9}{r['steps']:>6}{r['guidance']:>9g}{r['batch']:>6}"
                     f"{'yes' if r['cuda_graph'] else 'no':>6}{r['seconds_per_batch']:>10.2f}"
                     f"{r['seconds_per_image']:>10.3f}{r['seconds_per_batch_min']:>9.2f}{note}")
    return lines


def format_table(result):
    settings, on_gpu = result["settings"], result["hardware"]["device"] == "cuda"
    lines = header_lines(result) + [""] + training_lines(result["training"], result["ours_over_peer"], settings, on_gpu)
    if result["sampling"]:
        lines += [""] + sampling_lines(result["sampling"], bool(settings["checkpoint"]))
    return "\n".join(lines)


def describe_ours(cfg):
    return (f"Config defaults, conditional; patch {cfg.patch_size}, base {cfg.base_channels}, "
            f"mults {','.join(map(str, cfg.channel_mults))}, {cfg.num_res_blocks} block per level, "
            f"attention at {','.join(map(str, cfg.attention_resolutions))} px")


def benchmark(args):
    device = ddpm.pick_device(args.device)
    torch.manual_seed(0)
    cfg = our_config(args.sizes[0], args)
    peer, our_params, peer_params = matched_peer(cfg)
    compiled = [f"ours+compile{':' + mode if mode != 'trainer' else ''}" for mode in args.compile or []]
    kinds = ["ours"] + compiled + ["peer"]
    training = [measure_training(kind, size, peer, device, args) for size in args.sizes for kind in kinds]
    return {"settings": vars(args),
            "hardware": hardware(device),
            "models": {"ours": {"parameters": our_params, "description": describe_ours(cfg),
                                "config": {k: getattr(cfg, k) for k in ddpm.ARCHITECTURE_KEYS if k != "image_size"}},
                       "peer": {"parameters": peer_params,
                                "settings": {k: v for k, v in peer.items() if k != "sample_size"}}},
            "training": training,
            "ours_over_peer": speed_ratios(training),
            "sampling": measure_sampling(device, args) if args.samplers else []}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def sampler_list(text):
    """'ddpm,ddim50,ddim25' -> [('ddpm', 0), ('ddim', 50), ('ddim', 25)]."""
    samplers = []
    for name in filter(None, (v.strip() for v in text.split(","))):
        if name == "ddpm":
            samplers.append(("ddpm", 0))
        elif name.startswith("ddim") and name[4:].isdigit() and int(name[4:]) > 0:
            samplers.append(("ddim", int(name[4:])))
        else:
            raise argparse.ArgumentTypeError(f"unknown sampler {name!r}; use ddpm or ddimN, e.g. ddim50")
    return samplers


def compile_modes(text):
    """'default,reduce-overhead' -> ['default', 'reduce-overhead']; 'trainer' is `train --compile`'s choice."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    known = {"trainer", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"}
    if not modes or set(modes) - known:
        raise argparse.ArgumentTypeError(f"compile modes are some of {', '.join(sorted(known))}; got {text!r}")
    return modes


def float_list(text):
    """'1,3' -> [1.0, 3.0]: guidance scales, each at least 1 (1 = no guidance)."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 1,3; got {text!r}") from None
    if not scales or min(scales) < 1:
        raise argparse.ArgumentTypeError(f"guidance scales must be 1 or more, e.g. 1,3; got {text!r}")
    return scales


def apply_mode_defaults(args, device_type):
    """Step counts left unset get defaults by mode and device: a CPU step at 64 px takes seconds, a GPU step
    milliseconds, and --quick only has to prove the tool still runs."""
    quick, cpu = args.quick, device_type == "cpu"
    trainer_batch = ddpm.Config(**ddpm.device_defaults(device_type)).batch_size  # what `train` uses on this device
    defaults = {"batch_size": 8 if quick else trainer_batch,  # quick: the peer's step at 32 takes seconds
                "sizes": [32] if quick else [32, 64],
                "warmup_steps": 1 if quick else (2 if cpu else 10),
                "steps": 2 if quick else (5 if cpu else 50),
                "sample_batches": [1] if quick else [1, 16],
                "samplers": sampler_list("ddpm,ddim25" if quick else "ddpm,ddim50,ddim25"),
                # all T DDPM steps at batch 16 take about an hour on a CPU; every step costs the same, so a
                # timed stretch scaled up is as good
                "ddpm_steps": 5 if quick else (100 if cpu else None),
                "sampling_repeats": 1 if quick else 5,  # a shared CPU has slow spells: a median of 5
                "guidance": [1.0, ddpm.DEFAULT_GUIDANCE]}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:
        args.out = f"results/bench_{device_type}.json"
    return args


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quick", action="store_true", help="tiny step counts, 32 px training, batch-1 sampling")
    p.add_argument("--out", help="JSON file (default: results/bench_<device>.json)")
    p.add_argument("--batch-size", type=ddpm.positive_int,
                   help=f"training images per step, both models (default: the trainer's, {ddpm.Config().batch_size} "
                        f"on a CPU and {ddpm.GPU_BATCH_SIZE} on CUDA; quick: 8)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: as the trainer (bf16 or fp16 autocast on CUDA by the card, fp32 elsewhere)")
    p.add_argument("--compile", nargs="?", const=["trainer"], type=compile_modes,
                   help="also time torch.compile'd ours: as `train --compile` does, or with the given torch.compile "
                        "modes, e.g. --compile default,reduce-overhead")
    p.add_argument("--sizes", type=ddpm.int_list, help="training image sizes (default: 32,64; quick: 32)")
    p.add_argument("--warmup-steps", type=ddpm.non_negative_int, help="untimed training steps first")
    p.add_argument("--steps", type=ddpm.positive_int, help="timed training steps (the median is reported)")
    p.add_argument("--sample-batches", type=ddpm.int_list, help="sampling batch sizes (default: 1,16; quick: 1)")
    p.add_argument("--samplers", type=sampler_list, help="e.g. ddpm,ddim50,ddim25 (the default; quick: ddpm,ddim25)")
    p.add_argument("--ddpm-steps", type=ddpm.positive_int,
                   help="time this many DDPM steps and scale to T (default: all T on CUDA, 100 on CPU, 5 quick)")
    p.add_argument("--sampling-repeats", type=ddpm.positive_int, help="timed runs per sampler (median)")
    p.add_argument("--guidance", type=float_list,
                   help=f"guidance scales to time sampling at (default: 1 and the sample command's "
                        f"{ddpm.DEFAULT_GUIDANCE:g})")
    p.add_argument("--checkpoint", help="time sampling with this trained model (default: a fresh default model)")
    p.add_argument("--threads", type=ddpm.positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=ddpm.positive_float, default=989.0,
                   help="the GPU's dense bf16 peak, for the %% of peak column (default: H100 SXM, %(default)s)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("error: diffusers is not installed; pip install -r requirements-dev.txt")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args = apply_mode_defaults(args, ddpm.pick_device(args.device).type)
        result = benchmark(args)
    except ddpm.UserError as err:
        sys.exit(f"error: {err}")
    print(format_table(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
