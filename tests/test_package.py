"""tools/package_submission.py: the zip's names and layout, its notebook run against its renamed script, the
examiner's Readme, and each refusal.

Every test packages a copy of the repository in tmp_path (main/, beside a shared/data/animals/ of its own), so the
tests neither depend on nor touch the real results, report or dataset: the report builder is stubbed by one that
copies a small PDF written here and records its arguments. One test runs the real report builder.
The copy is its own submission folder: its results/metrics.json names the copied model's classes and sha256, and
its notes.md counts as written (which sections are blank is make_report.blank_notes's business, tested with the
report; here it is stubbed, but for one test).
The module's package (for Zoë, i21-0001) runs its notebook for real, every class's DDIM steps on one thread (about a minute
on the shared 2-core CPU); the other packagings skip that run.
"""
import dataclasses
import importlib.util
import json
import re
import shutil
import sys
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import nbclient
import nbformat
import pypdf
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import build_allcode  # noqa: E402
from conftest import cli_env  # noqa: E402
import package_submission as packager  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from make_results import sha256  # noqa: E402

FIRST, ROLL = "Zoë", "i21-0001"
FOLDER, ZIP = f"{FIRST}_{ROLL}_05", f"{FIRST}_{ROLL}_04.zip"
SCRIPT, ALLCODE = f"{ROLL}_05.py", f"{ROLL}_05_allCode.py"
NOTEBOOK = "test_single_sample.ipynb"
COPIED = ["rollNumber_05.py", NOTEBOOK, packager.README_TEMPLATE, packager.MODEL,
          "tools/build_allcode.py", "tools/package_submission.py"]
# Written out here, not taken from the packager, so a name dropped from its list fails the search of the zip.
OTHER_IMPLEMENTATIONS = ["diffusers", "denoising_diffusion_pytorch", "denoising-diffusion-pytorch", "unet2dmodel",
                         "improved_diffusion", "improved-diffusion", "guided_diffusion", "guided-diffusion",
                         "score_sde", "k_diffusion", "k-diffusion", "mindiffusion"]


def pdf_text_object(lines):
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    return "BT /F1 11 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in escaped) + " ET"


