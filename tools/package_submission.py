"""Builds the submission: NAME_ROLL_04.zip, holding one folder NAME_ROLL_05/ with the renamed files.

    python tools/package_submission.py --first-name Ada --roll-number i21-0001 [--submission-dir DIR]
        [--data-dir PATH] [--out-dir dist] [--allow-blank-notes]

The assignment text names the zip FirstName_RollNumber_04.zip and its folder FirstName_RollNumber_05; the zip
follows the text (--zip-number 05 changes its number). The folder holds exactly ROLL_05.py (rollNumber_05.py, its
mentions of its own name rewritten), ROLL_05_allCode.py, test_single_sample.ipynb (importing ROLL_05, run in the
folder and saved with its outputs), Report.pdf (built anew from DIR's results and notes, with the name and roll
number and, given the dataset, its photos), Readme.txt (report/Readme_submission.txt filled in with the run) and
DIR's saved_models/. The code comes from the repository (--root), the run from DIR (tools/make_submission.py's
folder): saved_models/ddpm_animals.pt (a checkpoint with "class_names"), notes.md and results/metrics.json, with
"classes", "config", "chosen": {"step": ...} and "run": {"model_sha256": ..., "seed": ...}.

It refuses, listing every violation one per line and exiting 1, where a name cannot stand in a file name, a file is
missing, the model is not the one results/metrics.json was measured on, notes.md has blank sections (unless
--allow-blank-notes), the report or the notebook fails, the notebook shows no image, or the package would hold
anything else, a dataset photo, or a mention of another diffusion implementation.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import jinja2
    import make_report  # builds the report and reads notes.md
    import nbclient
    import nbformat
    import pypdf
except ImportError as missing:
    sys.exit(f"error: the packager needs {missing.name}: pip install -r requirements-dev.txt")

import build_allcode as allcode  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from make_results import sha256  # noqa: E402
from make_submission import as_flags  # noqa: E402

SCRIPT, NOTEBOOK = allcode.SCRIPT_NAME, allcode.NOTEBOOK_NAME
README, REPORT, NOTES = "Readme.txt", "Report.pdf", "notes.md"
README_TEMPLATE = "report/Readme_submission.txt"  # the examiner's Readme; the repository's Readme.txt is the kit's
MODELS, MODEL = "saved_models", "saved_models/ddpm_animals.pt"  # the script's DEFAULT_CHECKPOINT
METRICS = "results/metrics.json"
MAKE_SUBMISSION = "tools/make_submission.py"
REDO = f"rerun python {MAKE_SUBMISSION} (it redoes only what changed)"  # the fix for a submission out of step
PHOTO_SUFFIXES = {".jpg", ".jpeg"}  # the dataset is JPEG; figures are PNG, so any JPEG is suspect
TEXT_SUFFIXES = {".py", ".ipynb", ".txt", ".md", ".json"}
ZIP_NUMBER = "04"  # the assignment text's number for the zip (its folder is _05)
NAME_LENGTH = 64
# Other diffusion implementations. The assignment forbids possessing any implementation but one's own (plagiarism
# scores zero), so nothing packed may import, cite or name one. Matched ignoring case, "_" also matching "-" or
# nothing; papers (Improved Denoising Diffusion ...) are not implementations and stay citable.
OTHER_IMPLEMENTATIONS = ("diffusers", "denoising_diffusion_pytorch", "UNet2DModel", "improved_diffusion",
                         "guided_diffusion", "score_sde", "k_diffusion", "minDiffusion")
OTHER_IMPLEMENTATION = re.compile(
    r"(?<![a-z0-9])(" + "|".join(re.escape(name).replace("_", "[-_]?") for name in OTHER_IMPLEMENTATIONS)
    + r")(?![a-z0-9])", re.IGNORECASE)
NOTEBOOK_TIMEOUT = 1800  # seconds per cell: every class's DDIM steps on a slow CPU, with room to spare


class PackagingError(Exception):
    """A step that failed for a reason the user can fix; one line, listed with the violations."""


@dataclass(frozen=True)
class Submission:
    """The names the assignment derives from the student's first name and roll number."""
    first_name: str
    roll_number: str
    zip_number: str = ZIP_NUMBER

    @property
    def module(self):
        return f"{self.roll_number}_05"

    @property
    def script(self):
        return f"{self.module}.py"

    @property
    def allcode(self):
        return allcode.allcode_name(self.script)

    @property
    def folder(self):
        return f"{self.first_name}_{self.roll_number}_05"

    @property
    def zip_name(self):
        return f"{self.first_name}_{self.roll_number}_{self.zip_number}.zip"


# Rules on the inputs ---------------------------------------------------------------------------------------------

