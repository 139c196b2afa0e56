"""The U-Net epsilon_theta(x_t, t[, class]): shapes, conditioning, size checks, and explained layer choices."""
import re

import pytest
import torch

import rollNumber_05 as ddpm
from conftest import SCRIPT, perturb_weights


def batch(cfg, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=gen)


@pytest.mark.parametrize("image_size, patch_size, channel_mults", [
    (16, 1, [1, 2]), (32, 1, [1, 2]), (16, 2, [1, 2]), (32, 2, [1, 2, 2]), (24, 2, [1, 2])])
def test_output_shape_equals_input_shape(tiny_config, image_size, patch_size, channel_mults):
    cfg = tiny_config(image_size=image_size, patch_size=patch_size, channel_mults=channel_mults)
    ddpm.check_image_size(cfg)
    x = batch(cfg, n=3)
    with torch.no_grad():
        out = ddpm.UNet(cfg)(x, torch.tensor([0, 10, 49]))
    assert out.shape == x.shape


def test_fresh_model_predicts_zero_noise(tiny_config):
    cfg = tiny_config()
    with torch.no_grad():
        out = ddpm.UNet(cfg)(batch(cfg), torch.tensor([3, 40]))
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer: first guess is the noise mean


def test_a_stored_config_with_keys_of_removed_options_still_loads(tiny_config):
    """Earlier models' configs hold `loss` and `schedule`, options that have since gone."""
    stored = {**ddpm.dataclasses.asdict(tiny_config()), "loss": "mse", "schedule": "linear"}
    cfg = ddpm.config_from_dict(stored)
    assert cfg == tiny_config()
    ddpm.build_model(cfg, ddpm.UNet(tiny_config()).state_dict())  # the weights fit


def test_output_depends_on_t(tiny_config):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = perturb_weights(ddpm.UNet(cfg)).eval()
    x = batch(cfg, n=1).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([1, 45]))
    assert (out[0] - out[1]).abs().mean().item() > 1e-3


def test_conditional_output_depends_on_class(tiny_config):
    cfg = tiny_config(conditional=True)
    torch.manual_seed(0)
    model = perturb_weights(ddpm.UNet(cfg)).eval()
    x, t = batch(cfg, n=1).expand(3, -1, -1, -1), torch.tensor([20, 20, 20])
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 1, 2]))
    assert (out[0] - out[1]).abs().mean().item() > 1e-3
    assert (out[1] - out[2]).abs().mean().item() > 1e-3


def test_conditional_model_without_labels_uses_the_null_class(tiny_config):
    cfg = tiny_config(conditional=True)
    torch.manual_seed(0)
    model = perturb_weights(ddpm.UNet(cfg)).eval()
    x, t = batch(cfg), torch.tensor([5, 30])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.full((2,), cfg.num_classes)))


def test_unconditional_model_accepts_no_labels(tiny_config):
    cfg = tiny_config(conditional=False)
    torch.manual_seed(0)
    model = perturb_weights(ddpm.UNet(cfg)).eval()
    assert model.class_emb is None
    x = batch(cfg)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 49]), None)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("image_size, patch_size, channel_mults", [
    (20, 1, [1, 2, 2, 2]), (18, 2, [1, 2]), (4, 1, [1]), (30, 2, [1, 2, 2])])
def test_check_image_size_rejects_sizes_the_unet_cannot_halve(tiny_config, image_size, patch_size, channel_mults):
    cfg = tiny_config(image_size=image_size, patch_size=patch_size, channel_mults=channel_mults)
    with pytest.raises(ddpm.UserError, match=r"--image-size .* try \d+"):
        ddpm.check_image_size(cfg)


@pytest.mark.parametrize("image_size, patch_size, channel_mults", [
    (20, 1, [1, 2, 2, 2]), (18, 2, [1, 2]), (4, 1, [1]), (30, 2, [1, 2, 2]), (100, 2, [1, 2, 2, 4])])
def test_suggested_image_size_is_accepted(tiny_config, image_size, patch_size, channel_mults):
    cfg = tiny_config(image_size=image_size, patch_size=patch_size, channel_mults=channel_mults)
    with pytest.raises(ddpm.UserError) as err:
        ddpm.check_image_size(cfg)
    suggested = int(re.search(r"try (\d+)", str(err.value)).group(1))
    ddpm.check_image_size(tiny_config(image_size=suggested, patch_size=patch_size, channel_mults=channel_mults))


def test_suggested_image_size_is_accepted_when_factor_does_not_divide_8(tiny_config):
    cfg = tiny_config(image_size=7, patch_size=3, channel_mults=[1, 2])
    with pytest.raises(ddpm.UserError) as err:
        ddpm.check_image_size(cfg)
    suggested = int(re.search(r"try (\d+)", str(err.value)).group(1))
    ddpm.check_image_size(tiny_config(image_size=suggested, patch_size=3, channel_mults=[1, 2]))


def model_section_lines():
    lines = SCRIPT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"# 3\. Model", line))
    end = next(i for i, line in enumerate(lines) if re.match(r"# 4\. Loss", line))
    return lines, start, end


def explained(line, previous):
    """A comment on the line itself, a comment line just above, or a comment on the line that opens the
    bracket this line continues (`nn.Sequential(  # why`)."""
    if "#" in line or previous.lstrip().startswith("#"):
        return True
    code, _, comment = previous.partition("#")
    return bool(comment.strip()) and code.rstrip().endswith(("(", "[", ","))


def test_every_layer_choice_in_the_model_section_is_commented():
    lines, start, end = model_section_lines()
    layer = re.compile(r"nn\.(Conv2d|GroupNorm|Linear|SiLU|Embedding|Dropout)\(")
    found, uncommented = 0, []
    for i in range(start, end):
        if layer.search(lines[i]):
            found += 1
            if not explained(lines[i], lines[i - 1]):
                uncommented.append(f"line {i + 1}: {lines[i].strip()}")
    assert found >= 10  # the check saw the model's layers
    assert not uncommented, "layers without a comment saying why:\n" + "\n".join(uncommented)
