"""tools/experiments/blind_test.py: the shuffled sheet keeps a key that asks each class equally often, and the
score counts right, other-class and cannot-tell answers per asked class."""
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "experiments"))

import blind_test  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from conftest import save_model_file, tiny_config_values  # noqa: E402

CLASSES = ["Crow", "Fox", "Owl"]


def test_the_sheet_asks_every_class_equally_and_its_key_is_shuffled(tmp_path):
    cfg = ddpm.Config(**tiny_config_values(classes=CLASSES, conditional=True))
    blind_test.make(save_model_file(tmp_path / "model.pt", cfg), tmp_path, per_class=4, seed=1)
    key = json.loads((tmp_path / "key.json").read_text())
    assert sorted(key["asked"], key=int) == [str(n) for n in range(1, 13)]
    assert Counter(key["asked"].values()) == {"Crow": 4, "Fox": 4, "Owl": 4}
    assert [key["asked"][str(n)] for n in range(1, 13)] != [c for c in CLASSES for _ in range(4)]
    assert (tmp_path / "blind.png").stat().st_size > 1000


def test_the_score_counts_each_kind_of_answer_per_asked_class(tmp_path, capsys):
    key = {"classes": CLASSES, "asked": {"1": "Crow", "2": "Crow", "3": "Fox", "4": "Owl", "5": "Owl"}}
    (tmp_path / "key.json").write_text(json.dumps(key))
    (tmp_path / "answers.txt").write_text("1 Crow\n2 Fox\n3 ?\n4 Owl\n")  # 5 left out: cannot tell
    blind_test.score(tmp_path / "key.json", tmp_path / "answers.txt")
    tally = json.loads((tmp_path / "tally.json").read_text())
    assert tally == {"Crow": {"right": 1, "other class": 1, "cannot tell": 0},
                     "Fox": {"right": 0, "other class": 0, "cannot tell": 1},
                     "Owl": {"right": 1, "other class": 0, "cannot tell": 1}}
    assert "all          right 2 of 5" in capsys.readouterr().out


def test_several_guidance_scales_share_one_shuffled_sheet_and_are_scored_apart(tmp_path, capsys):
    cfg = ddpm.Config(**tiny_config_values(classes=CLASSES, conditional=True))
    blind_test.make(save_model_file(tmp_path / "model.pt", cfg), tmp_path, per_class=2, seed=1, scales=[1.0, 5.0])
    key = json.loads((tmp_path / "key.json").read_text())
    assert Counter(key["guidance"].values()) == {1.0: 6, 5.0: 6}
    assert Counter((key["asked"][n], g) for n, g in key["guidance"].items()) == {
        (name, scale): 2 for name in CLASSES for scale in (1.0, 5.0)}
    assert [key["guidance"][str(n)] for n in range(1, 13)] != [1.0] * 6 + [5.0] * 6
    right_at_5 = [n for n, g in key["guidance"].items() if g == 5.0]
    (tmp_path / "answers.txt").write_text("".join(f"{n} {key['asked'][n]}\n" for n in right_at_5))
    blind_test.score(tmp_path / "key.json", tmp_path / "answers.txt")
    tally = json.loads((tmp_path / "tally.json").read_text())
    assert tally["guidance 5"]["Fox"] == {"right": 2, "other class": 0, "cannot tell": 0}
    assert tally["guidance 1"]["Fox"] == {"right": 0, "other class": 0, "cannot tell": 2}
    out = capsys.readouterr().out
    assert "guidance 1\n" in out and "all          right 0 of 6" in out and "all          right 6 of 6" in out
