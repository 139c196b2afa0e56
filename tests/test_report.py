"""tools/make_report.py: the report is a template for any run. Built from a submission folder (model, results/
and notes.md), it names the run's classes and no others, says only what the measurements make true (each sentence
that reads a number is tried both ways here), shows the student's notes or says they are blank, shows the student's
name, explains results and not engineering, refuses a missing number, shows the training photos only when given
the data, and the committed Report.pdf is the one the repository's results give.

The submissions here are synthetic: a metrics.json in make_submission's schema, small generated figures and a tiny
random model."""
import copy
import json
import math
import re
import sys
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_report  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from conftest import save_model_file, tiny_config_values  # noqa: E402
from make_results import sha256  # noqa: E402

pypdf = pytest.importorskip("pypdf")

NAME, ROLL = "Ada Lovelace", "21L-1234"
# the course's class folders (../shared/data/animals), and one more with a space in its name
ANIMALS = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse", "Kangaroo", "Lion",
           "Panda", "Tiger", "Zebra", "Snow Leopard"]
RUN_A = ["Bear", "Cow", "Elephant", "Kangaroo", "Lion"]
RUN_B = ["Snow Leopard", "Cat", "Dog", "Horse", "Tiger"]
FIGURES = ["loss_curve.png", "checkpoints.png", "lr_sweep.png", "samples.png", "reverse_process.png",
           "ddpm_vs_ddim.png", "guidance.png", "nearest_neighbours.png"]


def checkpoint(step, novelty, copy_share, judged_class_share, targets):
    meets = (novelty >= targets["novelty"] and copy_share <= targets["copy_share"]
             and judged_class_share >= targets["judged_class_share"])
    return {"step": step, "denoising_loss": 0.06 - step * 1e-6, "denoising_loss_past_t1": 0.03 - step * 1e-6,
            "novelty": novelty, "copy_share": copy_share, "asked_class_share": 0.5,
            "judged_class_share": judged_class_share, "memorisation_rate": copy_share / 4,
            "nearest_photos_distinct": 40, "meets_targets": meets}


def lr_run(lr, label, is_default, diverged):
    """One run of the learning-rate experiment; a diverged one has no final model, so nothing was measured."""
    run = {"lr": lr, "label": label, "is_default": is_default, "steps": 2000, "train_seconds": 600.0,
           "failed": "diverged" if diverged else None}
    measured = {"final_loss": 0.04 + lr, "final_loss_per_t_quarter": [0.1, 0.04, 0.02, 0.01],
                "denoising_loss": 0.05 + lr, "denoising_loss_past_t1": 0.02 + lr, "novelty": 1.05,
                "copy_share": 0.05, "asked_class_share": 0.8, "judged_class_share": 0.4}
    return {**run, **{key: None if diverged else value for key, value in measured.items()}}


