"""The forward process q(x_t | x_0): the beta schedules, the quantities derived from them, and sampling x_t."""
import math

import pytest
import torch

import rollNumber_05 as ddpm

T = 1000


@pytest.fixture(scope="module")
def linear():
    return ddpm.NoiseSchedule(T)


def linear_beta(i, timesteps=T):
    """beta at index i of torch.linspace(1e-4, 0.02, T), by hand."""
    return 1e-4 + (0.02 - 1e-4) * i / (timesteps - 1)


def test_default_config_has_T_1000():
    assert ddpm.Config().timesteps == T  # the assignment's T


def test_linear_betas_run_from_1e4_to_002(linear):
    assert linear.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert linear.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert torch.all(linear.betas[1:] > linear.betas[:-1])


def test_alphas_are_one_minus_betas(linear):
    assert torch.allclose(linear.alphas, 1 - linear.betas)


def test_alphas_cumprod_is_running_product_of_alphas(linear):
    schedule = linear
    product, expected = 1.0, []
    for alpha in schedule.alphas.double().tolist():
        product *= alpha
        expected.append(product)
    assert torch.allclose(schedule.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-5, atol=1e-9)
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(schedule.alphas, 0), rtol=1e-5, atol=1e-9)


def test_linear_alpha_bar_at_T_matches_hand_product(linear):
    by_hand = math.prod(1 - linear_beta(i) for i in range(T))
    assert linear.alphas_cumprod[-1].item() == pytest.approx(by_hand, rel=1e-4)
    assert by_hand < 1e-4  # almost no signal is left at t = T


@pytest.mark.parametrize("t", [0, 1, 10, 500, T - 1])
def test_posterior_variance_matches_beta_tilde_by_hand(linear, t):
    abar = math.prod(1 - linear_beta(i) for i in range(t + 1))
    abar_prev = math.prod(1 - linear_beta(i) for i in range(t))  # empty product = 1 at t = 0
    expected = linear_beta(t) * (1 - abar_prev) / (1 - abar)
    assert linear.posterior_variance[t].item() == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_posterior_variance_is_zero_at_first_step_and_below_beta_after(linear):
    assert linear.posterior_variance[0].item() == 0
    assert torch.all(linear.posterior_variance[1:] < linear.betas[1:])


def constant_images(n=64, size=16):
    """n images, each a single value between -1 and 1."""
    return torch.linspace(-1, 1, n).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()


def test_q_sample_at_T_is_standard_normal(linear):
    x0 = constant_images()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=gen)
    x_T = linear.q_sample(x0, torch.full((len(x0),), T - 1), noise)
    assert x_T.mean().item() == pytest.approx(0, abs=0.05)
    assert x_T.std().item() == pytest.approx(1, abs=0.05)
    correlation = torch.corrcoef(torch.stack([x0.flatten(), x_T.flatten()]))[0, 1].item()
    assert abs(correlation) < 0.05


def test_q_sample_at_first_step_is_close_to_x0(linear):
    x0 = constant_images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x1 = linear.q_sample(x0, torch.zeros(len(x0), dtype=torch.long), noise)
    assert (x1 - x0).abs().mean().item() < 0.01  # noise std there is sqrt(1e-4) = 0.01
    assert (x1 - x0).abs().max().item() < 0.06


@pytest.mark.parametrize("t", [0, 99, 499, T - 1])
def test_step_by_step_chain_matches_closed_form_in_mean_and_variance(linear, t):
    n = 4000
    x0 = torch.tensor([[[-1.0, -0.3], [0.4, 1.0]]] * 3)  # [3, 2, 2]
    batch = x0.expand(n, 3, 2, 2)
    gen = torch.Generator().manual_seed(t)
    x = batch
    for i in range(t + 1):
        x = linear.q_step(x, i, torch.randn(batch.shape, generator=gen))
    closed = linear.q_sample(batch, torch.full((n,), t), torch.randn(batch.shape, generator=gen))
    abar = linear.alphas_cumprod[t].item()
    for samples in (x, closed):
        assert torch.allclose(samples.mean(0), math.sqrt(abar) * x0, atol=0.06)
        assert samples.var(0).mean().item() == pytest.approx(1 - abar, rel=0.05)
    assert torch.allclose(x.mean(0), closed.mean(0), atol=0.08)
    assert x.var(0).mean().item() == pytest.approx(closed.var(0).mean().item(), rel=0.06)


def noised_batch(schedule, seed):
    """Every 10th t, a random x_0 in [-1, 1] for each, the noise, and x_t = q_sample(x_0, t, noise)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(0, T, 10)
    x0 = torch.rand(len(t), 3, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    return t, x0, noise, schedule.q_sample(x0, t, noise)


def test_predict_x0_inverts_q_sample(linear):
    t, x0, noise, x_t = noised_batch(linear, 0)
    assert torch.allclose(linear.predict_x0(x_t, t, noise), x0, atol=1e-4)


def test_predict_eps_inverts_q_sample(linear):
    t, x0, noise, x_t = noised_batch(linear, 1)
    assert torch.allclose(linear.predict_eps(x_t, t, x0), noise, atol=1e-3)
