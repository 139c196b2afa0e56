"""diffusion_loss: the per-image error between the network output and its target, written by hand."""
import re

import pytest
import torch

import rollNumber_05 as ddpm
from conftest import SCRIPT

# One image of four pixels with errors 0.5, -2, 0 and 1 (prediction - target).
PREDICTION = torch.tensor([[[[1.5, -1.0], [0.25, 3.0]]]])
TARGET = torch.tensor([[[[1.0, 1.0], [0.25, 2.0]]]])


def test_mse_is_mean_squared_error_per_image():
    expected = (0.5 ** 2 + 2 ** 2 + 0 + 1 ** 2) / 4  # 1.3125
    assert ddpm.diffusion_loss(PREDICTION, TARGET).tolist() == pytest.approx([expected])


def test_loss_is_one_value_per_image():
    gen = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(5, 3, 8, 8, generator=gen), torch.randn(5, 3, 8, 8, generator=gen)
    mse = ddpm.diffusion_loss(prediction, target)
    assert mse.shape == (5,)
    assert torch.allclose(mse, ((prediction - target) ** 2).mean(dim=(1, 2, 3)))


def test_loss_of_identical_tensors_is_zero():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert ddpm.diffusion_loss(x, x).tolist() == [0.0, 0.0]


def test_source_never_uses_a_library_mse():
    code = SCRIPT.read_text()
    assert not re.search(r"MSELoss|mse_loss", code)


# --- Min-SNR weighting ------------------------------------------------------------------------------------------

def test_min_snr_weight_is_one_where_snr_is_below_gamma_and_gamma_over_snr_above():
    schedule = ddpm.NoiseSchedule(1000)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    snr = alpha_bar / (1 - alpha_bar)  # by hand, in float64
    weight = ddpm.min_snr_weight(schedule, torch.arange(1000), gamma=5).double()
    noisy = snr <= 5
    assert 0.8 < noisy.float().mean() < 0.95  # with the linear schedule about the last 87% of the steps
    assert torch.allclose(weight[noisy], torch.ones(int(noisy.sum()), dtype=torch.float64))
    assert torch.allclose(weight[~noisy], 5 / snr[~noisy], rtol=1e-4)
    assert weight[0] < 1e-3  # t = 1: SNR about 10^4


def test_min_snr_weight_of_gamma_zero_is_the_plain_loss():
    schedule = ddpm.NoiseSchedule(50)
    assert torch.equal(ddpm.min_snr_weight(schedule, torch.tensor([0, 10, 49]), 0.0), torch.ones(3))


def test_training_loss_applies_the_weight_per_image(tiny_config):
    cfg = tiny_config(min_snr_gamma=5.0)
    schedule, model = ddpm.NoiseSchedule(cfg.timesteps), ddpm.UNet(cfg)  # fresh: predicts 0, error = the noise
    x0 = torch.zeros(6, 3, cfg.image_size, cfg.image_size)
    torch.manual_seed(3)
    weighted, t = ddpm.training_loss(model, schedule, x0, None, cfg)
    torch.manual_seed(3)
    plain, same_t = ddpm.training_loss(model, schedule, x0, None, ddpm.dataclasses.replace(cfg, min_snr_gamma=0.0))
    assert torch.equal(t, same_t)
    assert torch.allclose(weighted, plain * ddpm.min_snr_weight(schedule, t, 5.0))
    assert (weighted <= plain).all() and (weighted < plain).any()