def synthetic_metrics(classes):
    """A metrics.json as tools/make_submission.py writes it: the chosen checkpoint (step 6,000 of 8,000) meets the
    targets, the later one does not; the highest learning rate diverged, the default was kept; every class has its
    20 photos."""
    targets = {"judged_class_share": 0.6, "novelty": 0.75, "copy_share": 0.4}
    config = {"image_size": 64, "timesteps": 1000, "schedule": "linear", "lr": 1e-3, "batch_size": 32,
              "epochs": 2700, "warmup_steps": 200, "ema_decay": 0.999, "cond_drop": 0.1, "dropout": 0.0,
              "augment": 0.15, "min_snr_gamma": 5.0, "low_res_share": 0.6, "images_per_class": 20,
              "classes": list(classes), "num_classes": len(classes), "flip": True, "conditional": True}
    checkpoints = [checkpoint(2000, 1.10, 0.02, 0.30, targets), checkpoint(4000, 0.95, 0.10, 0.55, targets),
                   checkpoint(6000, 0.85, 0.30, 0.70, targets), checkpoint(8000, 0.70, 0.45, 0.75, targets)]
    by_class = [0.96, 0.9, 0.7, 1.0, 0.94][:len(classes)]
    judged_by_class = [0.8, 0.7, 0.4, 0.9, 0.7][:len(classes)]
    return {
        "classes": list(classes),
        "run": {"command": "python tools/make_submission.py --classes ...", "profile": "cpu", "seed": 0,
                "model_sha256": "0" * 64, "stage_seconds": {"train": 3000.0, "lr": 1800.0, "evaluate": 600.0,
                                                            "results": 300.0}},
        "config": config,
        "parameters": 1234567,
        "data": {"train_images": 20 * len(classes), "photos_per_class": [20] * len(classes),
                 "images_per_class_asked": 20},
        "training": {"device": "x86_64 cpu", "torch": "2.5.0", "parameters": 1234567, "processes": 1, "steps": 8000,
                     "images_seen": 256000, "passes": 2560.0, "train_seconds": 3000.0, "total_steps": 8000,
                     "low_res_steps": 4800, "final_loss": 0.0412, "final_loss_per_t_quarter": [0.11, 0.05, 0.02, 0.01]},
        "targets": targets,
        "checkpoints": checkpoints,
        "chosen": {"step": 6000, "meets_targets": True, "misses": [], "is_last": False},
        "evaluation": {"step": 6000, "classes": list(classes), "train_images": 20 * len(classes), "samples": 50,
                       "sampler": "ddim", "steps": 50, "guidance": 3.0, "denoising_loss": 0.054,
                       "denoising_loss_per_t": {"1": 0.3, "500": 0.01, "1000": 0.001}, "nearest_distance_mean": 0.31,
                       "nearest_distance_min": 0.12, "nearest_distance_median": 0.3, "leave_one_out_median": 0.35,
                       "novelty": 0.857, "copy_share": 0.3, "memorisation_rate": 0.06, "nearest_photos_distinct": 41,
                       "asked_class_share": 0.9, "asked_class_share_by_class": by_class,
                       "leave_one_out_class_share": 0.55, "judged_class_share": 0.7,
                       "judged_class_share_by_class": judged_by_class, "judge_photo_accuracy": 0.6, "judges": 5,
                       "judge_sure": 0.7},
        "lr_sweep": {"epochs": 600, "runs": [lr_run(3e-3, "3e-3", False, True), lr_run(1e-3, "1e-3", True, False),
                                             lr_run(2e-4, "2e-4", False, False)],
                     "default_lr": 1e-3, "default_label": "1e-3", "picked_lr": 1e-3, "picked_label": "1e-3",
                     "pick_margin": 0.1, "collapse_loss": 0.5, "all_failed": False},
        "sampling_seconds": {"DDPM 1000": 61.5, "DDIM 50": 3.2, "DDIM 25": 1.7},
        "sampling_device": "cpu, 2 threads",
        "guidance_scales": [1, 2, 3, 5],
    }


def write_submission(folder, metrics):
    """folder/results/ with the metrics and a small generated image per figure (grey-blue shades: no ochre), and a
    tiny random model of the run's classes in saved_models/."""
    folder = Path(folder)
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for i, name in enumerate(FIGURES):
        Image.new("RGB", (300, 120 + 20 * i), (90 + 10 * i, 110, 140)).save(results / name)
    (folder / "saved_models").mkdir(exist_ok=True)
    cfg = ddpm.Config(**tiny_config_values(classes=list(metrics["classes"]), num_classes=len(metrics["classes"]),
                                           conditional=True, timesteps=1000, images_per_class=2))
    save_model_file(folder / "saved_models" / "ddpm_animals.pt", cfg)
    return folder


FORWARD = {"image": "a sample of the trained model", "x_T_mean": 0.004, "x_T_std": 1.002, "std_x0": 0.5,
           "largest_gap": 0.01}


def report_text(path):
    """The PDF's text with its line breaks made spaces."""
    return " ".join("".join(page.extract_text() for page in pypdf.PdfReader(path).pages).split())