def is_unsafe(character):
    # path separators, what Windows forbids, white space, the dot (importlib would read the renamed script's name
    # as a package path) and category C: control, format, unassigned and private-use characters
    return character in '/\\:*?"<>|.' or character.isspace() or unicodedata.category(character)[0] == "C"


def name_violations(sub):
    """Why the first name or roll number cannot stand in the package's file names, with a suggestion."""
    found = []
    for label, value, example in (("first name", sub.first_name, "Ada"), ("roll number", sub.roll_number, "i21-0001")):
        bad = [c for c in value if is_unsafe(c)]
        if not value:
            problem = f"it is empty; e.g. {example}"
        elif len(value) > NAME_LENGTH:
            problem = f"it is longer than {NAME_LENGTH} characters; shorten it"
        elif bad:
            suggestion = re.sub("-+", "-", "".join("-" if is_unsafe(c) else c for c in value)).strip("-")
            problem = f"it contains {bad[0]!r}, which cannot stand in a file name; try {suggestion or example}"
        else:
            continue
        found.append(f"invalid {label} {value!r}: {problem}")
    return found


def missing_files(root, submission_dir):
    return ([f"missing file: {name}" for name in (SCRIPT, NOTEBOOK, README_TEMPLATE) if not (root / name).is_file()]
            + [f"missing file: {name} (make it: python {MAKE_SUBMISSION})" for name in (MODEL, METRICS)
               if not (submission_dir / name).is_file()])


def read_json(path):
    """The JSON in path, or None where it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def run_violations(submission_dir):
    """The model must be the one results/metrics.json was measured on: the same classes, in order (a class's
    label is its index), and the very file, by its sha256."""
    model, metrics_path = submission_dir / MODEL, submission_dir / METRICS
    if not (model.is_file() and metrics_path.is_file()):
        return []  # already listed as missing
    metrics = read_json(metrics_path)
    run = metrics.get("run") if isinstance(metrics, dict) else None
    if not (isinstance(run, dict) and "model_sha256" in run and "classes" in metrics):
        return [f'{METRICS} has no "classes" and "run" (an older format), so nothing ties it to {MODEL}: {REDO}']
    try:
        classes = ddpm.load_checkpoint(model).get("class_names")
    except ddpm.UserError:
        classes = None
    if classes is None:
        return [f"{MODEL} is not a checkpoint naming its class_names, so it cannot be matched with {METRICS}: "
                f"{REDO}"]
    found = []
    if list(classes) != list(metrics["classes"]):
        found.append(f"{MODEL} has classes {', '.join(map(str, classes))} but {METRICS} has "
                     f"{', '.join(map(str, metrics['classes']))}: {REDO}")
    if sha256(model) != run["model_sha256"]:
        found.append(f"{MODEL} is not the model {METRICS} was measured on (its sha256 is not the run's "
                     f"model_sha256): {REDO}")
    return found


def blank_notes_lines(submission_dir):
    """One line naming notes.md's blank sections (all of them where it is missing); [] when all are written."""
    path = submission_dir / NOTES
    blank = make_report.blank_notes(path)
    if not blank:
        return []
    missing = "" if path.is_file() else f" ({NOTES} is missing: python {MAKE_SUBMISSION} writes it)"
    return [f"{NOTES}: write your reading under: {'; '.join(blank)}{missing}"]


# Staging the package ---------------------------------------------------------------------------------------------

def train_command(metrics, script):
    """The `train` command that made the model: every setting of the run that differs from the script's defaults
    (the seed, the checkpoint interval, a profile's U-Net), with the data folder left as DATA."""
    defaults = dataclasses.asdict(ddpm.Config())
    changed = {key: value for key, value in metrics["config"].items()
               if key in defaults and key not in ("data_dir", "classes", "num_classes") and value != defaults[key]}
    return " ".join([f"python {script} train --data-dir DATA --classes {','.join(metrics['classes'])}",
                     *as_flags(changed)])


