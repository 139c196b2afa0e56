"""Non-leaking augmentation: the parameters the network is told describe exactly what was done to the image,
zero parameters mean an untouched image and add nothing to the network, and a run trained with it samples."""
import pytest
import torch
import torch.nn.functional as F

import rollNumber_05 as ddpm
from conftest import perturb_weights, tiny_config_values


def undo(image, params):
    """Inverts augment_image from its parameters alone: if the parameters are complete, this gives the original."""
    reach = max(1, image.shape[-1] // 8)
    dx, dy = round(float(params[3]) * reach), round(float(params[4]) * reach)
    turns = {(0, 0): 0, (-1, 1): 1, (-2, 0): 2, (-1, -1): 3}[(round(float(params[1])), round(float(params[2])))]
    shifted_back = F.pad(image[None], (reach,) * 4, mode="reflect")[0]
    # a shift moves content out of the frame: compare only what stayed inside, so undo the shift by cropping
    inner = slice(reach, image.shape[-1] - reach)
    unshifted = shifted_back[:, reach - dy:reach - dy + image.shape[-2], reach - dx:reach - dx + image.shape[-1]]
    restored = unshifted.rot90(-turns, dims=(-2, -1))
    if params[0]:
        restored = restored.flip(-2)
    return restored, inner


def test_nothing_is_done_at_probability_zero():
    x = torch.rand(3, 16, 16) * 2 - 1
    out, params = ddpm.augment_image(x, 0.0)
    assert torch.equal(out, x) and torch.equal(params, torch.zeros(ddpm.AUGMENT_DIMS))


def test_the_parameters_describe_the_transform_exactly():
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16) * 2 - 1  # no symmetry: any wrong inverse shows
    seen = set()
    for _ in range(200):
        out, params = ddpm.augment_image(x, 0.6)
        restored, inner = undo(out, params)
        assert torch.equal(restored[:, inner, inner], x[:, inner, inner]), params
        if not params.any():
            assert torch.equal(out, x)  # zero parameters: the photo itself
        seen.add(tuple(bool(v) for v in (params[0], params[1] or params[2], params[3] or params[4])))
    assert len(seen) == 8  # every combination of flip, turn and shift occurred


def test_each_transform_happens_with_the_asked_probability():
    torch.manual_seed(1)
    params = torch.stack([ddpm.augment_image(torch.zeros(3, 16, 16), 0.3)[1] for _ in range(3000)])
    flipped, turned = (params[:, 0] != 0).float().mean(), (params[:, 2] != 0).float().mean()
    assert flipped == pytest.approx(0.3, abs=0.03)
    assert (params[:, 1] != 0).float().mean() == pytest.approx(0.3, abs=0.03) and turned == pytest.approx(0.2, abs=0.03)


def test_zero_parameters_add_nothing_to_the_network():
    """Sampling passes no parameters: the model then equals the one told 'not augmented'."""
    torch.manual_seed(0)
    model = perturb_weights(ddpm.UNet(ddpm.Config(**tiny_config_values(augment=0.2))).eval())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    plain = model(x, t)
    assert torch.equal(plain, model(x, t, augment=torch.zeros(2, ddpm.AUGMENT_DIMS)))
    told = model(x, t, augment=torch.tensor([[1.0, 0, 0, 0, 0]] * 2))
    assert (told - plain).abs().max() > 0.05 * plain.abs().max()  # the parameters do reach the network


def test_an_augmented_run_trains_and_its_model_samples_clean_images(tiny_data, tmp_path):
    cfg = ddpm.Config(**tiny_config_values(data_dir=str(tiny_data), epochs=4, augment=0.5, conditional=True))
    ddpm.train(cfg, tmp_path / "run", device="cpu")
    losses = [row["loss"] for row in ddpm.read_log(tmp_path / "run" / "log.csv")]
    assert len(losses) == 12 and all(0 < v < 2 for v in losses)
    model, schedule, loaded = ddpm.load_model(tmp_path / "run" / "model.pt")
    assert loaded.augment == 0.5 and model.augment_emb is not None
    images = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(2, 16, 0), "ddim", 5, labels=[0, 1])
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_a_model_without_augmentation_has_no_augmentation_layer():
    assert ddpm.UNet(ddpm.Config(**tiny_config_values(augment=0.0))).augment_emb is None