def source_text(metrics, notes=None, forward=FORWARD, photos=False):
    """The report's filled-in Typst markup for these metrics, strong marks left out: what the PDF says, without
    typesetting it."""
    return " ".join(make_report.render_text(metrics, forward, photos, notes or {}).replace("*", "").split())


# a note may hold any of the characters that are markup in Typst: the report prints them as written
FILLED_NOTE = "The third class lags, its photos being close-ups: *a*, snake_case, #3, $5, @me, <b>, [sic], ~, a/b = c."


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    """Run A's submission folder, built by the command line into its own Report.pdf, with one notes section filled
    in and the rest blank."""
    folder = write_submission(tmp_path_factory.mktemp("submission"), synthetic_metrics(RUN_A))
    make_report.write_notes_template(folder / "notes.md")
    notes = (folder / "notes.md").read_text()
    first = make_report.notes_sections()[0]
    (folder / "notes.md").write_text(notes.replace(f"## {first}\n{make_report.NOTES_BLANK}",
                                                   f"## {first}\n{FILLED_NOTE}"))
    assert make_report.main(["--submission-dir", str(folder), "--name", NAME, "--roll-number", ROLL]) == 0
    return folder


@pytest.fixture(scope="module")
def report(submission):
    return submission / "Report.pdf"


# The template: true for any run --------------------------------------------------------------------------------

def named_animals(text):
    return {name for name in ANIMALS if re.search(rf"\b{name}\b", text)}


def test_report_names_exactly_the_classes_of_its_run(report):
    assert named_animals(report_text(report)) == set(RUN_A)


def test_another_run_names_its_own_classes_space_and_all(tmp_path):
    folder = write_submission(tmp_path, synthetic_metrics(RUN_B))
    make_report.build(folder, tmp_path / "Report.pdf", NAME, ROLL)
    text = report_text(tmp_path / "Report.pdf")
    assert named_animals(text) == set(RUN_B)
    assert "Snow Leopard" in text


def test_failed_learning_rates_are_listed_and_none_failing_is_said():
    metrics = synthetic_metrics(RUN_A)
    assert "Failed: 3e-3 (diverged)." in source_text(metrics)
    assert "A learning rate failed. 3e-3 (diverged) (section 3.1); the main model is trained at 1e-3." in \
        source_text(metrics)
    metrics["lr_sweep"]["runs"][0] = lr_run(3e-3, "3e-3", False, False)
    text = source_text(metrics)
    assert "No run failed" in text and "Failed:" not in text and "rate failed" not in text


def picked(metrics, picked_lr, label, failed=(), all_failed=False):
    """metrics whose learning-rate runs came first and picked `picked_lr`; `failed`: {label: how}."""
    sweep = metrics["lr_sweep"]
    for run in sweep["runs"]:
        run["failed"] = dict(failed).get(run["label"])
    sweep.update(default_lr=1e-3, default_label="1e-3", picked_lr=picked_lr, picked_label=label, pick_margin=0.1,
                 collapse_loss=0.5, all_failed=all_failed)
    return metrics


def test_the_rate_of_the_main_model_is_said_with_the_rule_that_picked_it():
    text = source_text(picked(synthetic_metrics(RUN_A), 1e-3, "1e-3"))
    assert "trained at the default rate, 1e-3: no other rate had a denoising loss over t > 1 at least 10%" in text
    assert "made after the main model" not in text
    text = source_text(picked(synthetic_metrics(RUN_A), 3e-3, "3e-3"))
    assert "The main model is trained at 3e-3, not the default 1e-3: its denoising loss over t > 1 was at least " \
           "10% lower" in text
    text = source_text(picked(synthetic_metrics(RUN_A), 1e-3, "1e-3", {"3e-3": "diverged", "1e-3": "collapsed",
                                                                      "2e-4": "collapsed"}, all_failed=True))
    assert "Every run failed, so the main model keeps the default rate, 1e-3" in text
    assert "Failed: 3e-3 (diverged), 1e-3 (collapsed), 2e-4 (collapsed)." in text
    assert "Learning rates failed. 3e-3 (diverged), 1e-3 (collapsed), 2e-4 (collapsed) (section 3.1); the main " \
           "model is trained at 1e-3, the default, since every run failed." in text