def readme_violations(root, submission_dir, folder, sub):
    """Writes the examiner's Readme, report/Readme_submission.txt filled in with the script's name and the run."""
    metrics = read_json(submission_dir / METRICS)
    template = jinja2.Template((root / README_TEMPLATE).read_text(encoding="utf-8"),
                               undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        text = template.render(script=sub.script, notebook=NOTEBOOK, classes=metrics["classes"],
                               seed=metrics["run"]["seed"], step=metrics["chosen"]["step"],
                               train_command=train_command(metrics, sub.script))
    except (jinja2.UndefinedError, KeyError, TypeError) as error:
        return [f"{README_TEMPLATE} cannot be filled in from {METRICS}: {error}; {REDO}"]
    allcode.write(folder / README, text)
    return []


def stage(root, submission_dir, folder, sub):
    """Everything but the report and the notebook's outputs, which take long: [violations]."""
    folder.mkdir(parents=True)
    # the script names itself in its usage lines
    allcode.write(folder / sub.script, allcode.rename_in_text((root / SCRIPT).read_text(encoding="utf-8"), sub.script))
    # copyfile, not copy2: the package's files get the usual mode, whatever theirs here (the model is read-only)
    shutil.copytree(submission_dir / MODELS, folder / MODELS, copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns(".*", "__pycache__"))
    found = readme_violations(root, submission_dir, folder, sub)
    try:
        allcode.write(folder / sub.allcode, allcode.build_text(root, sub.script))
        notebook = nbformat.read(root / NOTEBOOK, as_version=4)
        for cell in notebook.cells:  # code cells import the renamed script; markdown cells name it
            cell.source = (allcode.rewrite_script_imports(cell.source, sub.module) if cell.cell_type == "code"
                           else allcode.rename_in_text(cell.source, sub.script))
        nbformat.write(notebook, folder / NOTEBOOK)
    except allcode.SourceError as error:
        found.append(f"{sub.allcode} cannot be built: {error}")
    return found


def stage_report(submission_dir, folder, sub, data_dir):
    """The zip's Report.pdf, always built anew from the run's results and notes: the name and roll number on its
    title page and, given the dataset, the training photos in its figures."""
    print(f"building {REPORT} for {sub.first_name} {sub.roll_number}"
          + (f" with the photos of {data_dir}" if data_dir else ""), flush=True)
    try:
        make_report.build(submission_dir, folder / REPORT, sub.first_name, sub.roll_number, data_dir)
    except (make_report.ReportError, ddpm.UserError) as error:
        raise PackagingError(f"{REPORT} cannot be built: {error}") from None


def run_notebook(folder):
    """Runs the staged notebook where the examiner would, in the package's folder (so it imports the renamed
    script and loads saved_models/ from there), and saves it with its outputs, which must show the animals."""
    path = folder / NOTEBOOK
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=NOTEBOOK_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    print(f"running {NOTEBOOK} in the package (an animal of each class: under a minute on a CPU)", flush=True)
    try:
        client.execute(env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # no __pycache__ in the package
    except (nbclient.exceptions.CellControlSignal, nbclient.exceptions.DeadKernelError) as error:
        # a failed cell's str() is its whole coloured traceback; a timeout's or a dead kernel's, one line
        reason = f"{error.ename}: {error.evalue}" if hasattr(error, "ename") else str(error).strip().splitlines()[0]
        raise PackagingError(f"{NOTEBOOK} fails when run in the package: {reason}") from None
    if not any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])):
        raise PackagingError(f"{NOTEBOOK} shows no image when run in the package: it must draw the animals")
    nbformat.write(notebook, path)


# Rules on the package --------------------------------------------------------------------------------------------

def dataset_photos(dataset):
    """The sha256 of every image in the dataset; empty where there is none."""
    return {sha256(path) for path in (dataset.rglob("*") if dataset else [])
            if path.is_file() and path.suffix.lower() in ddpm.IMAGE_SUFFIXES}


def photo_violations(folder, photos):
    """Any JPEG, and any file with the bytes of a dataset photo whatever its name (a renamed copy)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix.lower() in PHOTO_SUFFIXES:
            found.append(f"dataset image in the package: {name} (no .jpg/.jpeg may be shipped)")
        elif sha256(path) in photos:
            found.append(f"dataset image in the package: {name} (a copy of a photo in the dataset)")
    return found


def package_texts(folder):
    """(label, lines) of every text the package holds; Report.pdf's as pypdf reads it, page by page."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".pdf":
            for number, page in enumerate(pypdf.PdfReader(path).pages, 1):
                yield f"{name} page {number}", (page.extract_text() or "").splitlines()
        elif path.suffix in TEXT_SUFFIXES:
            yield name, path.read_text(encoding="utf-8").splitlines()


def package_violations(folder, photos):
    return photo_violations(folder, photos) + [
        f"names another diffusion implementation, which the package must not hold or cite: {label} line {number}: "
        f"{match.group(0)}" for label, lines in package_texts(folder) for number, line in enumerate(lines, 1)
        for match in OTHER_IMPLEMENTATION.finditer(line)]


def layout_violations(folder, sub):
    """The zip's root holds exactly what the assignment asks for; anything else (a __pycache__ the notebook left,
    a third Python file) is refused."""
    expected = {sub.script, sub.allcode, NOTEBOOK, REPORT, README, MODELS}
    found = {path.name for path in folder.iterdir()}
    return ([f"missing from the package: {name}" for name in sorted(expected - found)]
            + [f"not part of the submission, in the package: {name}" for name in sorted(found - expected)])


