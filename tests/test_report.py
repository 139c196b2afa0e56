"""tools/make_report.py: the report is a template for any run. Built from a submission folder (results/ and
notes.md), it names the run's classes and no others, says what the measurements say (a sentence about an outcome
flips when the measurement does), shows the student's notes or says they are blank, shows the student's name,
explains results and not engineering, refuses a missing number, noises a real photo only when given the data, and
the committed Report.pdf is the one the repository's results give.

The submissions here are synthetic: a metrics.json in make_submission's schema and small generated figures."""
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy
import pytest
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_report  # noqa: E402

pypdf = pytest.importorskip("pypdf")

NAME, ROLL = "Ada Lovelace", "21L-1234"
# the course's class folders (../shared/data/animals), and one more with a space in its name
ANIMALS = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse", "Kangaroo", "Lion",
           "Panda", "Tiger", "Zebra", "Snow Leopard"]
RUN_A = ["Bear", "Cow", "Elephant", "Kangaroo", "Lion"]
RUN_B = ["Snow Leopard", "Cat", "Dog", "Horse", "Tiger"]
FIGURES = ["loss_curve.png", "checkpoints.png", "lr_sweep.png", "samples.png", "reverse_process.png",
           "forward_process.png", "ddpm_vs_ddim.png", "guidance.png", "nearest_neighbours.png"]


def checkpoint(step, novelty, copy_share, asked_class_share, targets):
    meets = (novelty >= targets["novelty"] and copy_share <= targets["copy_share"]
             and asked_class_share >= targets["asked_class_share"])
    return {"step": step, "denoising_loss": 0.06 - step * 1e-6, "novelty": novelty, "copy_share": copy_share,
            "asked_class_share": asked_class_share, "memorisation_rate": copy_share / 4,
            "nearest_photos_distinct": 40, "meets_targets": meets}


def lr_run(lr, label, is_default, diverged):
    """One run of the learning-rate experiment; a diverged one has no final model, so nothing was measured."""
    run = {"lr": lr, "label": label, "is_default": is_default, "steps": 2000, "train_seconds": 600.0,
           "diverged": diverged, "lowest_loss": 0.08, "lowest_loss_step": 150}
    measured = {"final_loss": 0.04 + lr, "final_loss_per_t_quarter": [0.1, 0.04, 0.02, 0.01],
                "denoising_loss": 0.05 + lr, "novelty": 1.05, "copy_share": 0.05, "asked_class_share": 0.8}
    return {**run, **{key: None if diverged else value for key, value in measured.items()}}


