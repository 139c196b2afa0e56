"""tools/make_report.py: the report is built from results/ alone, shows the student's name, explains results and not
engineering, refuses a missing number or a false claim, noises a real photo only when given the data, and the
committed Report.pdf is the one the current results give."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import numpy
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_report  # noqa: E402

pypdf = pytest.importorskip("pypdf")

NAME, ROLL = "Ada Lovelace", "21L-1234"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The full report with a name and roll number, built into a temporary folder: (its path, the page count)."""
    out = tmp_path_factory.mktemp("report") / "Report.pdf"
    pages = make_report.build(out, NAME, ROLL)
    return out, pages


def results_copy(tmp_path):
    """A copy of results/ that a test may change."""
    return Path(shutil.copytree(make_report.RESULTS, tmp_path / "results"))


def report_text(path):
    return "".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


def test_report_has_the_expected_length(report):
    path, pages = report
    assert len(pypdf.PdfReader(path).pages) == pages
    assert 8 <= pages <= 10


def test_report_explains_results_not_engineering(report):
    """Speed, other implementations and build details live in BENCHMARKS.md; a submission that cites another
    diffusion implementation scores zero."""
    text = report_text(report[0]).lower()
    for word in ["diffusers", "unet2dmodel", "peer", "sha256", "tflop", "gflop", "torch.compile", "cuda graph",
                 "threads", "make_report", "pip install"]:
        assert word not in text, word


def test_title_page_shows_the_name_and_roll_number(report):
    title = pypdf.PdfReader(report[0]).pages[0].extract_text()
    assert NAME in title and ROLL in title


def test_cli_passes_the_names_on_and_records_only_the_default_report(tmp_path, monkeypatch):
    """The packager's contract: --name, --roll-number and --out; only the repository's own Report.pdf is recorded
    in report/built_from.json, so a copy built elsewhere cannot make a stale Report.pdf look current."""
    calls = []
    monkeypatch.setattr(make_report, "build", lambda out, name, roll, data_dir: calls.append((out, name, roll)) or 9)
    monkeypatch.setattr(make_report, "write_built_from", lambda: calls.append("built_from"))
    assert make_report.main(["--name", NAME, "--roll-number", ROLL, "--out", str(tmp_path / "R.pdf")]) == 0
    assert calls == [(tmp_path / "R.pdf", NAME, ROLL)]
    assert make_report.main([]) == 0
    assert calls[1:] == [(make_report.DEFAULT_OUT, "[Your Name]", "[Roll Number]"), "built_from"]


def test_a_report_with_photos_is_never_the_repository_copy(capsys):
    with pytest.raises(SystemExit):
        make_report.main(["--data-dir", str(ROOT)])
    assert "--out" in capsys.readouterr().err


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
    """A data folder with one grey photo per class of the shipped model, but the Zebra photo (the one the
    forward-process figure noises) is red with a white stripe: easy to find in a figure."""
    data = tmp_path_factory.mktemp("data")
    for name in json.loads((make_report.RESULTS / "metrics.json").read_text())["config"]["classes"]:
        (data / name).mkdir()
        Image.new("RGB", (80, 60), (128, 128, 128)).save(data / name / "a.png")
    photo = Image.new("RGB", (80, 60), RED)
    photo.paste((255, 255, 255), (0, 25, 80, 35))
    photo.save(data / make_report.FORWARD_CLASS / "a.png")
    return data


def test_with_the_data_the_forward_figure_noises_a_training_photo(photos, tmp_path):
    cfg = json.loads((make_report.RESULTS / "metrics.json").read_text())["config"]
    facts = make_report.forward_from_photo(photos, cfg, tmp_path)
    assert red_area(Image.open(tmp_path / make_report.FORWARD_FIGURE)) > 500  # the photo at t = 0
    assert "photo" in facts["image"] and abs(facts["x_T_mean"]) < 0.1 and abs(facts["x_T_std"] - 1) < 0.1


def test_the_report_built_with_the_data_shows_the_photos_and_the_committed_one_does_not(photos, tmp_path, report):
    def red_in_figures(path):
        return max(red_area(img.image) for page in pypdf.PdfReader(path).pages for img in page.images)

    pages = make_report.build(tmp_path / "Report.pdf", NAME, ROLL, data_dir=photos)
    assert 8 <= pages <= 10
    assert red_in_figures(tmp_path / "Report.pdf") > 500
    assert red_in_figures(report[0]) < 50  # a noise pixel drawn large makes a speck of red; the photo, hundreds
    with_photos, committed = report_text(tmp_path / "Report.pdf"), report_text(report[0])
    assert "Zebra photo" in with_photos and "Zebra photo" not in committed
    assert "as the model sees them" in with_photos and "as the model sees them" not in committed


def test_numbers_come_from_the_results(report):
    metrics = json.loads((make_report.RESULTS / "metrics.json").read_text())
    text = report_text(report[0])
    assert f"{metrics['parameters']:,}" in text
    assert f"{metrics['training']['images_seen']:,}" in text


def test_a_missing_metrics_key_stops_the_build_and_names_it(tmp_path):
    results = results_copy(tmp_path)
    metrics = json.loads((results / "metrics.json").read_text())
    del metrics["training"]["final_loss"]
    (results / "metrics.json").write_text(json.dumps(metrics))
    missing = r"report\.md line \d+: \{tr\.final_loss:\.4f\}: no 'final_loss' in tr \(keys there: device"
    with pytest.raises(make_report.ReportError, match=missing):
        make_report.build(tmp_path / "Report.pdf", results_dir=results)
    assert not (tmp_path / "Report.pdf").exists()


def test_a_false_claim_stops_the_build(tmp_path, monkeypatch):
    source = tmp_path / "report.md"
    source.write_text("# Chapter\n\n!check metrics.parameters < 0\n\nText.\n")
    monkeypatch.setattr(make_report, "SOURCE", source)
    with pytest.raises(make_report.ReportError, match=r"line 3: claim is false .*metrics\.parameters < 0"):
        make_report.build(tmp_path / "Report.pdf")


def test_a_float_needs_a_format():
    with pytest.raises(make_report.ReportError, match="give it a format"):
        make_report.fill_in(["{metrics.x}"], {"metrics": {"x": 0.5}})
    assert make_report.fill_in(["{metrics.x:.2f} of {len(metrics.rows)}"], {"metrics": {"x": 0.5, "rows": [1]}}) \
        == ["0.50 of 1"]


def test_pick_finds_the_one_matching_row():
    data = {"bench": {"rows": [{"model": "ours", "ips": 3}, {"model": "ours+compile", "ips": 1}]}}
    assert make_report.evaluate('pick(bench.rows, model="ours+compile").ips', data) == 1
    with pytest.raises(make_report.ReportError, match="matched 0 rows"):
        make_report.evaluate('pick(bench.rows, model="nobody")', data)


def test_committed_report_is_current():
    """Report.pdf was built from the current results, text and builder: rebuild with python tools/make_report.py."""
    built_from = json.loads(make_report.BUILT_FROM.read_text())
    assert built_from["results_sha256"] == sha256(make_report.RESULTS / "metrics.json")
    stale = [name for name, digest in built_from["inputs"].items() if sha256(ROOT / name) != digest]
    assert not stale, f"changed since Report.pdf was built: {stale}; run python tools/make_report.py"
    expected = {p.relative_to(ROOT).as_posix() for p in make_report.input_files(make_report.RESULTS)}
    assert set(built_from["inputs"]) == expected
    assert built_from["report_sha256"] == sha256(make_report.DEFAULT_OUT)