# Building the zip ------------------------------------------------------------------------------------------------

def write_zip(folder, path):
    """The zip holds folder/ as its one root entry; it is written under another name first, so a failed build
    leaves no half zip under the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in [folder, *sorted(folder.rglob("*"))]:
            zf.write(item, item.relative_to(folder.parent).as_posix())
    part.replace(path)
    return path


def package(root, sub, out_dir, data_dir=None, submission_dir=None, allow_blank_notes=False):
    """Builds the zip from the code in root and the run in submission_dir (default: root): (path or None,
    [violations])."""
    submission_dir = submission_dir or root
    names, missing = name_violations(sub), missing_files(root, submission_dir)
    violations = names + missing + run_violations(submission_dir)
    blank_notes = blank_notes_lines(submission_dir)
    if allow_blank_notes and blank_notes:
        bar = "!" * 100
        print("\n".join([bar, *(f"WARNING: {line}" for line in blank_notes),
                         "WARNING: --allow-blank-notes: the report ships with these sections BLANK.", bar]),
              file=sys.stderr)
    else:
        violations += blank_notes
    if names or missing:
        return None, violations  # no name to stage the package under, or nothing to stage
    photos = dataset_photos(data_dir)
    if not photos:
        where = f"no images in {data_dir}" if data_dir else "no dataset found"
        print(f"note: copies of dataset photos not checked ({where}; pass --data-dir PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / sub.folder
        violations += stage(root, submission_dir, folder, sub)
        violations += package_violations(folder, photos)
        if violations:
            return None, violations  # refused before the slow steps
        try:
            stage_report(submission_dir, folder, sub, data_dir)
            violations = package_violations(folder, photos)
            if not violations:  # refused before the notebook's minute
                run_notebook(folder)
                violations = package_violations(folder, photos) + layout_violations(folder, sub)
        except PackagingError as error:
            violations = [str(error)]
        if violations:
            return None, violations
        return write_zip(folder, Path(out_dir) / sub.zip_name), []


# Command line ----------------------------------------------------------------------------------------------------

def composed(name):
    """One spelling of Zoë in the file names, however it was typed (macOS may give e + combining diaeresis)."""
    return unicodedata.normalize("NFC", name)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first-name", required=True, type=composed, help="as written, e.g. Ada, Zoë or Mary-Jane")
    p.add_argument("--roll-number", required=True, type=composed, help="as written, e.g. i21-0001 or 21L1234")
    p.add_argument("--zip-number", default=ZIP_NUMBER, choices=("04", "05"),
                   help="the number in the zip's name; the folder inside is always _05 (default: %(default)s, as "
                        "the assignment text names the zip)")
    p.add_argument("--data-dir", type=Path, help="the dataset, checked for photos in the package and passed to the "
                                                 "report builder (default: ROOT/../shared/data/animals if present)")
    p.add_argument("--out-dir", type=Path, help="where the zip goes (default: ROOT/dist)")
    p.add_argument("--root", type=Path, default=allcode.ROOT, help="the repository to package (default: this one)")
    p.add_argument("--submission-dir", type=Path, help=f"the folder {MAKE_SUBMISSION} made: the model, results "
                                                       "and notes to ship (default: ROOT)")
    p.add_argument("--allow-blank-notes", action="store_true", help=f"build even while {NOTES} has blank "
                                                                     "sections, with a loud warning")
    args = p.parse_args(argv)
    for flag, path in (("--data-dir", args.data_dir), ("--submission-dir", args.submission_dir)):
        if path and not path.is_dir():
            p.error(f"{flag} {path}: no such folder")
    args.root = args.root.resolve()
    args.submission_dir = (args.submission_dir or args.root).resolve()
    beside = args.root.parent / "shared" / "data" / "animals"  # the course's photos, which must never be shipped
    if args.data_dir:
        args.data_dir = args.data_dir.resolve()
    elif beside.is_dir():
        args.data_dir = beside
    args.out_dir = args.out_dir or args.root / "dist"
    return args


def main(argv=None):
    args = parse_args(argv)
    sub = Submission(args.first_name, args.roll_number, args.zip_number)
    path, violations = package(args.root, sub, args.out_dir, args.data_dir, args.submission_dir,
                               args.allow_blank_notes)
    if violations:
        print("refusing to build the package:", *violations, sep="\n", file=sys.stderr)
        return 1
    print(f"note: the assignment text names the zip FirstName_RollNumber_04.zip but its folder "
          f"FirstName_RollNumber_05/; this zip is {sub.zip_name} (--zip-number 04 or 05 sets its number)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