def test_the_tables_give_the_loss_over_t_above_1_and_the_judged_class():
    text = source_text(synthetic_metrics(RUN_A))
    assert text.count("denoising loss, t > 1") == 2 and "The tables therefore give its average over t > 1" in text
    assert "[1e-3 (default)], [2,000], [0.0410], [0.0210], [1.05], [5%], [40%]," in text
    assert "[6,000 (chosen)], [0.0240], [0.85], [30%], [70%], [8%], [40], [met]," in text


def test_a_chosen_checkpoint_that_misses_a_target_says_which():
    metrics = synthetic_metrics(RUN_A)
    assert "the latest checkpoint that meets all three targets" in source_text(metrics)
    miss = "judged class 42% (target at least 60%)"
    metrics["chosen"] = {"step": 6000, "meets_targets": False, "misses": [miss], "is_last": False}
    for c in metrics["checkpoints"]:
        c["judged_class_share"], c["meets_targets"] = 0.42, False
    text = source_text(metrics)
    assert "No checkpoint meets all three targets" in text and f"it misses: {miss}" in text
    assert "meets all three targets;" not in text


def test_the_class_the_samples_miss_most_is_named_by_measurement():
    metrics = synthetic_metrics(RUN_A)
    assert (f"{RUN_A[2]} has the lowest judged share (Table 3): the judges name 40% of its samples as {RUN_A[2]}, "
            "below the target of 60%.") in source_text(metrics).replace("@tab:classes", "Table 3")
    metrics["evaluation"]["judged_class_share_by_class"] = [0.95, 0.9, 1.0, 0.65, 0.94]
    assert f"{RUN_A[3]} has the lowest judged share (@tab:classes): the judges name 65% of its samples as " \
           f"{RUN_A[3]}, which still meets the target of 60%." in source_text(metrics)
    metrics["evaluation"]["judged_class_share_by_class"] = [1.0] * 5
    text = source_text(metrics)
    assert "lowest" not in text and "The judges name every sample as the class it was asked for" in text


def test_a_class_with_fewer_photos_is_reported_only_when_there_is_one():
    metrics = synthetic_metrics(RUN_A)
    assert "fewer photos than asked" not in source_text(metrics)
    metrics["data"]["photos_per_class"][1], metrics["data"]["train_images"] = 17, 97
    assert f"{RUN_A[1]} has fewer photos than asked. Its folder gives 17 usable photos" in source_text(metrics)


def test_the_forward_spread_is_said_to_follow_the_prediction_only_when_it_does():
    metrics = synthetic_metrics(RUN_A)
    assert "The step-by-step chain follows it: at every step shown the measured spread is within 0.010" in \
        source_text(metrics)
    text = source_text(metrics, forward={**FORWARD, "largest_gap": 0.2})
    assert "follows it" not in text and "The measured spread is up to 0.200 away from the prediction" in text


def test_x_T_is_called_standard_normal_only_when_its_numbers_are():
    metrics = synthetic_metrics(RUN_A)
    assert "as a draw from N(0, 1) would" in source_text(metrics)
    text = source_text(metrics, forward={**FORWARD, "x_T_mean": 0.3, "x_T_std": 0.7})
    assert "as a draw from N(0, 1) would" not in text and "further from the mean 0" in text


def test_the_t1_term_is_said_to_dominate_the_denoising_loss_only_when_it_does():
    metrics = synthetic_metrics(RUN_A)  # 0.3 of 0.311
    assert "the t = 1 term is 96% of the average: that one step decides most of it" in source_text(metrics)
    metrics["evaluation"]["denoising_loss_per_t"] = {"1": 0.1, "500": 0.2, "1000": 0.1}
    text = source_text(metrics)
    assert "the t = 1 term is 25% of the average." in text and "decides most" not in text


