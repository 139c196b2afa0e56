"""Evaluation maths: nearest neighbours and memorisation (the script), the variational-bound grid and the discrete
decoder (tools/bits_per_dim.py)."""
import math
import sys

import pytest
import torch

from conftest import ROOT, ddpm

sys.path.insert(0, str(ROOT / "tools"))
import bits_per_dim  # noqa: E402


@pytest.mark.parametrize("timesteps,points", [(1000, 50), (1000, 10), (50, 20), (3, 5)])
def test_vlb_timesteps_stand_for_every_kl_term_exactly_once(timesteps, points):
    ts, weights = bits_per_dim.vlb_timesteps(timesteps, points)
    assert sum(weights) == timesteps - 1
    assert ts == sorted(set(ts)) and ts[0] == 1 and ts[-1] == timesteps - 1
    assert all(w >= 1 for w in weights)


def test_vlb_timesteps_evaluate_the_smallest_steps_one_by_one():
    ts, weights = bits_per_dim.vlb_timesteps(1000, 50)
    assert ts[:8] == list(range(1, 9)) and weights[:8] == [1] * 8


def test_decoder_nll_is_near_zero_for_a_sharp_decoder_on_the_pixel():
    x0 = torch.linspace(-1, 1, 256).view(1, 1, 16, 16)
    nats = bits_per_dim.decoder_nll(x0, x0, torch.tensor(math.log(1e-3)))
    assert 0 <= float(nats) < 0.05  # each bin holds 1 - 1e-4 of a Gaussian 3.9 sigma wide on each side


def test_decoder_nll_grows_as_the_decoder_widens():
    x0 = torch.zeros(1, 1, 4, 4)
    narrow, wide = (float(bits_per_dim.decoder_nll(x0, x0, torch.tensor(math.log(s)))) for s in (0.1, 1.0))
    assert 0 < narrow < wide


def test_nearest_training_image_of_a_copy_is_at_distance_zero():
    train = torch.rand(5, 3, 8, 8) * 2 - 1
    samples = torch.stack([train[2], train[4].flip(-1)])  # a copy and a mirrored copy
    distances, indices = ddpm.nearest_training_images(samples, train)
    assert distances[:, 0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert indices[:, 0].tolist() == [2, 4]
    assert (distances[:, 1] > 0.1).all()


def test_memorisation_rate_counts_samples_much_closer_to_one_training_image():
    distances = torch.tensor([[0.1, 0.5], [0.2, 0.5], [0.4, 0.5], [0.0, 0.3]])
    assert ddpm.memorisation_rate(distances) == 0.5  # 0.1 < 0.5/3 and 0.0 < 0.3/3; 0.2 and 0.4 are not
