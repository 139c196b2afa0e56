"""tools/novelty.py: novelty, copies and class share against guidance, for one model or several."""
import json
import sys

import torch
from PIL import Image

from conftest import ROOT, ddpm, perturb_weights, save_model_file, tiny_config_values

sys.path.insert(0, str(ROOT / "tools"))
import novelty  # noqa: E402


def test_novelty_tool_writes_a_number_per_model_and_scale_and_the_figure(tiny_data, tmp_path):
    cfg = ddpm.Config(**tiny_config_values(conditional=True, classes=["Crow", "Fox", "Owl"]))
    for name in ("old", "new"):
        save_model_file(tmp_path / f"{name}.pt", cfg, seed=len(name))
    novelty.main(["--data-dir", str(tiny_data), "--model", f"old={tmp_path / 'old.pt'}@20,50", "--model",
                  f"new={tmp_path / 'new.pt'}", "--scales", "1,3", "--per-class", "2", "--out", str(tmp_path / "r"),
                  "--grids"])
    written = json.loads((tmp_path / "r" / "novelty_by_guidance.json").read_text())
    assert list(written["results"]) == ["old", "new"]
    for by_scale in written["results"].values():
        assert list(by_scale) == ["1", "3"]
        assert all(s["novelty"] > 0 and 0 <= s["asked_class_share"] <= 1 for s in by_scale.values())
    assert (tmp_path / "r" / "novelty_vs_guidance.png").stat().st_size > 10_000
    for name in ("old", "new"):  # the 2 samples of each of 3 classes at guidance 3: 2 rows of 3, 16 px, 2 px gaps
        assert Image.open(tmp_path / "r" / f"samples_{name}.png").size == (3 * 18 + 2, 2 * 18 + 2)


def test_guidance_only_between_guides_exactly_the_steps_inside_the_interval(monkeypatch):
    used = []
    monkeypatch.setattr(ddpm, "guided_output", lambda model, x_t, t, labels, guidance: used.append(
        (int(t[0]) + 1, guidance)) or torch.zeros_like(x_t))
    patched_away = ddpm.guided_output
    cfg = ddpm.Config(**tiny_config_values(conditional=True, timesteps=50))
    schedule, model = ddpm.NoiseSchedule(50), ddpm.UNet(cfg)
    with novelty.guidance_only_between(10, 30):
        ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(1, 16, 0), "ddim", 10, labels=[0], guidance=3.0)
    assert ddpm.guided_output is patched_away  # restored afterwards
    assert len(used) == 10 and any(10 <= t <= 30 for t, _ in used) and any(not 10 <= t <= 30 for t, _ in used)
    assert all(g == (3.0 if 10 <= t <= 30 else 1.0) for t, g in used)


def test_an_interval_over_every_step_changes_nothing(tiny_data):
    cfg = ddpm.Config(**tiny_config_values(conditional=True, classes=["Crow", "Fox", "Owl"]))
    model = perturb_weights(ddpm.UNet(cfg)).eval()
    schedule = ddpm.NoiseSchedule(cfg.timesteps)
    plain = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(2, 16, 0), "ddim", 5, labels=[0, 1], guidance=3)
    with novelty.guidance_only_between(1, cfg.timesteps):
        inside = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(2, 16, 0), "ddim", 5, labels=[0, 1],
                                          guidance=3)
    assert torch.equal(plain, inside)