def test_the_class_target_is_said_met_only_when_it_is_with_the_judges_accuracy_on_new_photos_beside_it():
    metrics = synthetic_metrics(RUN_A)  # samples 70%, target 60%, new photos 60%
    text = source_text(metrics)
    assert "and at least 60% of the samples named as the class asked for by the judges" in text
    assert "a probability of at least 0.7: 70% of 50 samples of the chosen model do (@tab:classes), against a " \
           "target of 60%: the class target is met." in text
    assert "Each judge names the class of 60% of the photos it was not trained on correctly" in text
    assert "coarse test" not in text
    metrics["evaluation"].update(judged_class_share=0.45, judge_photo_accuracy=0.51)
    text = source_text(metrics)
    assert "45% of 50 samples of the chosen model do (@tab:classes), against a target of 60%: the class target is " \
           "missed." in text
    assert "That is below the target asked of the samples: on these photos the judges are a coarse test" in text


def test_the_novelty_sentence_follows_the_target():
    metrics = synthetic_metrics(RUN_A)  # 0.857 against 0.75
    assert "closer than a new real photo would sit, but above the target of 0.75" in source_text(metrics)
    metrics["evaluation"]["novelty"] = 1.2
    assert "at least as far from the photos as a new real photo would" in source_text(metrics)
    metrics["evaluation"]["novelty"] = 0.5
    assert "and below the target of 0.75" in source_text(metrics)


def test_samples_that_all_end_at_different_photos_are_said_to():
    metrics = synthetic_metrics(RUN_A)
    assert "no two share one" not in source_text(metrics)
    metrics["evaluation"]["nearest_photos_distinct"] = 50
    assert "50 different nearest photos: no two share one" in source_text(metrics)


def test_samples_come_closer_to_the_photos_only_when_novelty_falls_and_copies_rise():
    metrics = synthetic_metrics(RUN_A)  # novelty 1.10 -> 0.70, copies 2% -> 45%
    text = source_text(metrics)
    assert "The samples came closer to the photos as training went on" in text
    assert "keeping step 6,000 (section 3.3) handled it" in text
    flat = copy.deepcopy(metrics)
    flat["checkpoints"][-1].update(novelty=1.08)
    text = source_text(flat)
    assert "came closer" not in text and "The end of training was not the best model" in text


def test_without_the_photos_one_line_says_what_is_left_out():
    metrics = synthetic_metrics(RUN_A)
    assert "built without the training photos" in source_text(metrics)
    with_photos = source_text(metrics, photos=True)
    assert "built without the training photos" not in with_photos and "as the model sees them" in with_photos


def test_no_outcome_stops_the_build():
    """A student's build must never stop on what was measured: the worst run renders as the best does."""
    metrics = synthetic_metrics(RUN_A)
    metrics["lr_sweep"]["runs"] = [lr_run(lr, str(lr), lr == 1e-3, True) for lr in (3e-3, 1e-3, 2e-4)]
    metrics["chosen"] = {"step": 8000, "meets_targets": False, "misses": ["novelty 0.70 (target at least 0.75)"],
                         "is_last": True}
    metrics["checkpoints"][-1]["meets_targets"] = False
    metrics["evaluation"].update(step=8000, novelty=0.2, copy_share=1.0, asked_class_share=0.2,
                                 asked_class_share_by_class=[None, 0.0, 0.0, 0.5, 0.0], judged_class_share=0.0,
                                 judged_class_share_by_class=[None, 0.0, 0.0, 0.0, 0.0])
    text = source_text(metrics, forward={**FORWARD, "x_T_mean": 0.3, "x_T_std": 0.7, "largest_gap": 0.3})
    assert "No checkpoint meets all three targets" in text and "no sample" in text


