"""tools/ambient.py: training the high-noise steps on one fixed noisy copy of each photo (Shah et al. 2025)."""
import sys

import torch

from conftest import ROOT, TINY_TRAIN_FLAGS, ddpm

sys.path.insert(0, str(ROOT / "tools"))
import ambient  # noqa: E402


def test_the_ambient_target_averages_to_the_noise_target_over_copies():
    """Over copies x_N ~ q(x_N | x_t, x_0) the scaled target is c1 / sqrt(alpha_bar_N) times the true noise: the loss
    is unbiased, and at t = T the scale is 1, the ordinary noise loss."""
    schedule, noisy_from = ddpm.NoiseSchedule(1000), 300
    x0, eps = torch.rand(1, 3, 4, 4) * 2 - 1, torch.randn(1, 3, 4, 4)
    for t_index, expected_scale in [(700, None), (999, 1.0)]:
        t = torch.tensor([t_index])
        alpha_bar_t, alpha_bar_n, c1, c2 = ambient.ambient_terms(schedule, t, noisy_from)
        x_t = schedule.q_sample(x0, t, eps)
        spread = ((1 - alpha_bar_n) * (1 - alpha_bar_t / alpha_bar_n) / (1 - alpha_bar_t)).sqrt()
        copies = c1 * x0 + c2 * x_t + spread * torch.randn(100_000, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        root_a, sigma = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
        target = ((c1 + c2 * root_a) * x_t - root_a * copies) / (sigma * alpha_bar_n.sqrt())
        scale = c1 / alpha_bar_n.sqrt()
        assert torch.allclose(target.mean(0), scale[0] * eps[0], atol=0.02)
        if expected_scale:
            assert abs(float(scale) - expected_scale) < 1e-3


def test_the_loss_scores_low_steps_against_the_photo_and_high_steps_against_its_copy():
    """A network that knows the photo x_0 and its copy x_N: below N the noise of x_t given x_0 scores 0; above N only
    the noise that implies the copy does, (sqrt(a_t) x_N - (c1 + c2 sqrt(a_t)) x_t) / (c1 sigma_t) in the loss's terms."""
    cfg, schedule, noisy_from = ddpm.Config(timesteps=50, conditional=False, cond_drop=0.0), ddpm.NoiseSchedule(50), 20
    torch.manual_seed(0)
    x0, copy_noise = torch.rand(64, 3, 4, 4) * 2 - 1, torch.randn(64, 3, 4, 4)
    copy = schedule.q_sample(x0, torch.full((64,), noisy_from - 1), copy_noise)

    def knows_the_photo(x_t, t):
        return (x_t - schedule.gather(schedule.sqrt_alphas_cumprod, t) * x0) / \
            schedule.gather(schedule.sqrt_one_minus_alphas_cumprod, t)

    def knows_the_copy(x_t, t):
        alpha_bar_t, _, c1, c2 = ambient.ambient_terms(schedule, t, noisy_from)
        from_copy = ((c1 + c2 * alpha_bar_t.sqrt()) * x_t - alpha_bar_t.sqrt() * copy) / (c1 * (1 - alpha_bar_t).sqrt())
        return torch.where((t >= noisy_from).view(-1, 1, 1, 1), from_copy, knows_the_photo(x_t, t))

    batch = torch.cat([x0, copy_noise], dim=1)
    torch.manual_seed(1)
    losses, t = ambient.ambient_loss(lambda x_t, t, *_: knows_the_copy(x_t, t), schedule, batch, None, cfg,
                                     noisy_from=noisy_from)
    high = t >= noisy_from
    assert 10 < int(high.sum()) < 54 and float(losses.max()) < 1e-8
    torch.manual_seed(1)  # the same t and noise, now a network that ignores the copy
    losses, t = ambient.ambient_loss(lambda x_t, t, *_: knows_the_photo(x_t, t), schedule, batch, None, cfg,
                                     noisy_from=noisy_from)
    assert float(losses[~high].max()) < 1e-8 and float(losses[high].min()) > 1e-3


def test_a_run_through_the_tool_trains_and_keeps_the_copies_fixed(tiny_data, tmp_path):
    item = ambient.item_with_copy_noise
    data = ddpm.AnimalPhotos(tiny_data, None, 3, 4, 16, flip=False)
    first, again = item(data, 2)[0], item(data, 2)[0]
    assert first.shape == (6, 16, 16) and torch.equal(first, again)  # the same copy noise in every pass
    assert not torch.equal(item(data, 1)[0][3:], first[3:])  # and a different one per photo
    original = ddpm.AnimalPhotos.__getitem__, ddpm.training_loss
    try:
        assert ambient.main(["--noisy-from", "30", "train", "--data-dir", str(tiny_data), "--epochs", "4",
                             "--out-dir", str(tmp_path / "run"), *TINY_TRAIN_FLAGS]) == 0
    finally:
        ddpm.AnimalPhotos.__getitem__, ddpm.training_loss = original
    model, _, cfg = ddpm.load_model(tmp_path / "run" / "model.pt")
    assert cfg.image_size == 16 and sum(p.abs().sum() for p in model.out_conv.parameters()) > 0  # it learned