def synthetic_metrics(classes):
    """A metrics.json as tools/make_submission.py writes it: the chosen checkpoint (step 6,000 of 8,000) meets the
    targets, the later one does not; the highest learning rate diverged; every class has its 20 photos."""
    targets = {"asked_class_share": 0.9, "novelty": 0.75, "copy_share": 0.4}
    config = {"image_size": 64, "timesteps": 1000, "schedule": "linear", "lr": 1e-3, "batch_size": 32,
              "epochs": 2700, "warmup_steps": 200, "ema_decay": 0.999, "cond_drop": 0.1, "dropout": 0.0,
              "augment": 0.15, "min_snr_gamma": 5.0, "low_res_share": 0.6, "images_per_class": 20,
              "classes": list(classes), "num_classes": len(classes), "flip": True, "conditional": True}
    checkpoints = [checkpoint(2000, 1.10, 0.02, 0.80, targets), checkpoint(4000, 0.95, 0.10, 0.92, targets),
                   checkpoint(6000, 0.85, 0.30, 0.94, targets), checkpoint(8000, 0.70, 0.45, 0.95, targets)]
    by_class = [0.96, 0.9, 0.7, 1.0, 0.94][:len(classes)]
    return {
        "classes": list(classes),
        "run": {"command": "python tools/make_submission.py --classes ...", "profile": "cpu", "seed": 0,
                "model_sha256": "0" * 64, "stage_seconds": {"train": 3000.0, "lr": 1800.0, "evaluate": 600.0,
                                                            "results": 300.0}},
        "config": config,
        "parameters": 1234567,
        "data": {"train_images": 20 * len(classes), "photos_per_class": [20] * len(classes),
                 "images_per_class_asked": 20},
        "training": {"device": "cpu", "torch": "2.5.0", "parameters": 1234567, "processes": 1, "steps": 8000,
                     "images_seen": 256000, "passes": 2560.0, "train_seconds": 3000.0, "total_steps": 8000,
                     "low_res_steps": 4800, "final_loss": 0.0412, "final_loss_per_t_quarter": [0.11, 0.05, 0.02, 0.01]},
        "targets": targets,
        "checkpoints": checkpoints,
        "chosen": {"step": 6000, "meets_targets": True, "misses": [], "is_last": False},
        "evaluation": {"step": 6000, "classes": list(classes), "train_images": 20 * len(classes), "samples": 50,
                       "sampler": "ddim", "steps": 50, "guidance": 3.0, "denoising_loss": 0.054,
                       "denoising_loss_per_t": {"1": 0.3, "1000": 0.001}, "nearest_distance_mean": 0.31,
                       "nearest_distance_min": 0.12, "nearest_distance_median": 0.3, "leave_one_out_median": 0.35,
                       "novelty": 0.857, "copy_share": 0.3, "memorisation_rate": 0.06, "nearest_photos_distinct": 41,
                       "asked_class_share": 0.9, "asked_class_share_by_class": by_class,
                       "leave_one_out_class_share": 0.55},
        "lr_sweep": {"epochs": 600, "runs": [lr_run(3e-3, "3e-3", False, True), lr_run(1e-3, "1e-3", True, False),
                                             lr_run(2e-4, "2e-4", False, False)]},
        "sampling_seconds": {"DDPM 1000": 61.5, "DDIM 50": 3.2, "DDIM 25": 1.7},
        "sampling_device": "cpu, 2 threads",
        "guidance_scales": [1, 2, 3, 5],
        "x_T_mean": 0.004, "x_T_std": 1.002,
    }


def write_submission(folder, metrics):
    """folder/results/ with the metrics and a small generated image per figure (grey-blue shades: no red)."""
    results = Path(folder) / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for i, name in enumerate(FIGURES):
        Image.new("RGB", (300, 120 + 20 * i), (90 + 10 * i, 110, 140)).save(results / name)
    return Path(folder)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def report_text(path):
    """The PDF's text with its line breaks made spaces."""
    return " ".join("".join(page.extract_text() for page in pypdf.PdfReader(path).pages).split())


def source_text(metrics, notes=None):
    """The report's filled-in source for these metrics, bold marks left out: what the PDF says, without
    typesetting it."""
    lines = make_report.fill_in(make_report.SOURCE.read_text(encoding="utf-8").splitlines(),
                                {"metrics": metrics, "forward": make_report.forward_from_results(metrics)})
    return " ".join(" ".join(make_report.with_notes(lines, notes or {})).replace("**", "").split())


FILLED_NOTE = "The third class lags because its photos are mostly close-ups."


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    """Run A's submission folder, built by the command line into its own Report.pdf, with one notes section filled
    in and the rest blank: (the folder, the page count printed)."""
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
    make_report.build(tmp_path / "Report.pdf", results_dir=folder / "results")
    text = report_text(tmp_path / "Report.pdf")
    assert named_animals(text) == set(RUN_B)
    assert "Snow Leopard" in text


def test_the_top_learning_rate_sentence_follows_whether_it_diverged():
    metrics = synthetic_metrics(RUN_A)
    assert "At 3e-3, the highest rate tried, training diverged" in source_text(metrics)
    metrics["lr_sweep"]["runs"][0] = lr_run(3e-3, "3e-3", False, False)
    text = source_text(metrics)
    assert "Even the highest rate tried, 3e-3, trained without diverging" in text
    assert "training diverged" not in text and "Too high a learning rate" not in text


def test_a_chosen_checkpoint_that_misses_a_target_says_which():
    metrics = synthetic_metrics(RUN_A)
    assert "the latest checkpoint that meets all three targets" in source_text(metrics)
    miss = "asked class 82% (target at least 90%)"
    metrics["chosen"] = {"step": 6000, "meets_targets": False, "misses": [miss], "is_last": False}
    for c in metrics["checkpoints"]:
        c["asked_class_share"], c["meets_targets"] = 0.82, False
    text = source_text(metrics)
    assert "No checkpoint meets all three targets" in text and f"it misses: {miss}" in text
    assert "meets all three targets;" not in text


