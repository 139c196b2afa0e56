"""Sampling: noise in, image out (generate_from_noise with DDPM and DDIM, guidance, trajectories)."""
import pytest
import torch
import torch.nn as nn
from PIL import Image

import rollNumber_05 as ddpm
from conftest import perturb_weights

T = 50


@pytest.fixture(scope="module")
def schedule():
    return ddpm.NoiseSchedule(T)


@pytest.fixture(scope="module")
def model():
    """A tiny class-conditional U-Net with random (non-zero) weights, so its output depends on x, t and class."""
    cfg = ddpm.Config(image_size=16, timesteps=T, patch_size=1, base_channels=8, channel_mults=[1, 2],
                      attention_resolutions=[8], num_classes=3, conditional=True)
    torch.manual_seed(0)
    return perturb_weights(ddpm.UNet(cfg), scale=0.05).eval()


def noise(n=2, seed=0):
    return ddpm.seeded_noise(n, 16, seed)


def sample(model, schedule, sampler, seed=0, x_T=None, **kwargs):
    kwargs.setdefault("steps", 10)
    kwargs.setdefault("labels", torch.tensor([0, 2]))
    return ddpm.generate_from_noise(model, schedule, noise() if x_T is None else x_T, sampler, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def seed0_samples(model, schedule):
    """{sampler: images} from the default noise, labels and seed 0; reused to keep the module quick."""
    return {sampler: sample(model, schedule, sampler, seed=0) for sampler in ("ddpm", "ddim")}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_is_deterministic_given_seed(model, schedule, seed0_samples, sampler):
    assert torch.equal(sample(model, schedule, sampler, seed=0), seed0_samples[sampler])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samples_have_input_shape_and_lie_in_data_range(seed0_samples, sampler):
    x = seed0_samples[sampler]
    assert x.shape == (2, 3, 16, 16)
    assert x.min().item() >= -1 and x.max().item() <= 1
    assert x.std().item() > 0.01  # not a constant image


def test_ddpm_with_different_seeds_gives_different_images(model, schedule, seed0_samples):
    other = sample(model, schedule, "ddpm", seed=1)
    assert (other - seed0_samples["ddpm"]).abs().mean().item() > 1e-3


def test_ddim_from_different_noise_gives_different_images(model, schedule, seed0_samples):
    other = sample(model, schedule, "ddim", x_T=noise(seed=1))
    assert (other - seed0_samples["ddim"]).abs().mean().item() > 1e-3


def test_ddim_is_a_function_of_the_starting_noise_only(model, schedule, seed0_samples):
    assert torch.equal(sample(model, schedule, "ddim", seed=7), seed0_samples["ddim"])  # no noise drawn on the way


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_trajectory_runs_from_noise_at_T_to_image_at_0(model, schedule, sampler):
    x_T = noise()
    x, trajectory = sample(model, schedule, sampler, x_T=x_T, return_trajectory=True, trajectory_points=5)
    steps = [t for t, _ in trajectory]
    assert steps[0] == T and steps[-1] == 0
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == len(steps)
    assert torch.equal(trajectory[0][1], x_T)
    assert torch.equal(trajectory[-1][1], x)


@pytest.mark.parametrize("steps", [2, 10, 49, T, 2 * T])
def test_ddim_timesteps_fall_strictly_from_T_minus_1_to_0(steps):
    ts = ddpm.sampling_timesteps(T, "ddim", steps)
    assert ts[0] == T - 1 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert len(ts) == min(steps, T)


def test_ddpm_timesteps_visit_every_step():
    assert ddpm.sampling_timesteps(T, "ddpm", 10) == list(range(T - 1, -1, -1))


def test_guidance_one_equals_plain_conditional_output(model):
    x, t, labels = noise(), torch.tensor([10, 40]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(ddpm.guided_output(model, x, t, labels, 1.0), model(x, t, labels))


def test_guidance_extrapolates_from_unconditional_towards_conditional(model):
    x, t, labels = noise(), torch.tensor([10, 40]), torch.tensor([1, 2])
    with torch.no_grad():
        conditional, unconditional = model(x, t, labels), model(x, t, torch.full((2,), model.null_class))
        guided = ddpm.guided_output(model, x, t, labels, 3.0)
    assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)


def test_guidance_one_sampling_equals_conditional_sampling(model, schedule):
    plain = sample(model, schedule, "ddim", guidance=1.0)
    # guidance 1 through the two-branch formula: u + 1 * (c - u) = c, up to rounding
    with torch.no_grad():
        x_T, labels = noise(), torch.tensor([0, 2])
        x = x_T
        ts = ddpm.sampling_timesteps(T, "ddim", 10)
        for i, t_now in enumerate(ts):
            t = torch.full((2,), t_now)
            c = model(x, t, labels)
            u = model(x, t, torch.full((2,), model.null_class))
            eps, x0 = schedule.eps_and_x0(u + (c - u), x, t)
            x = ddpm.ddim_step(schedule, ts[i + 1] if i + 1 < len(ts) else -1, eps, x0)
    assert torch.allclose(plain, x.clamp(-1, 1), atol=1e-4)


class OracleDenoiser(nn.Module):
    """The best possible noise predictor for a data set of one image: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    null_class = None

    def __init__(self, schedule, x0):
        super().__init__()
        self.schedule, self.x0 = schedule, x0
        self.unused = nn.Parameter(torch.zeros(1))  # generate_from_noise reads the device from a parameter

    def forward(self, x_t, t, labels=None):
        return self.schedule.predict_eps(x_t, t, self.x0.expand_as(x_t))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_with_oracle_denoiser_returns_the_only_training_image(schedule, sampler):
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    oracle = OracleDenoiser(schedule, x0)
    x = ddpm.generate_from_noise(oracle, schedule, ddpm.seeded_noise(3, 8, 1), sampler, steps=10, seed=0)
    assert torch.allclose(x, x0.expand(3, -1, -1, -1), atol=1e-4)


# --- many samples: chunks, one file each, output checked first ---------------------------------------------

CFG = ddpm.Config(image_size=16, timesteps=T, patch_size=1, base_channels=8, channel_mults=[1, 2],
                  attention_resolutions=[8], num_classes=3, conditional=True, classes=["Crow", "Fox", "Owl"])


def counting_sampler(monkeypatch):
    """Records the batch size of every generate_from_noise call, and still samples."""
    sizes, real = [], ddpm.generate_from_noise
    monkeypatch.setattr(ddpm, "generate_from_noise", lambda model, schedule, x_T, *a, **k: sizes.append(len(x_T))
                        or real(model, schedule, x_T, *a, **k))
    return sizes


def test_many_samples_are_denoised_a_chunk_at_a_time(model, schedule, monkeypatch, tmp_path):
    sizes = counting_sampler(monkeypatch)
    ddpm.write_samples(model, schedule, CFG, tmp_path / "grid.png", tmp_path / "each", num_samples=10, steps=2,
                       batch_size=4)
    assert sizes == [4, 4, 2]
    assert Image.open(tmp_path / "grid.png").size == (3 * 18 + 2, 4 * 18 + 2)  # a column per class, 10 images


def test_out_dir_gets_one_png_per_sample_named_by_class_and_index(model, schedule, tmp_path):
    ddpm.write_samples(model, schedule, CFG, None, tmp_path / "each", num_samples=5, steps=2, batch_size=2)
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [
        "Crow_00000.png", "Crow_00003.png", "Fox_00001.png", "Fox_00004.png", "Owl_00002.png"]
    assert Image.open(tmp_path / "each" / "Fox_00004.png").size == (16, 16)


def test_the_first_chunk_is_what_one_call_with_the_seed_gives(model, schedule, tmp_path):
    ddpm.write_samples(model, schedule, CFG, None, tmp_path / "chunked", num_samples=6, steps=2, seed=3, batch_size=4)
    ddpm.write_samples(model, schedule, CFG, None, tmp_path / "whole", num_samples=4, steps=2, seed=3, batch_size=64)
    for name in ("Crow_00000.png", "Owl_00002.png", "Crow_00003.png"):
        assert Image.open(tmp_path / "chunked" / name).tobytes() == Image.open(tmp_path / "whole" / name).tobytes()


@pytest.mark.parametrize("flag, place", [("--out", "/proc/x.png"), ("--out-dir", "/proc/x"),
                                         ("--out", "{tmp}/grid.jpg")])
def test_an_output_that_cannot_be_written_fails_in_one_line_before_sampling(flag, place, monkeypatch, tmp_path,
                                                                            capsys):
    sizes = counting_sampler(monkeypatch)
    path = tmp_path / "model.pt"
    torch.save({"config": ddpm.dataclasses.asdict(CFG), "class_names": CFG.classes, "step": 0,
                "ema": ddpm.UNet(CFG).state_dict()}, path)
    code = ddpm.main(["sample", "--checkpoint", str(path), "--device", "cpu", "--out", str(tmp_path / "ok.png"),
                      flag, place.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
    assert sizes == []  # refused before any sampling


# --- the DDPM step is Ho et al.'s algorithm 2 ------------------------------------------------------------------

STEPS_TO_CHECK = [0, 1, 10, 250, 500, 999]


@pytest.mark.parametrize("t_now", STEPS_TO_CHECK)
def test_posterior_mean_of_the_unclipped_x0_is_algorithm_2s_mean(t_now):
    schedule, generator = ddpm.NoiseSchedule(1000), torch.Generator().manual_seed(t_now)
    x_t, eps = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.full((2,), t_now)
    mean = schedule.q_posterior_mean(schedule.predict_x0(x_t, t, eps), x_t, t)
    beta, alpha, alpha_bar = schedule.betas[t_now], schedule.alphas[t_now], schedule.alphas_cumprod[t_now]
    algorithm_2 = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
    assert torch.allclose(mean, algorithm_2, atol=2e-5, rtol=0)  # float32 rounding; a wrong term is off by 2e-4 or more


@pytest.mark.parametrize("t_now", STEPS_TO_CHECK)
def test_recomputed_noise_is_the_networks_when_nothing_is_clipped(t_now):
    schedule, generator = ddpm.NoiseSchedule(1000), torch.Generator().manual_seed(t_now)
    x0 = torch.rand(2, 3, 8, 8, generator=generator) * 1.8 - 0.9  # inside [-1, 1]: the clip changes nothing
    eps_network, t = torch.randn(2, 3, 8, 8, generator=generator), torch.full((2,), t_now)
    eps, x0_estimate = schedule.eps_and_x0(eps_network, schedule.q_sample(x0, t, eps_network), t)
    assert torch.allclose(x0_estimate, x0, atol=1e-4)  # at t = 999 sqrt(alpha_bar) is 0.006: rounding grows
    assert torch.allclose(eps, eps_network, atol=2e-5)