def tiny_pdf(*pages):
    """A PDF with one page per list of text lines, in Helvetica, so pypdf reads the lines back."""
    count = len(pages)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(count))}] /Count {count} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        stream = pdf_text_object(lines)
        objects += [f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    f"/Contents {5 + 2 * i} 0 R >>", f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"]
    out, offsets = "%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n"
    xref = "".join(f"{offset:010d} 00000 n \n" for offset in offsets)
    return (f"{out}xref\n0 {len(objects) + 1}\n0000000000 65535 f \n{xref}trailer\n<< /Root 1 0 R /Size "
            f"{len(objects) + 1} >>\nstartxref\n{len(out)}\n%%EOF\n").encode("latin-1")


def stub_report(monkeypatch):
    """Stands in for make_report.build: copies the submission's Report.pdf to the given path; returns the calls,
    (submission folder, out, first name, roll number, data folder) each."""
    calls = []

    def build(submission_dir, out, name, roll_number, data_dir=None):
        calls.append((submission_dir, out, name, roll_number, data_dir))
        shutil.copy(Path(submission_dir) / "Report.pdf", out)
    monkeypatch.setattr(packager.make_report, "build", build)
    return calls


def write_metrics(folder, classes=None, model_sha256=None):
    """results/metrics.json for the run that made folder's model: its classes and its sha256 unless given."""
    model = folder / packager.MODEL
    if classes is None:
        classes = torch.load(model, map_location="cpu", weights_only=True)["class_names"]
    run = {"model_sha256": model_sha256 or sha256(model), "profile": "test", "seed": 123456}
    config = dataclasses.asdict(ddpm.Config(classes=list(classes), seed=123456, save_every=836, keep_checkpoints=0,
                                            lr=3e-3, data_dir="/home/zoe/animals"))
    (folder / "results").mkdir(exist_ok=True)
    (folder / packager.METRICS).write_text(json.dumps({"classes": classes, "run": run, "config": config,
                                                       "chosen": {"step": 8354}, "fid": 1.0}) + "\n")


def copy_repo(dest):
    """The files a submission is made from, a report and results of its own, and an empty dataset beside it."""
    for name in COPIED:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    (dest / "Report.pdf").write_bytes(tiny_pdf(["Results"], ["The forward process"]))
    write_metrics(dest)
    (dest / packager.NOTES).write_text("## The data\n\nFive classes, 100 photos each.\n")
    (dest.parent / "shared" / "data" / "animals").mkdir(parents=True)
    return dest


def stub_blank_notes(monkeypatch, *titles):
    """make_report.blank_notes answers titles (none: every section written); returns the paths it was asked
    about."""
    asked = []
    monkeypatch.setattr(packager.make_report, "blank_notes", lambda path: asked.append(path) or list(titles))
    return asked


def add_photo(repo, name="Cat/cat_01.jpeg", data=b"\xff\xd8\xff\xe0 a dataset photo"):
    photo = repo.parent / "shared" / "data" / "animals" / name
    photo.parent.mkdir(parents=True, exist_ok=True)
    photo.write_bytes(data)
    return photo


def package(repo, *options, first=FIRST, roll=ROLL):
    return packager.main(["--first-name", first, "--roll-number", roll, "--root", str(repo), "--out-dir",
                          str(repo.parent / "dist"), *options])


def texts_of(folder):
    """(file, lower-case text) of every file, bytes as Latin-1; the PDF's also as pypdf reads it."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        yield path.name, path.read_bytes().decode("latin-1").lower()
        if path.suffix == ".pdf":
            yield path.name, " ".join(page.extract_text() for page in pypdf.PdfReader(path).pages).lower()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The package for Zoë / i21-0001, its notebook run for real: the repository copy, the unzipped folder, the
    zip's names and the packager's stdout and stderr."""
    base = tmp_path_factory.mktemp("package")
    repo = copy_repo(base / "main")
    add_photo(repo)
    out, err = StringIO(), StringIO()  # capsys is per test; this fixture is per module
    with pytest.MonkeyPatch.context() as monkeypatch, redirect_stdout(out), redirect_stderr(err):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the kernel inherits them: one thread on a busy CPU
            monkeypatch.setenv(name, cli_env()[name])
        stub_blank_notes(monkeypatch)
        calls = stub_report(monkeypatch)
        rc = package(repo)
    assert rc == 0, err.getvalue()
    with zipfile.ZipFile(base / "dist" / ZIP) as zf:
        names = zf.namelist()
        zf.extractall(base / "unzipped")
    return SimpleNamespace(repo=repo, folder=base / "unzipped" / FOLDER, names=names, out=out.getvalue(),
                           err=err.getvalue(), report_calls=calls)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fresh copy of the repository for a test that breaks a rule; its notebook is not run (a minute saved)."""
    monkeypatch.setattr(packager, "run_notebook", lambda folder: 0.0)
    stub_blank_notes(monkeypatch)
    return copy_repo(tmp_path / "main")


@pytest.fixture
def report_calls(monkeypatch):
    return stub_report(monkeypatch)


def refusal(repo, capsys, *options, **names):
    """(the violation lines, whether a zip appeared) after packaging a repository that breaks a rule."""
    assert package(repo, *options, **names) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("refusing to build")
    return lines[1:], any((repo.parent / "dist").glob("*.zip"))


# The package -----------------------------------------------------------------------------------------------------

def test_zip_is_named_04_and_holds_one_folder_named_05(built):
    assert (built.repo.parent / "dist" / ZIP).is_file()
    assert {name.split("/")[0] for name in built.names} == {FOLDER}


def test_zip_root_holds_exactly_the_submission(built):
    assert sorted(p.name for p in built.folder.iterdir()) == sorted(
        [SCRIPT, ALLCODE, NOTEBOOK, "Report.pdf", "Readme.txt", "saved_models"])
    assert (built.folder / packager.MODEL).read_bytes() == (built.repo / packager.MODEL).read_bytes()


def test_script_is_the_original_with_its_own_name_rewritten(built):
    shipped = (built.folder / SCRIPT).read_text()
    assert shipped == (built.repo / "rollNumber_05.py").read_text().replace("rollNumber_05", f"{ROLL}_05")


def test_allcode_holds_the_renamed_script_and_the_notebook_only(built):
    text = (built.folder / ALLCODE).read_text()
    headers = [line for line in text.splitlines() if line.startswith("# ==== file: ")]
    assert headers == [f"# ==== file: {SCRIPT} ====", f"# ==== file: {NOTEBOOK} ===="]
    compile(text, ALLCODE, "exec")


def test_notebook_loads_the_hyphenated_script_with_importlib(built):
    code = "\n".join(source for _, source in build_allcode.notebook_code_cells(built.folder / NOTEBOOK))
    assert f'importlib.import_module("{ROLL}_05")' in code and "rollNumber_05" not in code


def test_notebook_is_saved_with_its_outputs_and_the_repository_copy_is_not(built):
    outputs = [output for cell in nbformat.read(built.folder / NOTEBOOK, as_version=4).cells
               if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 2  # the steps and the final image
    assert not [output for output in outputs if output.output_type == "error"]
    repository_copy = nbformat.read(ROOT / NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in repository_copy.cells)


def test_notebook_runs_against_the_renamed_script_in_the_unpacked_folder(built):
    """The unpacked folder alone imports its script and loads its model (the packager ran every step already)."""
    notebook = nbformat.read(built.folder / NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    notebook.cells = code[:2] + [nbformat.v4.new_code_cell("print(ddpm.__file__)\nprint(DEFAULT_CHECKPOINT)")]
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(built.folder)}})
    client.execute(env=cli_env())
    printed = notebook.cells[-1].outputs[0]["text"].split()
    assert printed == [str(built.folder / SCRIPT), str(built.folder / packager.MODEL)]


def test_unpacked_zip_names_no_other_diffusion_implementation(built):
    found = [(name, other) for name, text in texts_of(built.folder) for other in OTHER_IMPLEMENTATIONS
             if other in text]
    assert found == []


def test_readme_is_written_for_the_examiner(built):
    text = (built.folder / "Readme.txt").read_text()
    for needed in ("pip install torch torchvision pillow matplotlib jupyter", f"jupyter notebook {NOTEBOOK}",
                   f"python {SCRIPT} sample", f"python {SCRIPT} train --data-dir PATH", ALLCODE, "Report.pdf",
                   "saved_models/ddpm_animals.pt"):
        assert needed in text
    for outside in ("rollNumber_05", "tools/", "tests/", "results/", "bench", "diffusers", "requirements"):
        assert outside not in text


def test_readme_names_the_run_its_seed_and_the_command_that_made_the_model(built):
    text = (built.folder / "Readme.txt").read_text()
    classes = json.loads((built.repo / packager.METRICS).read_text())["classes"]
    assert f"Classes, in label order: {', '.join(classes)}. Training seed: 123456." in text
    assert "weights at step 8,354 of this run" in text and "step_00008354.pt" in text
    [command] = [line for line in text.splitlines() if line.startswith(f"python {SCRIPT} train --data-dir DATA")]
    assert command == (f"python {SCRIPT} train --data-dir DATA --classes {','.join(classes)} --lr 0.003 "
                       f"--seed 123456 --save-every 836 --keep-checkpoints 0")
    assert f"python {SCRIPT} forward --data-dir DATA" in text and f"python {SCRIPT} evaluate --data-dir DATA" in text


def test_readme_gives_the_main_training_options(built):
    text = (built.folder / "Readme.txt").read_text()
    assert all(f"--{option} " in text for option in ("classes", "image-size", "epochs", "batch-size", "lr",
                                                     "out-dir"))
    assert "passes over the photos" in text


def test_readme_options_all_exist_in_the_script(built, monkeypatch):
    """Every option the examiner's Readme names is one that the packed script's parser takes."""
    spec = importlib.util.spec_from_file_location("packed_script", built.folder / SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    helps = StringIO()
    for command in ("train", "sample", "forward", "evaluate"):
        with redirect_stdout(helps), pytest.raises(SystemExit):
            script.main([command, "--help"])
    known = set(re.findall(r"--[a-z][a-z-]*", helps.getvalue()))
    options = set(re.findall(r"--[a-z][a-z-]*", (built.folder / "Readme.txt").read_text())) - {"--help"}
    assert options and options - known == set()


def test_report_builder_is_asked_for_the_names_the_submission_and_the_dataset(built):
    [(submission, out, name, roll, data)] = built.report_calls
    assert (submission, out.name, name, roll) == (built.repo, "Report.pdf", FIRST, ROLL)
    assert data == built.repo.parent / "shared" / "data" / "animals"


def test_one_line_points_out_the_04_and_05_of_the_assignment_text(built):
    [line] = [line for line in built.out.splitlines() if line.startswith("note:")]
    assert "_04.zip" in line and "_05/" in line and f"this zip is {ZIP}" in line and "--zip-number" in line


# Options and fallbacks -------------------------------------------------------------------------------------------

def test_zip_number_05_names_the_zip_like_its_folder(repo, capsys, report_calls):
    assert package(repo, "--zip-number", "05") == 0
    with zipfile.ZipFile(repo.parent / "dist" / f"{FOLDER}.zip") as zf:
        assert {name.split("/")[0] for name in zf.namelist()} == {FOLDER}


def test_identifier_roll_number_gets_a_plain_import(repo, capsys, report_calls):
    assert package(repo, first="Ada", roll="Ab12") == 0
    with zipfile.ZipFile(repo.parent / "dist" / "Ada_Ab12_04.zip") as zf:
        notebook = zf.read("Ada_Ab12_05/test_single_sample.ipynb").decode()
    assert "from Ab12_05 import" in notebook and "importlib" not in notebook


@pytest.mark.parametrize("dataset", ["missing", "empty"])
def test_without_dataset_photos_a_note_says_copies_were_not_checked(repo, capsys, report_calls, dataset):
    if dataset == "missing":
        shutil.rmtree(repo.parent / "shared")
    assert package(repo) == 0
    dataset_dir = repo.parent / "shared" / "data" / "animals"
    assert report_calls[0][4] == (None if dataset == "missing" else dataset_dir)  # the report shows photos only
    [line] = [line for line in capsys.readouterr().out.splitlines() if "dataset photos" in line]
    assert line.startswith("note:") and "not checked" in line


def test_with_dataset_photos_no_note_is_printed(built):
    assert "dataset photos" not in built.out


def test_a_given_data_dir_is_the_one_checked_for_copied_photos(repo, capsys, report_calls, tmp_path):
    photo = tmp_path / "elsewhere" / "Cat" / "cat.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"\xff\xd8\xff\xe0 another photo")
    shutil.copy(photo, repo / "saved_models" / "cat.png")
    lines, _ = refusal(repo, capsys, "--data-dir", str(tmp_path / "elsewhere"))
    assert lines == ["dataset image in the package: saved_models/cat.png (a copy of a photo in the dataset)"]


@pytest.mark.parametrize("flag", ["--data-dir", "--submission-dir"])
def test_a_missing_folder_is_a_usage_error(repo, capsys, flag):
    with pytest.raises(SystemExit) as exit_:
        package(repo, flag, str(repo / "no-such-folder"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{flag} " in err and "no such folder" in err


def test_submission_dir_supplies_the_model_results_report_and_notes(repo, capsys, tmp_path, monkeypatch):
    """The code comes from --root, the student's run from --submission-dir; nothing of the run is read at the
    root."""
    submission = tmp_path / "mine"
    submission.mkdir()
    for name in (packager.MODELS, "results", "Report.pdf", packager.NOTES):
        shutil.move(repo / name, submission / name)
    asked, calls = stub_blank_notes(monkeypatch), stub_report(monkeypatch)
    assert package(repo, "--submission-dir", str(submission)) == 0, capsys.readouterr().err
    with zipfile.ZipFile(repo.parent / "dist" / ZIP) as zf:
        assert zf.read(f"{FOLDER}/{packager.MODEL}") == (submission / packager.MODEL).read_bytes()
    assert calls[0][0] == submission and asked == [submission / packager.NOTES]


def test_a_report_that_cannot_be_built_is_one_line(repo, capsys, monkeypatch):
    def fails(*args):
        raise packager.make_report.ReportError("report.md line 9: 'dict object' has no attribute 'x'")
    monkeypatch.setattr(packager.make_report, "build", fails)
    lines, zipped = refusal(repo, capsys)
    assert lines == [f"{packager.REPORT} cannot be built: report.md line 9: 'dict object' has no attribute 'x'"]
    assert not zipped


@pytest.mark.skipif(not (ROOT / packager.METRICS).exists(), reason="results/metrics.json is not built yet")
def test_real_report_builder_puts_the_names_on_the_title_page(tmp_path):
    """The contract with tools/make_report.py, whose report's content is tests/test_report.py's business."""
    packager.stage_report(ROOT, tmp_path, packager.Submission(FIRST, ROLL), None)
    title_page = pypdf.PdfReader(tmp_path / packager.REPORT).pages[0].extract_text()
    assert FIRST in title_page and ROLL in title_page


# Names -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("first, roll", [("Zoë", "i21-0001"), ("Mary-Jane", "21I-0001"), ("Muhammad", "21L-1234"),
                                         ("Ada", "21L1234")])
def test_accepts_unicode_first_names_and_hyphenated_roll_numbers(first, roll):
    assert packager.name_violations(packager.Submission(first, roll)) == []


@pytest.mark.parametrize("first, roll, bad, hint", [
    ("Mary Jane", ROLL, "first name", "try Mary-Jane"), ("", ROLL, "first name", "e.g. Ada"),
    ("Ada\t", ROLL, "first name", "try Ada"), ("A" * 65, ROLL, "first name", "shorten it"),
    (FIRST, "21/L", "roll number", "try 21-L"), (FIRST, "i21.0001", "roll number", "try i21-0001"),
    (FIRST, "21L:12", "roll number", "try 21L-12")])
def test_refuses_a_name_that_breaks_a_file_name_with_a_suggestion(repo, capsys, first, roll, bad, hint):
    lines, zipped = refusal(repo, capsys, first=first, roll=roll)
    assert len(lines) == 1 and lines[0].startswith(f"invalid {bad}") and lines[0].endswith(hint) and not zipped


def test_a_decomposed_first_name_is_written_composed(repo, capsys, report_calls):
    assert package(repo, first="Zoe\u0308") == 0  # e + combining diaeresis, as some keyboards type it
    assert (repo.parent / "dist" / ZIP).is_file()


# Refusals --------------------------------------------------------------------------------------------------------

def test_refuses_metrics_that_cannot_fill_the_readme(repo, capsys):
    metrics = json.loads((repo / packager.METRICS).read_text())
    del metrics["chosen"]  # the format before the checkpoint choice was recorded
    (repo / packager.METRICS).write_text(json.dumps(metrics))
    lines, zipped = refusal(repo, capsys)
    assert len(lines) == 1 and not zipped
    assert lines[0].startswith(f"{packager.README_TEMPLATE} cannot be filled in from {packager.METRICS}")
    assert lines[0].endswith(packager.REDO)


def test_refuses_a_missing_file(repo, capsys):
    (repo / packager.README_TEMPLATE).unlink()
    lines, zipped = refusal(repo, capsys)
    assert lines == [f"missing file: {packager.README_TEMPLATE}"] and not zipped


def test_other_implementations_are_matched_ignoring_case_and_separators():
    text = "from diffusers import UNet2DModel; Denoising-Diffusion-PyTorch, k_diffusion, minDiffusion, score-sde"
    assert [m.group(0) for m in packager.OTHER_IMPLEMENTATION.finditer(text)] == [
        "diffusers", "UNet2DModel", "Denoising-Diffusion-PyTorch", "k_diffusion", "minDiffusion", "score-sde"]
    assert not packager.OTHER_IMPLEMENTATION.search("Improved Denoising Diffusion Probabilistic Models (2021)")


def add_markdown_cell(repo, text):
    notebook = json.loads((repo / NOTEBOOK).read_text())
    notebook["cells"].append({"cell_type": "markdown", "id": "added", "metadata": {}, "source": [text]})
    (repo / NOTEBOOK).write_text(json.dumps(notebook, indent=1))


@pytest.mark.parametrize("where, expected", [
    ("script", [f"{SCRIPT} line", f"{ALLCODE} line"]), ("notebook", [f"{NOTEBOOK} line"]),
    ("readme", ["Readme.txt line"]), ("report", ["Report.pdf page 2 line 2"])])
def test_refuses_another_implementation_named_in_a_packed_file(repo, capsys, report_calls, where, expected):
    if where == "script":
        with open(repo / "rollNumber_05.py", "a") as f:
            f.write("# as in diffusers' UNet2DModel\n")
    elif where == "notebook":
        add_markdown_cell(repo, "Compare with k-diffusion.")
    elif where == "readme":
        with open(repo / packager.README_TEMPLATE, "a") as f:
            f.write("Faster than denoising-diffusion-pytorch.\n")
    else:
        (repo / "Report.pdf").write_bytes(tiny_pdf(["Results"], ["Table 7", "Against diffusers (same widths)"]))
    lines, zipped = refusal(repo, capsys)
    assert lines and all(line.startswith("names another diffusion implementation") for line in lines)
    assert all(any(place in line for line in lines) for place in expected) and not zipped


def test_a_report_naming_another_implementation_is_refused_before_the_notebook_runs(repo, capsys, monkeypatch,
                                                                                    report_calls):
    runs = []
    monkeypatch.setattr(packager, "run_notebook", runs.append)
    (repo / "Report.pdf").write_bytes(tiny_pdf(["Compared with diffusers"]))
    refusal(repo, capsys)
    assert runs == []


@pytest.mark.parametrize("code, reason", [
    ("raise ValueError('no animal today')", "fails when run in the package: ValueError: no animal today"),
    ("print(DEFAULT_CHECKPOINT)", "shows no image when run in the package: it must draw the animals")])
def test_refuses_a_notebook_that_fails_or_draws_nothing_in_the_package(repo, capsys, monkeypatch, code, reason):
    monkeypatch.undo()  # the real notebook run, on a one-cell notebook
    stub_blank_notes(monkeypatch)
    stub_report(monkeypatch)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"from rollNumber_05 import DEFAULT_CHECKPOINT\n{code}")])
    nbformat.write(notebook, repo / NOTEBOOK)
    lines, zipped = refusal(repo, capsys)
    assert lines == [f"{NOTEBOOK} {reason}"] and not zipped


@pytest.mark.parametrize("name", ["__pycache__", "scratch.py"])
def test_refuses_a_file_the_notebook_leaves_in_the_package(repo, capsys, monkeypatch, report_calls, name):
    """The zip's root holds exactly the two Python files and the rest of the submission."""
    monkeypatch.setattr(packager, "run_notebook", lambda folder: shutil.copy(folder / SCRIPT, folder / name)
                        if name.endswith(".py") else (folder / name).mkdir())
    lines, zipped = refusal(repo, capsys)
    assert lines == [f"not part of the submission, in the package: {name}"] and not zipped


def test_refuses_a_jpeg_in_saved_models(repo, capsys, report_calls):
    (repo / "saved_models" / "preview.JPG").write_bytes(b"\xff\xd8\xff\xe0 not a real photo")
    lines, zipped = refusal(repo, capsys)
    assert lines == ["dataset image in the package: saved_models/preview.JPG (no .jpg/.jpeg may be shipped)"]
    assert not zipped


def test_refuses_a_renamed_copy_of_a_dataset_photo(repo, capsys, report_calls):
    shutil.copy(add_photo(repo), repo / "saved_models" / "cat.png")
    lines, zipped = refusal(repo, capsys)
    assert lines == ["dataset image in the package: saved_models/cat.png (a copy of a photo in the dataset)"]
    assert not zipped


def test_lists_every_violation_one_per_line(repo, capsys, monkeypatch):
    (repo / packager.MODEL).unlink()
    stub_blank_notes(monkeypatch, "The data")
    lines, _ = refusal(repo, capsys, roll="21 L")
    assert [line.split(":")[0].split(" ")[0] for line in lines] == ["invalid", "missing", "notes.md"]


# Model, results and report: one run ------------------------------------------------------------------------------

CLASSES = ["Bear", "Cat", "Cow", "Dog", "Elephant"]
OTHER_CLASSES = ["Dolphin", "Giraffe", "Panda", "Tiger", "Zebra"]


def tiny_model(path, classes=CLASSES, step=1):
    """A checkpoint with the keys the script saves, small enough to write in every test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": {"classes": classes}, "class_names": classes, "step": step,
                "ema": {"out.weight": torch.zeros(2)}}, path)


@pytest.fixture
def submission(tmp_path):
    """A submission folder whose model and results/metrics.json come from one run."""
    tiny_model(tmp_path / packager.MODEL)
    write_metrics(tmp_path)
    return tmp_path


def run_lines(folder):
    return packager.run_violations(folder)


def test_a_model_with_its_own_metrics_is_consistent(submission):
    assert run_lines(submission) == []


def test_refuses_a_model_whose_classes_differ_from_the_metrics(submission):
    write_metrics(submission, classes=OTHER_CLASSES)
    assert run_lines(submission) == [
        f"{packager.MODEL} has classes Bear, Cat, Cow, Dog, Elephant but {packager.METRICS} has Dolphin, Giraffe, "
        f"Panda, Tiger, Zebra: {packager.REDO}"]


def test_refuses_classes_in_another_order(submission):
    """A class's label is its index, so the same names in another order are another model."""
    write_metrics(submission, classes=CLASSES[::-1])
    [line] = run_lines(submission)
    assert line.startswith(f"{packager.MODEL} has classes Bear, Cat") and f"but {packager.METRICS} has Elephant" in line


def test_refuses_a_model_the_metrics_were_not_measured_on(submission):
    tiny_model(submission / packager.MODEL, step=2)  # trained on after the evaluation: same classes, other bytes
    assert run_lines(submission) == [f"{packager.MODEL} is not the model {packager.METRICS} was measured on (its "
                                     f"sha256 is not the run's model_sha256): {packager.REDO}"]


def test_refuses_metrics_without_classes_or_run(submission):
    (submission / packager.METRICS).write_text('{"fid": 1.0}\n')  # the format before runs were recorded
    [line] = run_lines(submission)
    assert line.startswith(f"{packager.METRICS} has no \"classes\" and \"run\"") and packager.MODEL in line
    assert line.endswith(packager.REDO)


def test_refuses_a_model_file_that_is_not_a_checkpoint(submission):
    (submission / packager.MODEL).write_bytes(b"not a checkpoint")
    write_metrics(submission, classes=CLASSES)
    [line] = run_lines(submission)
    assert line.startswith(f"{packager.MODEL} is not a checkpoint") and packager.METRICS in line


def test_each_disagreement_is_one_line_naming_both_files_and_the_fix(repo, capsys):
    write_metrics(repo, classes=OTHER_CLASSES[::-1], model_sha256="0" * 64)
    lines, zipped = refusal(repo, capsys)
    pairs = [(packager.MODEL, packager.METRICS), (packager.MODEL, packager.METRICS)]
    assert len(lines) == 2 and not zipped
    assert all(a in line and b in line and line.endswith(packager.REDO) for line, (a, b) in zip(lines, pairs))
    assert packager.REDO == "rerun python tools/make_submission.py (it redoes only what changed)"


# Notes -----------------------------------------------------------------------------------------------------------

BLANK_NOTES = packager.make_report.blank_notes  # the real one, kept before any test stubs it

def test_refuses_blank_notes_naming_each_section(repo, capsys, monkeypatch):
    asked = stub_blank_notes(monkeypatch, "The data", "Samples")
    lines, zipped = refusal(repo, capsys)
    assert lines == ["notes.md: write your reading under: The data; Samples"] and not zipped
    assert asked == [repo / packager.NOTES]


def test_refuses_a_missing_notes_file_naming_every_section(repo, capsys, monkeypatch):
    monkeypatch.setattr(packager.make_report, "blank_notes", BLANK_NOTES)  # on the repository's report.md
    sections = BLANK_NOTES(repo / "no-such-notes.md")
    (repo / packager.NOTES).unlink()
    lines, zipped = refusal(repo, capsys)
    assert sections and lines == [f"notes.md: write your reading under: {'; '.join(sections)} (notes.md is missing: "
                                  f"python tools/make_submission.py writes it)"] and not zipped


@pytest.mark.parametrize("notes", ["blank", "missing"])
def test_allow_blank_notes_builds_with_a_loud_warning(repo, capsys, monkeypatch, report_calls, notes):
    stub_blank_notes(monkeypatch, "The data", "Samples")
    if notes == "missing":
        (repo / packager.NOTES).unlink()
    assert package(repo, "--allow-blank-notes") == 0
    err = capsys.readouterr().err
    assert "WARNING: notes.md: write your reading under: The data; Samples" in err and "BLANK" in err
    assert (repo.parent / "dist" / ZIP).is_file()