def test_a_float_without_a_format_or_a_missing_key_stops_the_build_naming_the_line(tmp_path):
    source = tmp_path / "report.typ"
    source.write_text("= A\n\n{{ metrics.x }}\n")
    with pytest.raises(make_report.ReportError, match=r"report\.typ line 3: the float 0\.5 needs a format"):
        make_report.render_text({"x": 0.5}, FORWARD, False, {}, source)
    source.write_text("= A\n{{ metrics.nope|fmt('.2f') }}\n")
    with pytest.raises(make_report.ReportError, match=r"report\.typ line 2: .*'nope'"):
        make_report.render_text({"x": 0.5}, FORWARD, False, {}, source)


def test_a_missing_metrics_key_stops_the_build_and_writes_no_pdf(tmp_path):
    metrics = synthetic_metrics(RUN_A)
    del metrics["training"]["final_loss"]
    folder = write_submission(tmp_path, metrics)
    with pytest.raises(make_report.ReportError, match=r"report\.typ line \d+: .*'final_loss'"):
        make_report.build(folder, tmp_path / "Report.pdf", NAME, ROLL)
    assert not (tmp_path / "Report.pdf").exists()


# The forward figure's reference curve ------------------------------------------------------------------------------

@pytest.mark.parametrize("contrast", [0.1, 0.9])
def test_the_forward_spread_follows_the_closed_form_prediction(tmp_path, contrast):
    """The measured std of x_t lies on sqrt(alpha_bar_t var(x_0) + 1 - alpha_bar_t) at every step shown, for a
    faint and a high-contrast image; the bare noise weight sqrt(1 - alpha_bar_t) misses it early on."""
    schedule = ddpm.NoiseSchedule(1000)
    x0 = contrast * torch.sign(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)))
    _, spread = ddpm.plot_forward_process(schedule, x0, tmp_path / "f.png")
    assert max(abs(measured - predicted) for measured, predicted in spread.values()) < 0.03
    assert spread[0][0] == pytest.approx(contrast, abs=0.01)


def test_the_bare_noise_weight_is_not_the_spread_of_a_high_contrast_image(tmp_path):
    """The curve the figure used to measure against, sqrt(1 - alpha_bar_t), is off by 0.1 or more up to t = 200."""
    schedule = ddpm.NoiseSchedule(1000)
    x0 = 0.9 * torch.sign(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)))
    _, spread = ddpm.plot_forward_process(schedule, x0, tmp_path / "f.png")
    for t in (50, 100, 200):
        assert abs(spread[t][0] - math.sqrt(1 - float(schedule.alphas_cumprod[t - 1]))) > 0.1


# Notes -----------------------------------------------------------------------------------------------------------

def test_notes_sections_are_the_template_calls_in_order():
    sections = make_report.notes_sections()
    assert sections[0] == "The data" and len(sections) == 6 and len(set(sections)) == 6


def test_the_notes_template_has_a_blank_section_each_and_is_never_overwritten(tmp_path):
    path = tmp_path / "notes.md"
    assert make_report.write_notes_template(path)
    lines = path.read_text().splitlines()
    assert lines[0] == make_report.NOTES_TITLE and lines[2:4] == ["", f"## {make_report.notes_sections()[0]}"]
    assert lines.count(make_report.NOTES_BLANK) == len(make_report.notes_sections())
    assert make_report.blank_notes(path) == make_report.notes_sections()
    path.write_text("mine")
    assert not make_report.write_notes_template(path)
    assert path.read_text() == "mine"


def test_filling_a_section_takes_it_off_the_blank_list(tmp_path):
    path = tmp_path / "notes.md"
    make_report.write_notes_template(path)
    second = make_report.notes_sections()[1]
    path.write_text(path.read_text().replace(f"## {second}\n{make_report.NOTES_BLANK}", f"## {second}\nSeen."))
    assert second not in make_report.blank_notes(path)
    assert len(make_report.blank_notes(path)) == len(make_report.notes_sections()) - 1
    assert make_report.read_notes(path)[second] == "Seen."