def test_the_class_the_samples_miss_most_is_named_by_measurement():
    metrics = synthetic_metrics(RUN_A)
    assert f"{RUN_A[2]} has the lowest share: 70%" in source_text(metrics)
    metrics["evaluation"]["asked_class_share_by_class"] = [0.95, 0.9, 1.0, 0.6, 0.94]
    assert f"{RUN_A[3]} has the lowest share: 60%" in source_text(metrics)
    metrics["evaluation"]["asked_class_share_by_class"] = [1.0] * 5
    assert "lowest share" not in source_text(metrics)


def test_a_class_with_fewer_photos_is_reported_only_when_there_is_one():
    metrics = synthetic_metrics(RUN_A)
    assert "fewer photos than asked" not in source_text(metrics)
    metrics["data"]["photos_per_class"][1], metrics["data"]["train_images"] = 17, 97
    assert f"{RUN_A[1]} has fewer photos than asked. Its folder gives 17 usable photos" in source_text(metrics)


def test_no_check_line_asserts_an_outcome():
    """A student's build must never stop on what was measured: !check lines compare the results' structure only,
    so the build goes through for the worst run as for the best."""
    metrics = synthetic_metrics(RUN_A)
    metrics["lr_sweep"]["runs"] = [lr_run(lr, str(lr), lr == 1e-3, True) for lr in (3e-3, 1e-3, 2e-4)]
    metrics["chosen"] = {"step": 8000, "meets_targets": False, "misses": ["novelty 0.70 (target at least 0.75)"],
                         "is_last": True}
    metrics["checkpoints"][-1]["meets_targets"] = False
    metrics["evaluation"].update(step=8000, novelty=0.2, copy_share=1.0, asked_class_share=0.2,
                                 asked_class_share_by_class=[None, 0.0, 0.0, 0.5, 0.0])
    metrics["x_T_mean"], metrics["x_T_std"] = 0.3, 0.7
    text = source_text(metrics)
    assert "No checkpoint meets all three targets" in text and "no sample" in text


# Notes -----------------------------------------------------------------------------------------------------------

def test_notes_sections_are_the_report_directives_in_order():
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


def test_missing_notes_are_all_blank(tmp_path):
    assert make_report.read_notes(tmp_path / "none.md") == {}
    assert make_report.blank_notes(tmp_path / "none.md") == make_report.notes_sections()


def test_the_report_shows_filled_notes_and_marks_blank_ones(report):
    text = report_text(report)
    assert f"Your reading. {FILLED_NOTE}" in text
    blank = [title for title in make_report.notes_sections()[1:] if f"under “{title}” in notes.md" in text]
    assert blank == make_report.notes_sections()[1:]
    assert f"under “{make_report.notes_sections()[0]}”" not in text


def test_notes_of_bullets_start_below_the_lead_in():
    lines = make_report.with_notes(["!notes A"], {"A": "- one\n- two"})
    assert lines == ["", make_report.NOTES_LEAD, "", "- one", "- two", ""]


# The PDF ----------------------------------------------------------------------------------------------------------

def test_report_has_the_expected_length(report):
    assert 8 <= len(pypdf.PdfReader(report).pages) <= 14


def test_report_explains_results_not_engineering(report):
    """Speed, other implementations and build details live in BENCHMARKS.md; a submission that cites another
    diffusion implementation scores zero."""
    text = report_text(report).lower()
    for word in ["diffusers", "unet2dmodel", "peer", "sha256", "tflop", "gflop", "torch.compile", "cuda graph",
                 "threads", "make_report", "make_submission", "pip install", "img/s"]:
        assert word not in text, word


def test_title_page_shows_the_name_and_roll_number(report):
    title = pypdf.PdfReader(report).pages[0].extract_text()
    assert NAME in title and ROLL in title


def test_numbers_come_from_the_results(report):
    text = report_text(report)
    assert "1,234,567" in text and "256,000" in text and "61.5 s" in text


def test_building_a_submission_records_its_inputs_in_its_folder(submission):
    """DIR/report/built_from.json names DIR's files relative to DIR and the template relative to the repository;
    the packager checks results_sha256."""
    record = json.loads((submission / "report" / "built_from.json").read_text())
    assert record["results_sha256"] == sha256(submission / "results" / "metrics.json")
    assert record["report_sha256"] == sha256(submission / "Report.pdf")
    assert {"report/report.md", "tools/make_report.py", "results/metrics.json", "results/samples.png",
            "notes.md"} <= set(record["inputs"])
    assert record["inputs"] == make_report.input_digests(submission)


