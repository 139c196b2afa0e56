"""The GPU paths: compiled sampling and training (CUDA graphs), mixed precision with the GPU batch default. Skipped without CUDA
(CI has none); run on a GPU machine with `pytest tests/test_cuda.py`."""
import math

import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, ddpm, log_rows, perturb_weights, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def trained_looking_model(tiny_config, **overrides):
    cfg = tiny_config(conditional=True, **overrides)
    model = perturb_weights(ddpm.build_model(cfg), seed=1, scale=0.05).cuda().eval()
    return model, ddpm.NoiseSchedule(cfg.timesteps, "cuda"), cfg


@pytest.mark.parametrize("sampler, guidance", [("ddim", 3.0), ("ddpm", 1.0), ("ddpm", 3.0)])
def test_compiled_sampling_gives_the_eager_images(tiny_config, sampler, guidance):
    """`sample --compile`: torch.compile's reduce-overhead mode replays each network call as a CUDA graph."""
    model, schedule, cfg = trained_looking_model(tiny_config)
    compiled = ddpm.compile_model(model, torch.device("cuda"))
    noise, labels = ddpm.seeded_noise(3, cfg.image_size, seed=4), torch.tensor([0, 1, 2])

    def sample(network, seed=0):
        return ddpm.generate_from_noise(network, schedule, noise, sampler, steps=10, labels=labels,
                                        guidance=guidance, seed=seed)

    eager, graphed = sample(model), sample(compiled)
    other_seed = sample(compiled, seed=1)
    assert graphed.shape == eager.shape == (3, 3, cfg.image_size, cfg.image_size)
    assert (graphed - eager).abs().max() < 2e-2, "the compiled network must compute what the eager one does"
    if sampler == "ddpm":  # the noise drawn between steps still comes from the seeded generator, outside the graph
        assert (other_seed - graphed).abs().max() > 0.05


def test_compiled_trajectory_keeps_each_step(tiny_config):
    """A CUDA graph overwrites its output buffer at every replay: the recorded x_t must be copies, all different."""
    model, schedule, cfg = trained_looking_model(tiny_config)
    compiled = ddpm.compile_model(model, torch.device("cuda"))
    _, trajectory = ddpm.generate_from_noise(compiled, schedule, ddpm.seeded_noise(1, cfg.image_size, 0), "ddim", 10,
                                             labels=[0], guidance=3.0, return_trajectory=True)
    images = [x for _, x in trajectory]
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(images, images[1:]))


def test_auto_precision_follows_the_card():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert ddpm.autocast_dtype("auto", torch.device("cuda")) == expected


def gpu_train_flags():
    """The tiny run's flags, with the batch size and device left to the defaults for a machine with a GPU."""
    flags = list(TINY_TRAIN_FLAGS)
    for flag in ("--batch-size", "--device"):
        i = flags.index(flag)
        del flags[i:i + 2]
    return flags


def test_training_on_cuda_uses_the_gpu_batch_and_the_cards_precision(tiny_data, tmp_path):
    out = tmp_path / "run"
    # 426 passes over 12 photos in batches of 256: 20 steps
    rc, _, err = run_cli("train", "--data-dir", tiny_data, "--out-dir", out, *gpu_train_flags(), "--epochs", "426",
                         cwd=tmp_path)
    assert rc == 0, err
    assert "cuda bf16" in err or "cuda fp16" in err
    assert "= 20 steps of 256 images" in err
    payload = torch.load(out / "model.pt", map_location="cpu")
    assert payload["config"]["batch_size"] == ddpm.GPU_BATCH_SIZE
    model, schedule, cfg = ddpm.load_model(out / "model.pt", "cuda")
    images = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(2, cfg.image_size, 0), "ddim", 10)
    assert torch.isfinite(images).all() and images.std() > 0.05


def test_compiled_training_with_cuda_graphs_learns(tiny_data, tmp_path):
    """--compile on CUDA replays forward and backward as CUDA graphs; the loss must still fall (40 steps of 256)."""
    out = tmp_path / "run"
    rc, _, err = run_cli("train", "--data-dir", tiny_data, "--out-dir", out, *gpu_train_flags(), "--epochs", "853",
                         "--compile", "--lr", "2e-3", "--warmup-steps", "5", "--log-every", "5", cwd=tmp_path)
    assert rc == 0, err
    losses = [float(row["loss"]) for row in log_rows(out / "log.csv")]
    assert len(losses) == 8 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
