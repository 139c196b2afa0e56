"""tools/experiments/novelty.py: novelty, copies and class share against guidance, for one model or several."""
import json
import sys

from PIL import Image

from conftest import ROOT, ddpm, save_model_file, tiny_config_values

sys.path.insert(0, str(ROOT / "tools" / "experiments"))
import novelty  # noqa: E402


def test_novelty_tool_writes_a_number_per_model_and_scale_and_the_figure(tiny_data, tmp_path):
    cfg = ddpm.Config(**tiny_config_values(conditional=True, classes=["Crow", "Fox", "Owl"]))
    for name in ("old", "new"):
        save_model_file(tmp_path / f"{name}.pt", cfg, seed=len(name))
    novelty.main(["--data-dir", str(tiny_data), "--model", f"old={tmp_path / 'old.pt'}", "--model",
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

