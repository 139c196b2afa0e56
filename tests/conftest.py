"""Shared fixtures: a tiny synthetic photo set, a tiny Config, a runner for the command line, and the CLI
training runs that several test files share.

Everything is sized for a 2-core CPU: 16 px images, 8 base channels, two U-Net levels, T = 50. The CLI training
runs start with the session, in the background, and the tests that need them are ordered last, so the runs
overlap the quick in-process tests.
"""
import csv
import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "rollNumber_05.py"
REAL_ANIMALS = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals"
sys.path.insert(0, str(ROOT))

import rollNumber_05 as ddpm  # noqa: E402

# Tiny models gain nothing from a second thread, and the machine is shared with long jobs.
torch.set_num_threads(1)

# class name -> (base colour, pattern); three classes a model can tell apart at 16 px
TINY_CLASSES = {
    "Crow": ((30, 30, 30), "horizontal"),
    "Fox": ((220, 110, 20), "vertical"),
    "Owl": ((40, 90, 200), "checker"),
}
IMAGES_PER_CLASS = 4

# The flags that make `train` finish in seconds; every CLI training run in the suite starts from these.
TINY_TRAIN_FLAGS = ["--image-size", "16", "--patch-size", "1", "--base-channels", "8", "--channel-mults", "1,2",
                    "--attention-resolutions", "8", "--timesteps", "50", "--batch-size", "4", "--sample-every", "0",
                    "--num-classes", "3", "--images-per-class", str(IMAGES_PER_CLASS), "--device", "cpu"]


