"""tools/make_report.py: the report is built from results/ alone, shows the student's name, refuses a missing number
or a false claim, and the committed Report.pdf is the one the current results give."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

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


def test_report_has_the_expected_length(report):
    path, pages = report
    assert len(pypdf.PdfReader(path).pages) == pages
    assert 8 <= pages <= 15


def test_title_page_shows_the_name_and_roll_number(report):
    title = pypdf.PdfReader(report[0]).pages[0].extract_text()
    assert NAME in title and ROLL in title


def test_cli_passes_the_names_on_and_records_only_the_default_report(tmp_path, monkeypatch):
    """The packager's contract: --name, --roll-number and --out; only the repository's own Report.pdf is recorded
    in report/built_from.json, so a copy built elsewhere cannot make a stale Report.pdf look current."""
    calls = []
    monkeypatch.setattr(make_report, "build", lambda out, name, roll: calls.append((out, name, roll)) or 9)
    monkeypatch.setattr(make_report, "write_built_from", lambda: calls.append("built_from"))
    assert make_report.main(["--name", NAME, "--roll-number", ROLL, "--out", str(tmp_path / "R.pdf")]) == 0
    assert calls == [(tmp_path / "R.pdf", NAME, ROLL)]
    assert make_report.main([]) == 0
    assert calls[1:] == [(make_report.DEFAULT_OUT, "[Your Name]", "[Roll Number]"), "built_from"]


def test_numbers_come_from_the_results(report):
    metrics = json.loads((make_report.RESULTS / "metrics.json").read_text())
    text = "".join(page.extract_text() for page in pypdf.PdfReader(report[0]).pages)
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
    data = {"bench": {"rows": [{"model": "ours", "ips": 3}, {"model": "peer", "ips": 1}]}}
    assert make_report.evaluate('pick(bench.rows, model="peer").ips', data) == 1
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