def test_each_chapters_notes_start_a_paragraph_of_their_own():
    """A blank line before each note in the Typst source: the student's reading never runs on from a sentence of
    the template (Memorisation's did)."""
    titles = make_report.notes_sections()
    notes = {title: f"NOTE-{number}" for number, title in enumerate(titles)}
    for classes in (RUN_A, ["Bear", "Cat", "Cow", "Dog", "Elephant"]):
        text = make_report.render_text(synthetic_metrics(classes), FORWARD, False, notes)
        assert all(f"\n\nNOTE-{number}" in text for number in range(len(titles)))


def test_missing_notes_are_all_blank(tmp_path):
    assert make_report.read_notes(tmp_path / "none.md") == {}
    assert make_report.blank_notes(tmp_path / "none.md") == make_report.notes_sections()


def test_the_report_shows_filled_notes_and_marks_blank_ones(report):
    text = report_text(report)
    assert FILLED_NOTE in text
    blank = [title for title in make_report.notes_sections()[1:] if f"under “{title}” in notes.md" in text]
    assert blank == make_report.notes_sections()[1:]
    assert f"under “{make_report.notes_sections()[0]}”" not in text


# The PDF ----------------------------------------------------------------------------------------------------------

def test_report_has_the_expected_length(report):
    assert 8 <= len(pypdf.PdfReader(report).pages) <= 14


def test_no_template_markup_or_label_survives(report):
    text = report_text(report)
    for leftover in ["{{", "}}", "{%", "@fig", "@tab", "<fig:", "<tab:", "#figure", "Your reading", "where to look",
                     "notes("]:
        assert leftover not in text, leftover


def test_report_explains_results_not_engineering(report):
    """Speed, other implementations and build details live in BENCHMARKS.md; a submission that cites another
    diffusion implementation scores zero."""
    text = report_text(report).lower()
    for word in ["diffusers", "unet2dmodel", "peer", "sha256", "tflop", "gflop", "torch.compile", "cuda graph",
                 "threads", "make_report", "make_submission", "pip install", "img/s", "jinja"]:
        assert word not in text, word


def test_title_page_shows_the_name_and_roll_number(report):
    title = pypdf.PdfReader(report).pages[0].extract_text()
    assert NAME in title and ROLL in title


def test_the_name_and_roll_number_are_required(capsys):
    with pytest.raises(SystemExit):
        make_report.main(["--submission-dir", str(ROOT)])
    assert "--name" in capsys.readouterr().err


def test_numbers_come_from_the_results(report):
    text = report_text(report)
    assert "1,234,567" in text and "256,000" in text and "61.5 s" in text and "x86_64 cpu" in text


def test_building_a_submission_records_its_inputs_in_its_folder(submission):
    """DIR/report/built_from.json names DIR's files relative to DIR and the template relative to the repository."""
    record = json.loads((submission / "report" / "built_from.json").read_text())
    assert record["inputs"]["results/metrics.json"] == sha256(submission / "results" / "metrics.json")
    assert record["report_sha256"] == sha256(submission / "Report.pdf")
    assert {"report/report.typ", "tools/make_report.py", "rollNumber_05.py", "results/metrics.json",
            "results/samples.png", "saved_models/ddpm_animals.pt", "notes.md"} <= set(record["inputs"])
    assert record["inputs"] == make_report.input_digests(submission)


def test_a_copy_built_elsewhere_is_not_recorded(submission, tmp_path):
    before = (submission / "report" / "built_from.json").read_text()
    assert make_report.main(["--submission-dir", str(submission), "--out", str(tmp_path / "R.pdf"), "--name", NAME,
                             "--roll-number", ROLL]) == 0
    assert (tmp_path / "R.pdf").is_file()
    assert (submission / "report" / "built_from.json").read_text() == before


