"""Speed of rollNumber_05.py: training images per second and sampling seconds per image, eager and compiled.

    python tools/experiments/bench.py                  # CUDA if present, else CPU; writes results/bench_<device>.json
    python tools/experiments/bench.py --quick --device cpu     # smoke run, seconds on a CPU: prints, writes no file
    python tools/experiments/bench.py --device cuda --compile  # also compiled, as `train/sample --compile` do

Training times the script's own trainer (build_trainer, train_step) on the default class-conditional model, fed
one fixed batch of random images on the device (no data loading or augmentation): images/s of the median step after
warm-up, and FLOPs per image (torch.utils.flop_counter). Sampling times generate_from_noise on a fresh model (the
weights do not change the time) at the largest training size, without and with guidance; DDPM is timed over
--ddpm-steps steps and scaled to T. BENCHMARKS.md shows results/bench_*.json
(python tools/experiments/make_benchmarks.py).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import rollNumber_05 as ddpm  # noqa: E402


def timed_runs(run, warmup, repeats, device):
    """Seconds of each of `repeats` calls of run(i), after `warmup` untimed ones (allocator, cuDNN, compiling)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for i in range(warmup):
        run(i)
    seconds = []
    for i in range(warmup, warmup + repeats):
        sync()
        start = time.perf_counter()
        run(i)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def fake_batch(cfg, device):
    """Random images in [-1, 1] in the layout build_trainer gives the model (channels-last on CUDA), and labels."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x0 = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    return x0.contiguous(memory_format=layout), torch.arange(cfg.batch_size, device=device) % cfg.num_classes


def flops_per_image(cfg, device):
    """FLOPs (convolutions, matrix products, attention) of one eager training step per image, on a batch of 2."""
    cfg = replace(cfg, batch_size=2, compile=False)
    trainer, counter = ddpm.build_trainer(cfg, device, total_steps=1), FlopCounterMode(display=False)
    with counter:
        ddpm.train_step(trainer, *fake_batch(cfg, device), step=0)
    return counter.get_total_flops() / cfg.batch_size


def measure_training(cfg, device, args):
    trainer = ddpm.build_trainer(cfg, device, total_steps=args.warmup_steps + args.steps)
    x0, labels = fake_batch(cfg, device)
    seconds = timed_runs(lambda step: ddpm.train_step(trainer, x0, labels, step), args.warmup_steps, args.steps,
                         device)
    median = statistics.median(seconds)  # the median shrugs off steps slowed by other jobs
    return {"model": "ours+compile" if cfg.compile else "ours", "image_size": cfg.image_size,
            "batch_size": cfg.batch_size, "bf16": trainer.amp_dtype == torch.bfloat16,
            "channels_last": device.type == "cuda", "parameters": ddpm.count_parameters(trainer.model),
            "images_per_s": cfg.batch_size / median, "step_seconds_median": median, "step_seconds": seconds}


def time_sampler(model, schedule, noise, labels, guidance, sampler, steps, device, args):
    """Seconds per batch of generate_from_noise; DDPM on a schedule of --ddpm-steps steps, scaled up to T."""
    T = schedule.timesteps
    timed = min(args.ddpm_steps or T, T) if sampler == "ddpm" else steps
    if sampler == "ddpm" and timed < T:  # every DDPM step costs the same
        schedule = ddpm.NoiseSchedule(timed, device=device)
    runs = [seconds * (T / timed if sampler == "ddpm" else 1) for seconds in timed_runs(
        lambda _: ddpm.generate_from_noise(model, schedule, noise, sampler, steps, labels=labels, guidance=guidance),
        0, args.sampling_repeats, device)]
    median = statistics.median(runs)
    return {"sampler": sampler, "steps": T if sampler == "ddpm" else steps, "batch": len(noise),
            "image_size": noise.shape[-1], "guidance": guidance, "seconds_per_batch": median,
            "seconds_per_image": median / len(noise), "seconds_per_batch_min": min(runs),  # the least disturbed run
            "timed_steps": timed, "extrapolated": sampler == "ddpm" and timed < T}


def measure_sampling(cfg, compiled, device, args):
    model = ddpm.build_model(cfg).to(device).eval()
    model = ddpm.compile_model(model, device) if compiled else model
    schedule = ddpm.NoiseSchedule(cfg.timesteps, device)
    rows = []
    for guidance in args.guidance:
        for batch in args.sample_batches:
            noise = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
            labels = torch.arange(batch) % cfg.num_classes
            # untimed: the allocator, cuDNN's choice of algorithms, compiling for this batch and guidance
            ddpm.generate_from_noise(model, schedule, noise, "ddim", 2, labels=labels, guidance=guidance)
            rows += [{**time_sampler(model, schedule, noise, labels, guidance, sampler, steps, device, args),
                      "compiled": compiled} for sampler, steps in args.samplers]
    return rows


def hardware(device):
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    info = {"device": device.type, "cpu": next((line.split(":", 1)[1].strip() for line in cpuinfo if
                                                line.startswith("model name")), platform.machine()),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1m_at_start": os.getloadavg()[0]}  # other jobs on the machine slow every number here
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def benchmark(args, device):
    torch.manual_seed(0)
    cfg = ddpm.Config(conditional=True, batch_size=args.batch_size, image_size=args.sizes[0])
    for size in args.sizes:  # the script's own check, at the sizes timed (no half-size phase here)
        ddpm.check_image_size(replace(cfg, image_size=size, low_res_share=0))
    variants = [False, True] if args.compile else [False]
    training = []
    for size in args.sizes:
        flops = flops_per_image(replace(cfg, image_size=size), device)
        for compiled in variants:
            row = measure_training(replace(cfg, image_size=size, compile=compiled), device, args)
            training.append({**row, "flops_per_image": flops, "achieved_flops_per_s": flops * row["images_per_s"]})
    sampling = [row for compiled in variants if args.samplers
                for row in measure_sampling(replace(cfg, image_size=max(args.sizes)), compiled, device, args)]
    description = (f"Config defaults, conditional; patch {cfg.patch_size}, base {cfg.base_channels}, "
                   f"mults {','.join(map(str, cfg.channel_mults))}, {cfg.num_res_blocks} block per level, "
                   f"attention at {','.join(map(str, cfg.attention_resolutions))} px")
    return {"settings": vars(args), "hardware": hardware(device),
            "models": {"ours": {"parameters": ddpm.count_parameters(ddpm.UNet(cfg)), "description": description}},
            "training": training, "sampling": sampling}


def format_table(result):
    hw, ours = result["hardware"], result["models"]["ours"]
    lines = [f"{hw.get('gpu', hw['cpu'])} ({hw['device']}), torch {hw['torch']}, {hw['torch_threads']} CPU threads, "
             f"load average {hw['load_average_1m_at_start']:.1f} at start",
             f"rollNumber_05.UNet, {ours['parameters']:,} parameters ({ours['description']})", "",
             f"{'training':<14}{'px':>4}{'batch':>6}{'images/s':>10}{'ms/step':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}"]
    lines += [f"{r['model']:<14}{r['image_size']:>4}{r['batch_size']:>6}{r['images_per_s']:>10.1f}"
              f"{r['step_seconds_median'] * 1e3:>10.1f}{r['flops_per_image'] / 1e9:>11.2f}"
              f"{r['achieved_flops_per_s'] / 1e12:>9.3f}" for r in result["training"]]
    if result["sampling"]:
        lines += ["", f"{'sampling':<9}{'steps':>6}{'guidance':>9}{'batch':>6}{'compiled':>9}{'s/batch':>10}"
                      f"{'s/image':>10}{'fastest':>9}"]
    lines += [f"{r['sampler']:<9}{r['steps']:>6}{r['guidance']:>9g}{r['batch']:>6}{'yes' if r['compiled'] else 'no':>9}"
              f"{r['seconds_per_batch']:>10.3f}{r['seconds_per_image']:>10.3f}{r['seconds_per_batch_min']:>9.3f}"
              + (f"  (scaled from {r['timed_steps']} steps)" if r["extrapolated"] else "") for r in result["sampling"]]
    return "\n".join(lines)


def sampler_list(text):
    """'ddpm,ddim50,ddim25' -> [('ddpm', 0), ('ddim', 50), ('ddim', 25)]; '' -> no sampling."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if any(name != "ddpm" and not (name[:4] == "ddim" and name[4:].isdigit() and int(name[4:]) > 0) for name in names):
        raise argparse.ArgumentTypeError(f"samplers are ddpm or ddimN, e.g. ddpm,ddim50; got {text!r}")
    return [("ddpm", 0) if name == "ddpm" else ("ddim", int(name[4:])) for name in names]