def test_a_copy_built_elsewhere_is_not_recorded(submission, tmp_path):
    before = (submission / "report" / "built_from.json").read_text()
    assert make_report.main(["--submission-dir", str(submission), "--out", str(tmp_path / "R.pdf")]) == 0
    assert (tmp_path / "R.pdf").is_file()
    assert (submission / "report" / "built_from.json").read_text() == before


def test_the_build_is_byte_for_byte_reproducible(submission, tmp_path):
    make_report.build(tmp_path / "Report.pdf", NAME, ROLL, results_dir=submission / "results")
    assert sha256(tmp_path / "Report.pdf") == sha256(submission / "Report.pdf")


def test_a_report_with_photos_is_never_the_submission_copy(submission, capsys):
    with pytest.raises(SystemExit):
        make_report.main(["--submission-dir", str(submission), "--data-dir", str(ROOT)])
    assert "--out" in capsys.readouterr().err


def test_a_missing_metrics_key_stops_the_build_and_names_it(tmp_path):
    metrics = synthetic_metrics(RUN_A)
    del metrics["training"]["final_loss"]
    folder = write_submission(tmp_path, metrics)
    missing = r"report\.md line \d+: \{tr\.final_loss:\.4f\}: no 'final_loss' in tr \(keys there: device"
    with pytest.raises(make_report.ReportError, match=missing):
        make_report.build(tmp_path / "Report.pdf", results_dir=folder / "results")
    assert not (tmp_path / "Report.pdf").exists()


# With the training photos ----------------------------------------------------------------------------------------

RED = (230, 20, 20)


