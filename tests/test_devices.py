"""Devices and precision a student may have: CUDA (new and old cards), Apple's MPS, or only a CPU. No Apple
machine or old GPU is here, so availability is patched; the fp16 loss-scaling path runs on the CPU."""
import math

import pytest
import torch

from conftest import ddpm, tiny_config_values

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=..., mps=..., bf16=...): what PyTorch will report as available."""
    def set_up(cuda=False, mps=False, bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    return set_up


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert ddpm.pick_device("auto").type == expected


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_asking_for_a_missing_gpu_is_a_one_line_error(machine, name):
    machine()
    with pytest.raises(ddpm.UserError, match=f"--device {name} asked, but PyTorch sees no such GPU"):
        ddpm.pick_device(name)


def test_auto_precision_is_bf16_on_gpus_with_bf16_tensor_cores(machine):
    machine(cuda=True, bf16=True)
    assert ddpm.autocast_dtype("auto", CUDA) == torch.bfloat16


def test_auto_precision_is_fp16_on_older_gpus_never_emulated_bf16(machine):
    machine(cuda=True, bf16=False)  # a T4, P100 or V100
    assert ddpm.autocast_dtype("auto", CUDA) == torch.float16


@pytest.mark.parametrize("device", [CPU, MPS])
def test_auto_precision_is_fp32_off_cuda(device):
    assert ddpm.autocast_dtype("auto", device) is None


def test_mps_runs_in_fp32_whatever_is_asked():
    assert ddpm.autocast_dtype("bf16", MPS) is None


def test_bf16_can_be_asked_for_on_a_cpu_but_fp16_cannot():
    assert ddpm.autocast_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ddpm.UserError, match="--precision fp16 needs a CUDA GPU"):
        ddpm.autocast_dtype("fp16", CPU)


def test_loss_scaling_is_on_only_for_fp16(machine):
    cfg = ddpm.Config(**tiny_config_values())
    assert not ddpm.build_trainer(cfg, CPU, total_steps=10).scaler.is_enabled()


def fp16_trainer(init_scale):
    """A CPU trainer computing in fp16 with a loss scaler, as train() builds one for an older GPU."""
    trainer = ddpm.build_trainer(ddpm.Config(**tiny_config_values()), CPU, total_steps=10)
    trainer.amp_dtype, trainer.scaler = torch.float16, torch.amp.GradScaler("cpu", init_scale=init_scale)
    return trainer


def weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_fp16_steps_with_loss_scaling_update_the_weights():
    torch.manual_seed(0)
    trainer, x0 = fp16_trainer(2.0 ** 10), torch.randn(4, 3, 16, 16)
    before = weights(trainer.model)
    stats = ddpm.train_step(trainer, x0, None, step=0)
    assert stats is not None and math.isfinite(stats[2])
    assert (weights(trainer.model) - before).abs().max() > 0


def test_an_fp16_overflow_skips_the_step_and_lowers_the_scale():
    torch.manual_seed(0)
    trainer, x0 = fp16_trainer(2.0 ** 120), torch.randn(4, 3, 16, 16)  # scaled gradients overflow fp16
    before = weights(trainer.model)
    assert ddpm.train_step(trainer, x0, None, step=0) is None
    assert torch.equal(weights(trainer.model), before)
    assert trainer.scaler.get_scale() < 2.0 ** 120