def pattern_image(colour, pattern, shade=0, size=(24, 20)):
    """A colour with a pattern of lighter stripes or squares; `shade` varies images within a class."""
    width, height = size
    base = tuple(max(0, min(255, c + shade)) for c in colour)
    light = tuple(min(255, c + 90) for c in base)
    img = Image.new("RGB", size, base)
    pixels = img.load()
    for y in range(height):
        for x in range(width):
            on = {"horizontal": (y // 3) % 2, "vertical": (x // 3) % 2, "checker": (x // 4 + y // 4) % 2}[pattern]
            if on:
                pixels[x, y] = light
    return img


def write_class(folder, colour, pattern, count, start=0, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pattern_image(colour, pattern, shade=8 * i).save(folder / f"img_{i:02d}{suffix}")
    return folder


def write_dataset(root, classes=TINY_CLASSES, per_class=IMAGES_PER_CLASS):
    """root/<Class>/img_XX.png|jpg for each class; half PNG, half JPEG."""
    root = Path(root)
    for name, (colour, pattern) in classes.items():
        half = per_class // 2
        write_class(root / name, colour, pattern, half, 0, ".png")
        write_class(root / name, colour, pattern, per_class - half, half, ".jpg")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A read-only 3-class set, 4 images per class. Tests that change files make their own with make_dataset."""
    return write_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: make_dataset(per_class=4, classes=TINY_CLASSES) -> a fresh data folder under tmp_path."""
    counter = iter(range(1000))

    def make(per_class=IMAGES_PER_CLASS, classes=TINY_CLASSES):
        return write_dataset(tmp_path / f"data{next(counter)}", classes, per_class)
    return make


def tiny_config_values(**overrides):
    values = dict(num_classes=3, images_per_class=IMAGES_PER_CLASS, image_size=16, timesteps=50, patch_size=1,
                  base_channels=8, channel_mults=[1, 2], attention_resolutions=[8], epochs=2, batch_size=4,
                  lr=2e-3, warmup_steps=5, log_every=1, sample_every=0, save_every=1000, ema_decay=0.9,
                  conditional=False, min_snr_gamma=0.0, low_res_share=0.0)  # these two have tests of their own
    values.update(overrides)
    return values


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(**overrides) -> a Config small enough to train in seconds on one CPU core."""
    def make(**overrides):
        return ddpm.Config(**tiny_config_values(**overrides))
    return make


def perturb_weights(model, seed=0, scale=0.2):
    """Random values in every parameter. The zero-initialised output convolutions make a fresh U-Net ignore
    t and the class (its residual branches start at exactly zero), so tests of conditioning need this."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def save_model_file(path, cfg, seed=0):
    """A model.pt like make_submission's choose writes (config, class names, EMA weights), with random weights."""
    torch.manual_seed(seed)
    model = perturb_weights(ddpm.UNet(cfg), seed)
    torch.save({"config": dataclasses.asdict(cfg), "class_names": list(cfg.classes), "step": 0,
                "ema": model.state_dict()}, path)
    return Path(path)


def cli_env():
    # One thread per child: runs are reproducible and do not fight the background jobs for the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def start_cli(*args, cwd):
    """Starts `python rollNumber_05.py ARGS` in cwd without waiting (for runs that go side by side)."""
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cli(proc, timeout=300):
    """Waits for a started run: (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} ran past {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


def run_cli(*args, cwd, timeout=300):
    """Runs `python rollNumber_05.py ARGS` in cwd: (returncode, stdout, stderr)."""
    return finish_cli(start_cli(*args, cwd=cwd), timeout)


def run_cli_many(commands, cwd, parallel=3, timeout=300):
    """{name: [args]} -> {name: (returncode, stdout, stderr)}, a few at a time. Each run pays about 3 s of
    CPU just to import torch, so the short ones go side by side."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=cwd, timeout=timeout) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


# The shared trained run: a class-conditional model, 8 epochs of 3 steps, a checkpoint and a log row every step.
TRAINED_RUN_FLAGS = [*TINY_TRAIN_FLAGS, "--epochs", "8", "--save-every", "1", "--log-every", "1", "--lr", "2e-3",
                     "--warmup-steps", "3", "--conditional", "--cond-drop", "0.3"]
TRAINED_RUN_STEPS = 24
KILL_AFTER_ROWS = 6  # the interrupted copy is killed once it has logged this many steps

Run = dataclasses.make_dataclass("Run", ["rc", "stdout", "stderr", "out_dir"])


def log_rows(path):
    """The complete rows of a log.csv that a running process may still be writing."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("loss")]


def train_uninterrupted(data, cwd):
    out_dir = cwd / "A"
    return Run(*run_cli("train", "--data-dir", data, "--out-dir", out_dir, *TRAINED_RUN_FLAGS, cwd=cwd), out_dir)


def train_killed_then_resumed(data, cwd):
    """The same run, killed with SIGKILL (no chance to save) part-way, then continued with --resume.
    Returns (the killed run, the checkpoints it left, the resumed run)."""
    out_dir = cwd / "B"
    proc = start_cli("train", "--data-dir", data, "--out-dir", out_dir, *TRAINED_RUN_FLAGS, cwd=cwd)
    deadline = time.time() + 300
    while len(log_rows(out_dir / "log.csv")) < KILL_AFTER_ROWS and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    killed = Run(*finish_cli(proc), out_dir)
    left = sorted(p.name for p in (out_dir / "checkpoints").glob("step_*.pt")) if out_dir.exists() else []
    resumed = Run(*run_cli("train", "--out-dir", out_dir, "--resume", cwd=cwd), out_dir)
    return killed, left, resumed


SLOW_FIXTURES = {"trained_run": train_uninterrupted, "resumed_run": train_killed_then_resumed}


def pytest_collection_modifyitems(items):
    """Tests that wait for a CLI training run go last, so the runs (started with the session) overlap the
    quick in-process tests."""
    items.sort(key=lambda item: bool(SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))))


@pytest.fixture(scope="session", autouse=True)
def background_runs(request, tmp_path_factory, tiny_data):
    """Starts, as the session begins, the CLI training runs that the selected tests need: {name: future}."""
    needed = [name for name in SLOW_FIXTURES
              if any(name in getattr(item, "fixturenames", ()) for item in request.session.items)]
    pool = ThreadPoolExecutor(max(1, len(needed)))
    cwd = tmp_path_factory.mktemp("runs")
    futures = {name: pool.submit(SLOW_FIXTURES[name], tiny_data, cwd) for name in needed}
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def trained_run(background_runs):
    """The shared class-conditional model trained through the CLI (TRAINED_RUN_FLAGS) in runs/A: rc, stdout,
    stderr, out_dir. Tests that change its files copy them first."""
    return background_runs["trained_run"].result()


@pytest.fixture(scope="session")
def trained_model(trained_run):
    assert trained_run.rc == 0, trained_run.stderr
    return trained_run.out_dir / "model.pt"


@pytest.fixture(scope="session")
def resumed_run(background_runs):
    """The trained run again, killed part-way and resumed: (killed Run, checkpoint names it left, resumed Run)."""
    return background_runs["resumed_run"].result()


@pytest.fixture
def real_animals():
    """The real photo set (../shared/data/animals); tests that use it are skipped where it is absent.
    Its photos have no known licence: read them in place, never copy them anywhere lasting."""
    if not REAL_ANIMALS.is_dir():
        pytest.skip(f"real dataset not found at {REAL_ANIMALS}")
    return REAL_ANIMALS