def red_area(image):
    """Pixels at the centre of a 5 x 5 block of the test photo's red. Noise has isolated red pixels; only the photo
    makes a red region."""
    rgb = numpy.asarray(image.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)
    core = Image.fromarray((red * 255).astype(numpy.uint8)).filter(ImageFilter.MinFilter(5))
    return int((numpy.asarray(core) > 0).sum())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A data folder with one grey photo per class of run B, but the photo of its first class (the one the
    forward-process figure noises) is red with a white stripe: easy to find in a figure."""
    data = tmp_path_factory.mktemp("data")
    for name in RUN_B:
        (data / name).mkdir()
        Image.new("RGB", (80, 60), (128, 128, 128)).save(data / name / "a.png")
    photo = Image.new("RGB", (80, 60), RED)
    photo.paste((255, 255, 255), (0, 25, 80, 35))
    photo.save(data / RUN_B[0] / "a.png")
    return data


def test_with_the_data_the_forward_figure_noises_a_photo_of_the_first_class(photos, tmp_path):
    facts = make_report.forward_from_photo(photos, RUN_B[0], synthetic_metrics(RUN_B)["config"], tmp_path)
    assert red_area(Image.open(tmp_path / make_report.FORWARD_FIGURE)) > 500  # the photo at t = 0
    assert RUN_B[0] in facts["image"] and abs(facts["x_T_mean"]) < 0.1 and abs(facts["x_T_std"] - 1) < 0.1


def test_the_report_built_with_the_data_shows_the_photos_and_the_plain_one_does_not(photos, tmp_path):
    def red_in_figures(path):
        return max(red_area(img.image) for page in pypdf.PdfReader(path).pages for img in page.images)

    folder = write_submission(tmp_path / "submission", synthetic_metrics(RUN_B))
    make_report.build(tmp_path / "with.pdf", NAME, ROLL, results_dir=folder / "results", data_dir=photos)
    make_report.build(tmp_path / "plain.pdf", NAME, ROLL, results_dir=folder / "results")
    assert red_in_figures(tmp_path / "with.pdf") > 500
    assert red_in_figures(tmp_path / "plain.pdf") < 50
    with_photos, plain = report_text(tmp_path / "with.pdf"), report_text(tmp_path / "plain.pdf")
    assert f"{RUN_B[0]} photo" in with_photos and f"{RUN_B[0]} photo" not in plain
    assert "as the model sees them" in with_photos and "as the model sees them" not in plain


# The placeholder language ----------------------------------------------------------------------------------------

def test_a_float_needs_a_format():
    with pytest.raises(make_report.ReportError, match="give it a format"):
        make_report.fill_in(["{metrics.x}"], {"metrics": {"x": 0.5}})
    assert make_report.fill_in(["{metrics.x:.2f} of {len(metrics.rows)}"], {"metrics": {"x": 0.5, "rows": [1]}}) \
        == ["0.50 of 1"]


def test_a_sentence_follows_the_measurement():
    data = {"run": {"diverged": True, "loss": None}}
    assert make_report.fill_in(['{"diverged" if run.diverged else "did not diverge"}'], data) == ["diverged"]
    assert make_report.fill_in(['{"-" if run.loss is None else format(run.loss, ".2f")}'], data) == ["-"]
    assert make_report.evaluate("not run.diverged", data) is False
    assert make_report.evaluate('"loss" in run', data) is True


def test_a_line_that_fills_in_to_nothing_is_left_out():
    lines = ["One.", '{"" if 1 else "x"}', "Two.", ""]
    assert make_report.fill_in(lines, {}) == ["One.", "Two.", ""]


def test_for_repeats_its_lines_per_item_and_if_keeps_them_only_when_true():
    lines = ["!for c in metrics.classes", "!let n = len(c)", "| {c} | {n} |", "!if n > 3", "long: {c}", "!end",
             "!end", "after"]
    assert make_report.fill_in(lines, {"metrics": {"classes": ["Cat", "Snow Leopard"]}}) == \
        ["| Cat | 3 |", "| Snow Leopard | 12 |", "long: Snow Leopard", "after"]


def test_an_unclosed_or_stray_block_names_its_line():
    with pytest.raises(make_report.ReportError, match=r"line 1: !for without its !end"):
        make_report.fill_in(["!for x in [1]", "x"], {})
    with pytest.raises(make_report.ReportError, match=r"line 2: !end without a !for or !if"):
        make_report.fill_in(["text", "!end"], {})


def test_an_error_inside_a_block_names_its_own_line():
    with pytest.raises(make_report.ReportError, match=r"^report\.md line 2: \{x\.nope\}"):
        make_report.fill_in(["!for x in rows", "{x.nope}", "!end"], {"rows": [{"a": 1}]})


def test_a_false_claim_stops_the_build(tmp_path, monkeypatch):
    source = tmp_path / "report.md"
    source.write_text("# Chapter\n\n!check metrics.parameters < 0\n\nText.\n")
    monkeypatch.setattr(make_report, "SOURCE", source)
    folder = write_submission(tmp_path, synthetic_metrics(RUN_A))
    with pytest.raises(make_report.ReportError, match=r"line 3: claim is false .*metrics\.parameters < 0"):
        make_report.build(tmp_path / "Report.pdf", results_dir=folder / "results")


def test_pick_finds_the_one_matching_row():
    data = {"bench": {"rows": [{"model": "ours", "ips": 3}, {"model": "ours+compile", "ips": 1}]}}
    assert make_report.evaluate('pick(bench.rows, model="ours+compile").ips', data) == 1
    with pytest.raises(make_report.ReportError, match="matched 0 rows"):
        make_report.evaluate('pick(bench.rows, model="nobody")', data)


def test_argmin_and_argmax_skip_what_was_not_measured():
    assert make_report.argmin([0.5, None, 0.2]) == 2 and make_report.argmax([None, 0.5, 0.2]) == 1
    assert make_report.argmin([None]) is None


# The repository's own report --------------------------------------------------------------------------------------

def test_committed_report_is_current():
    """Report.pdf was built from the current results, notes, text and builder: rebuild with
    python tools/make_report.py."""
    built_from = json.loads(make_report.BUILT_FROM.read_text())
    assert built_from["results_sha256"] == sha256(make_report.RESULTS / "metrics.json")
    current = make_report.input_digests(ROOT)
    stale = [name for name, digest in built_from["inputs"].items() if current.get(name) != digest]
    assert not stale, f"changed since Report.pdf was built: {stale}; run python tools/make_report.py"
    assert set(built_from["inputs"]) == set(current)
    assert built_from["report_sha256"] == sha256(make_report.DEFAULT_OUT)