def test_the_build_is_byte_for_byte_reproducible(submission, tmp_path):
    make_report.build(submission, tmp_path / "Report.pdf", NAME, ROLL)
    assert sha256(tmp_path / "Report.pdf") == sha256(submission / "Report.pdf")


def test_a_report_with_photos_is_never_the_submission_copy(submission, capsys):
    with pytest.raises(SystemExit):
        make_report.main(["--submission-dir", str(submission), "--data-dir", str(ROOT), "--name", NAME,
                          "--roll-number", ROLL])
    assert "--out" in capsys.readouterr().err


# With the training photos ----------------------------------------------------------------------------------------

OCHRE = (200, 120, 40)  # no corner of the colour cube, which a random model's clipped samples fill, nor a plot colour


def ochre_area(image):
    """Pixels at the centre of a 5 x 5 block of the test photo's ochre. Noise has isolated ochre pixels; only the
    photo makes an ochre region."""
    rgb = numpy.asarray(image.convert("RGB")).astype(int)
    ochre = (numpy.abs(rgb - numpy.array(OCHRE)) <= 12).all(axis=-1)
    core = Image.fromarray((ochre * 255).astype(numpy.uint8)).filter(ImageFilter.MinFilter(5))
    return int((numpy.asarray(core) > 0).sum())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A data folder with two grey photos per class of run B, but the first photo of its first class (the one the
    forward-process figure noises) is ochre with a white stripe: easy to find in a figure."""
    data = tmp_path_factory.mktemp("data")
    for name in RUN_B:
        (data / name).mkdir()
        for file in ("a.png", "b.png"):
            Image.new("RGB", (80, 60), (128, 128, 128)).save(data / name / file)
    photo = Image.new("RGB", (80, 60), OCHRE)
    photo.paste((255, 255, 255), (0, 25, 80, 35))
    photo.save(data / RUN_B[0] / "a.png")
    return data


def test_the_report_built_with_the_data_shows_the_photos_and_the_plain_one_does_not(photos, tmp_path):
    def ochre_in_figures(path):
        return max(ochre_area(img.image) for page in pypdf.PdfReader(path).pages for img in page.images)

    folder = write_submission(tmp_path / "submission", synthetic_metrics(RUN_B))
    make_report.build(folder, tmp_path / "with.pdf", NAME, ROLL, data_dir=photos)
    make_report.build(folder, tmp_path / "plain.pdf", NAME, ROLL)
    assert ochre_in_figures(tmp_path / "with.pdf") > 500
    assert ochre_in_figures(tmp_path / "plain.pdf") < 50
    with_photos, plain = report_text(tmp_path / "with.pdf"), report_text(tmp_path / "plain.pdf")
    assert f"the first {RUN_B[0]} photo" in with_photos and f"{RUN_B[0]} photo" not in plain
    assert "nearest (middle) and second nearest (bottom) training photo" in with_photos
    assert "as the model sees them" in with_photos and "as the model sees them" not in plain


# The repository's own report --------------------------------------------------------------------------------------

def test_committed_report_names_the_run_on_its_cover_not_a_placeholder():
    title = pypdf.PdfReader(ROOT / make_report.REPORT).pages[0].extract_text()
    assert "Example" in title and "00-0000" in title and "[" not in title


def test_committed_report_is_current():
    """Report.pdf was built from the current results, model, notes, template and builder: rebuild with
    python tools/make_report.py."""
    built_from = json.loads((ROOT / make_report.BUILT_FROM).read_text())
    current = make_report.input_digests(ROOT)
    stale = [name for name, digest in built_from["inputs"].items() if current.get(name) != digest]
    assert not stale, (f"changed since Report.pdf was built: {stale}; run python tools/make_report.py --name "
                       f"Example --roll-number 00-0000")
    assert set(built_from["inputs"]) == set(current)
    assert built_from["report_sha256"] == sha256(ROOT / make_report.REPORT)