def apply_defaults(args, device_type):
    """Settings left unset, by mode and device: a CPU step at 64 px takes a second, a GPU step milliseconds, and
    --quick only shows that the tool runs. --quick writes a file only where --out says."""
    quick, cpu = args.quick, device_type == "cpu"
    defaults = {"batch_size": 8 if quick else ddpm.Config().batch_size if cpu else ddpm.GPU_BATCH_SIZE,
                "sizes": [32] if quick else [32, 64],
                "warmup_steps": 1 if quick else 2 if cpu else 10,
                "steps": 2 if quick else 5 if cpu else 50,
                "samplers": sampler_list("ddim25" if quick else "ddpm,ddim50,ddim25"),
                "sample_batches": [1] if quick else [1, 16],
                "guidance": [1.0, 3.0],  # none, and the `sample` command's default
                "ddpm_steps": 100 if cpu else None,  # None: all T
                "sampling_repeats": 1 if quick else 5,
                "out": None if quick else str(ROOT / "results" / f"bench_{device_type}.json")}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, 32 px; writes only where --out says")
    p.add_argument("--out", help="JSON file (default: results/bench_<device>.json; with --quick none)")
    p.add_argument("--compile", action="store_true", help="also time the model compiled as `train --compile` and "
                                                          "`sample --compile` compile it (slow to start on a CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, help="training images per step (default: the trainer's; quick: 8)")
    p.add_argument("--sizes", type=ddpm.int_list, help="training image sizes (default: 32,64; quick: 32)")
    p.add_argument("--warmup-steps", type=int, help="untimed training steps first")
    p.add_argument("--steps", type=int, help="timed training steps (the median is reported)")
    p.add_argument("--samplers", type=sampler_list, help='default: ddpm,ddim50,ddim25 (quick: ddim25); "": none')
    p.add_argument("--sample-batches", type=ddpm.int_list, help="sampling batch sizes (default: 1,16; quick: 1)")
    p.add_argument("--guidance", type=lambda text: [float(v) for v in text.split(",")],
                   help="guidance scales to sample at (default: 1,3)")
    p.add_argument("--ddpm-steps", type=int, help="DDPM steps timed, scaled to T (default: CUDA all, CPU 100)")
    p.add_argument("--sampling-repeats", type=int, help="timed runs per sampler (the median is reported)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        result = benchmark(apply_defaults(args, device.type), device)
    except ddpm.UserError as err:
        sys.exit(f"error: {err}")
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
