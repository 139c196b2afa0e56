"""Builds the submission: NAME_ROLL_04.zip, holding one folder NAME_ROLL_05/ with the renamed files.

    python tools/package_submission.py --first-name Ada --roll-number i21-0001 [--submission-dir DIR]
        [--data-dir PATH] [--out-dir dist] [--allow-blank-notes]

The code (rollNumber_05.py, the notebook, the examiner's Readme) comes from the repository (--root). The student's
own run comes from the submission folder DIR that tools/make_submission.py makes (default: the repository): its model
saved_models/ddpm_animals.pt, results/ and notes.md, the student's reading of the results.

The assignment text names the zip FirstName_RollNumber_04.zip and its folder FirstName_RollNumber_05; the zip
follows the text, and --zip-number 05 changes its number. The folder holds exactly: ROLL_05.py (rollNumber_05.py,
its mentions of its own name rewritten), ROLL_05_allCode.py (rebuilt for the new name by tools/build_allcode.py),
test_single_sample.ipynb (importing ROLL_05, run in the staged folder and saved with its outputs), Report.pdf (built
anew by tools/make_report.py from DIR's results and notes, with the name and roll number on its title page and,
given the dataset, the training photos in its figures), Readme.txt (the examiner's, report/Readme_submission.txt
filled in with the run's classes, seed and command) and DIR's saved_models/.

It refuses to build, listing every violation one per line and exiting 1, when a file is missing, the all-code file
is stale, the repository root holds more than two Python files, the model and results/metrics.json disagree on the
classes or the run (each line names both files), notes.md has blank sections (--allow-blank-notes builds anyway,
with a loud warning), the package would hold a dataset photo or name another diffusion implementation, the report
cannot be built, the notebook fails in the package, or a name cannot stand in a file name. On success it prints a
checklist of the assignment's conventions.

The submission's contract, which tools/make_submission.py writes: the model is a torch dict with "class_names";
results/metrics.json has "classes", "config", "chosen": {"step": ...} and "run": {"model_sha256": "<sha256 of the
model>", "seed": ...}.
"""
import argparse
import ast
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import jinja2
    import make_report  # builds the report and reads notes.md; it needs reportlab
    import nbclient
    import nbformat
    import pypdf
    import torch
except ImportError as missing:
    sys.exit(f"error: the packager needs {missing.name}: pip install -r requirements-dev.txt")

import build_allcode as allcode  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from make_results import sha256  # noqa: E402
from make_submission import as_flags  # noqa: E402

ROOT = allcode.ROOT
SCRIPT = allcode.SCRIPT_NAME
NOTEBOOK = allcode.NOTEBOOK_NAME
ALLCODE = allcode.allcode_name(SCRIPT)
README = "Readme.txt"
README_TEMPLATE = "report/Readme_submission.txt"  # the examiner's Readme; the repository's Readme.txt is the kit's
MODELS = "saved_models"
MODEL = "saved_models/ddpm_animals.pt"  # the script's DEFAULT_CHECKPOINT, which the notebook loads
REPORT = "Report.pdf"
METRICS = "results/metrics.json"
NOTES = "notes.md"
MAKE_SUBMISSION = "tools/make_submission.py"
REDO = f"rerun python {MAKE_SUBMISSION} (it redoes only what changed)"  # the fix for a submission out of step
PHOTO_SUFFIXES = {".jpg", ".jpeg"}  # the dataset is JPEG; figures are PNG, so any JPEG is suspect
DATASET_SUFFIXES = {".jpg", ".jpeg", ".png"}
TEXT_SUFFIXES = {".py", ".ipynb", ".txt", ".md", ".json"}
ZIP_NUMBER = "04"  # the assignment text's number for the zip (its folder is _05)
NAME_LENGTH = 64
# What cannot stand in a file or folder name somewhere: path separators, what Windows forbids, and the dot, which
# importlib would read as a package path in the renamed script's name (and Windows drops at a name's end).
UNSAFE_CHARACTERS = set('/\\:*?"<>|.')
# Other diffusion implementations. The assignment forbids possessing any implementation but one's own (plagiarism
# scores zero), so nothing packed may import, cite or name one. Matched ignoring case, "_" also matching "-" or
# nothing; papers (Improved Denoising Diffusion ...) are not implementations and stay citable.
OTHER_IMPLEMENTATIONS = ("diffusers", "denoising_diffusion_pytorch", "UNet2DModel", "improved_diffusion",
                         "guided_diffusion", "score_sde", "k_diffusion", "minDiffusion")
OTHER_IMPLEMENTATION = re.compile(
    r"(?<![a-z0-9])(" + "|".join(re.escape(name).replace("_", "[-_]?") for name in OTHER_IMPLEMENTATIONS)
    + r")(?![a-z0-9])", re.IGNORECASE)
NOTEBOOK_TIMEOUT = 1800  # seconds per cell: every class's DDIM steps on a slow CPU, with room to spare
OK, NOT_OK, NOT_CHECKED = "\u2713", "\u2717", "-"  # check mark, ballot x, and a dash for what could not be checked


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


def default_dataset(root):
    """The photo set beside the repository (../shared/data/animals), if it is there; it must never be shipped."""
    path = Path(root).resolve().parent / "shared" / "data" / "animals"
    return path if path.is_dir() else None


# Rules on the repository -----------------------------------------------------------------------------------------

def is_unsafe(character):
    # category C: control, format, unassigned and private-use characters
    return character in UNSAFE_CHARACTERS or character.isspace() or unicodedata.category(character)[0] == "C"


def name_problem(value, example):
    """Why value cannot stand in the package's file names, with a suggestion; None if it can."""
    if not value:
        return f"it is empty; e.g. {example}"
    if len(value) > NAME_LENGTH:
        return f"it is longer than {NAME_LENGTH} characters; shorten it"
    bad = next((c for c in value if is_unsafe(c)), None)
    if bad is None:
        return None
    suggestion = re.sub("-+", "-", "".join("-" if is_unsafe(c) else c for c in value)).strip("-")
    return f"it contains {bad!r}, which cannot stand in a file name; try {suggestion or example}"


def name_violations(sub):
    found = []
    for label, value, example in (("first name", sub.first_name, "Ada"), ("roll number", sub.roll_number, "i21-0001")):
        problem = name_problem(value, example)
        if problem:
            found.append(f"invalid {label} {value!r}: {problem}")
    return found


def missing_files(root, submission_dir):
    found = [f"missing file: {name}" for name in (SCRIPT, NOTEBOOK, README_TEMPLATE) if not (root / name).is_file()]
    if not (root / ALLCODE).is_file():
        found.append(f"missing file: {ALLCODE} (build it: python tools/build_allcode.py)")
    found += [f"missing file: {name} (make it: python {MAKE_SUBMISSION})" for name in (MODEL, METRICS)
              if not (submission_dir / name).is_file()]
    return found


def root_python_violations(root):
    """The assignment allows exactly two Python files: the script and the all-code file."""
    names = sorted(path.name for path in root.glob("*.py"))
    if len(names) <= 2:
        return []
    return [f"{len(names)} Python files at the repository root ({', '.join(names)}): only {SCRIPT} and {ALLCODE} "
            f"belong there"]


def allcode_violations(root):
    if not (root / ALLCODE).is_file():
        return []  # already listed as missing
    try:
        reason = allcode.staleness(root)
    except allcode.SourceError as error:
        reason = f"{ALLCODE} cannot be rebuilt: {error}"
    return [reason] if reason else []


def read_json(path):
    """The JSON in path, or None where it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def model_classes(path):
    """The class names a checkpoint was trained on, or None where it is not a checkpoint that names them."""
    try:  # weights_only: a checkpoint is plain data, and unpickling anything else could run code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- torch raises many kinds for a file that is not a checkpoint
        return None
    return checkpoint.get("class_names") if isinstance(checkpoint, dict) else None


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
    classes = model_classes(model)
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
    """One line naming notes.md's blank sections (all of them where it is missing), or [] when every section holds
    the student's reading."""
    path = submission_dir / NOTES
    blank = make_report.blank_notes(path)
    if not blank:
        return []
    missing = "" if path.is_file() else f" ({NOTES} is missing: python {MAKE_SUBMISSION} writes it)"
    return [f"{NOTES}: write your reading under: {'; '.join(blank)}{missing}"]


# Staging the package ---------------------------------------------------------------------------------------------

def read_exact(path):
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep the line ends as they are
        return f.read()


def stage_renamed(root, folder, name, new_name, sub):
    """A text file copied with its mentions of rollNumber_05 renamed, and nothing else changed."""
    allcode.write(folder / new_name, allcode.rename_in_text(read_exact(root / name), sub.script))


def train_command(metrics, script):
    """The `train` command that made the model: every setting of the run that differs from the script's defaults
    (the seed, the checkpoint interval, a profile's U-Net), with the data folder left as DATA."""
    defaults = dataclasses.asdict(ddpm.Config())
    changed = {key: value for key, value in metrics["config"].items()
               if key in defaults and key not in ("data_dir", "classes", "num_classes") and value != defaults[key]}
    return " ".join([f"python {script} train --data-dir DATA --classes {','.join(metrics['classes'])}",
                     *as_flags(changed)])


def stage_readme(root, submission_dir, folder, sub):
    """The examiner's Readme: report/Readme_submission.txt filled in with the script's name and the run."""
    metrics = read_json(submission_dir / METRICS)
    template = jinja2.Template(read_exact(root / README_TEMPLATE), undefined=jinja2.StrictUndefined,
                               keep_trailing_newline=True)
    try:
        text = template.render(script=sub.script, notebook=NOTEBOOK, classes=metrics["classes"],
                               seed=metrics["run"]["seed"], step=metrics["chosen"]["step"],
                               train_command=train_command(metrics, sub.script))
    except (jinja2.UndefinedError, KeyError, TypeError) as error:
        raise PackagingError(f"{README_TEMPLATE} cannot be filled in from {METRICS}: {error}; {REDO}") from None
    allcode.write(folder / README, text)


def stage_allcode(root, folder, sub):
    try:
        allcode.write(folder / sub.allcode, allcode.build_text(root, sub.script))
    except allcode.SourceError as error:
        raise PackagingError(f"{sub.allcode} cannot be built: {error}") from None


def cell_lines(text):
    return text.splitlines(keepends=True)  # the list-of-lines form nbformat writes


def rename_notebook(notebook, sub):
    """The notebook with its script imports pointed at the renamed script and its prose renamed: (notebook, number
    of imports rewritten)."""
    rewritten = 0
    for cell in notebook.get("cells", []):
        source = allcode.cell_source(cell)
        if cell.get("cell_type") == "code":
            source, count = allcode.rewrite_script_imports(source, sub.module)
            rewritten += count
        else:
            source = allcode.rename_in_text(source, sub.script)
        cell["source"] = cell_lines(source)
    return notebook, rewritten


def stage_notebook(root, folder, sub):
    notebook = json.loads((root / NOTEBOOK).read_text(encoding="utf-8"))
    try:
        notebook, rewritten = rename_notebook(notebook, sub)
    except allcode.SourceError as error:
        raise PackagingError(str(error)) from None
    if not rewritten:
        raise PackagingError(f"{NOTEBOOK} never imports {allcode.module_name(SCRIPT)}: it must load the model "
                             f"through the script")
    allcode.write(folder / NOTEBOOK, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def stage(root, submission_dir, folder, sub):
    """Everything but the report and the notebook's outputs, which take long: [violations]."""
    folder.mkdir(parents=True)
    stage_renamed(root, folder, SCRIPT, sub.script, sub)  # the script names itself in its usage lines
    shutil.copytree(submission_dir / MODELS, folder / MODELS, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    found = []
    for step in (lambda: stage_readme(root, submission_dir, folder, sub), lambda: stage_allcode(root, folder, sub),
                 lambda: stage_notebook(root, folder, sub)):
        try:
            step()
        except PackagingError as error:
            found.append(str(error))
    return found


# Rules on the package --------------------------------------------------------------------------------------------

def dataset_photos(dataset):
    """{(size, sha256)} of the dataset's images; empty where there is no dataset."""
    if dataset is None:
        return set()
    return {(path.stat().st_size, sha256(path)) for path in dataset.rglob("*")
            if path.is_file() and path.suffix.lower() in DATASET_SUFFIXES}


def photo_violations(folder, photos):
    """Any JPEG, and any file with the bytes of a dataset photo whatever its name (a renamed copy)."""
    sizes = {size for size, _ in photos}
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix.lower() in PHOTO_SUFFIXES:
            found.append(f"dataset image in the package: {name} (no .jpg/.jpeg may be shipped)")
        elif path.stat().st_size in sizes and (path.stat().st_size, sha256(path)) in photos:
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


def mentions(folder, pattern):
    """'FILE line N: what' for each match of pattern in the package's texts."""
    return [f"{label} line {number}: {match.group(0)}" for label, lines in package_texts(folder)
            for number, line in enumerate(lines, 1) for match in pattern.finditer(line)]


def implementation_violations(folder):
    return [f"names another diffusion implementation, which the package must not hold or cite: {where}"
            for where in mentions(folder, OTHER_IMPLEMENTATION)]


def layout_violations(folder, sub):
    """The zip's root holds exactly what the assignment asks for; anything else (a __pycache__ the notebook left,
    a requirements file) is refused."""
    expected = {sub.script, sub.allcode, NOTEBOOK, REPORT, README, MODELS}
    found = {path.name for path in folder.iterdir()}
    return ([f"missing from the package: {name}" for name in sorted(expected - found)]
            + [f"not part of the submission, in the package: {name}" for name in sorted(found - expected)])


def code_violations(folder, sub):
    """The renamed script must still be valid Python (the rename touches identifiers only if it mentions them)."""
    try:
        compile((folder / sub.script).read_text(encoding="utf-8"), sub.script, "exec")
    except SyntaxError as error:
        return [f"{sub.script} is not valid Python after the rename (line {error.lineno}: {error.msg})"]
    return []


def package_violations(folder, sub, photos):
    return photo_violations(folder, photos) + code_violations(folder, sub) + implementation_violations(folder)


# The report ------------------------------------------------------------------------------------------------------

def stage_report(submission_dir, folder, sub, data_dir):
    """The zip's Report.pdf, always built anew from the run's results and notes: the name and roll number on its
    title page and, given the dataset, the training photos in its figures."""
    print(f"building {REPORT} for {sub.first_name} {sub.roll_number}" + (f" with the photos of {data_dir}" if data_dir
                                                                         else ""), flush=True)
    try:
        make_report.build(submission_dir, folder / REPORT, sub.first_name, sub.roll_number, data_dir)
    except (make_report.ReportError, ddpm.UserError) as error:
        raise PackagingError(f"{REPORT} cannot be built: {error}") from None


def warn_loudly(lines):
    bar = "!" * 100
    print("\n".join([bar, *(f"WARNING: {line}" for line in lines), bar]), file=sys.stderr)


# The notebook ----------------------------------------------------------------------------------------------------

def run_notebook(folder):
    """Runs the staged notebook where the examiner would, in the package's folder (so it imports the renamed
    script and loads saved_models/ from there), and saves it with its outputs: seconds taken."""
    path = folder / NOTEBOOK
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=NOTEBOOK_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    print(f"running {NOTEBOOK} in the package (an animal of each class: under a minute on a CPU)", flush=True)
    start = time.monotonic()
    try:
        client.execute(env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # no __pycache__ in the package
    except (nbclient.exceptions.CellControlSignal, nbclient.exceptions.DeadKernelError) as error:
        # a failed cell's str() is its whole coloured traceback; a timeout's or a dead kernel's, one line
        reason = f"{error.ename}: {error.evalue}" if hasattr(error, "ename") else str(error).strip().splitlines()[0]
        raise PackagingError(f"{NOTEBOOK} fails when run in the package: {reason}") from None
    nbformat.write(notebook, path)
    return time.monotonic() - start


def notebook_images(path):
    """How many images the saved notebook shows."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return sum("image/png" in output.get("data", {}) for cell in notebook["cells"]
               for output in cell.get("outputs", []))


# Zip and checklist -----------------------------------------------------------------------------------------------

def write_zip(folder, path):
    """The zip holds folder/ as its one root entry; files are 0644 whatever their mode here (the model is 0400)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # a failed build leaves no half zip under the real name
    try:
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
            for item in [folder, *sorted(folder.rglob("*"))]:
                add_to_zip(zf, item, item.relative_to(folder.parent).as_posix())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)
    return path


def add_to_zip(zf, item, name):
    info = zipfile.ZipInfo.from_file(item, name)  # keeps the time; a folder's name gets its trailing "/"
    mode = 0o40755 if item.is_dir() else 0o100644
    info.external_attr = (mode << 16) | (info.external_attr & 0x10)  # 0x10: the MS-DOS folder flag
    if item.is_dir():
        zf.writestr(info, b"")
        return
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(item, "rb") as src, zf.open(info, "w") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def identifiers(tree, strings=False):
    """Every name the code uses or defines, attributes included; with strings, also string constants that are
    identifiers (the schedule stores its tensors under string keys)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            found.add(node.value)
    return found


def config_default(tree, field):
    """The default of Config.<field> where it is a literal, written plainly (`= 1000`) or as the first argument of
    the field's maker (`= option(1000, "help")`); else None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == field:
                    value = item.value.args[0] if isinstance(item.value, ast.Call) and item.value.args else item.value
                    return value.value if isinstance(value, ast.Constant) else None
    return None


def file_size(path):
    size = Path(path).stat().st_size
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def dataset_item(photos, data_dir):
    """(passed, line) for the copies of dataset photos; passed is None where there was no dataset to compare."""
    if photos:
        return True, f"no copies of the {len(photos)} dataset photos in {data_dir}"
    where = f"no images in {data_dir}" if data_dir else "no dataset found"
    return None, f"copies of dataset photos: not checked ({where}; pass --data-dir PATH)"


def checklist(folder, sub, photos, data_dir, notebook_seconds):
    """[(mark, line)] for the assignment's conventions, read from the staged package."""
    tree = ast.parse((folder / sub.script).read_text(encoding="utf-8"))
    names, keys = identifiers(tree), identifiers(tree, strings=True)
    python = sorted(path.name for path in folder.glob("*.py"))
    models = sorted(folder.glob(f"{MODELS}/*.pt"))
    images = notebook_images(folder / NOTEBOOK)
    old_names = mentions(folder, re.compile(re.escape(allcode.module_name(SCRIPT))))
    timesteps = config_default(tree, "timesteps")
    mse = sorted(names & {"MSELoss", "mse_loss"})
    items = [
        (True, f"file names: {sub.zip_name} -> {sub.folder}/ holding exactly {sub.script}, {sub.allcode}, "
               f"{NOTEBOOK}, {REPORT}, {README}, {MODELS}/"),
        (python == sorted([sub.script, sub.allcode]), f"two Python files: {', '.join(python)}"),
        (images > 0, f"notebook {NOTEBOOK} ran in the package against {sub.script} in {notebook_seconds:.0f} s, "
                     f"saved with its outputs ({images} images)"),
        (bool(models), "saved model: " + (", ".join(f"{p.relative_to(folder)} ({file_size(p)})" for p in models)
                                          or "none")),
        (True, f"report {REPORT} present ({len(pypdf.PdfReader(folder / REPORT).pages)} pages, "
               f"{file_size(folder / REPORT)})"),
        (True, f"all-code file: {sub.allcode} holds {sub.script} and the notebook's code cells, compiles; "
               f"{ALLCODE} is current"),
        (not old_names, f"the script is called {sub.script} everywhere"
                        + (f" (not in {old_names[0]}, and {len(old_names) - 1} more)" if old_names else "")),
        (True, f"no other diffusion implementation named anywhere in the package ({', '.join(OTHER_IMPLEMENTATIONS)})"),
        (True, "no .jpg/.jpeg files in the package"),
        dataset_item(photos, data_dir),
        (timesteps == 1000, f"T = 1000 by default in {sub.script} (Config.timesteps = {timesteps})"),
        (not mse, f"no nn.MSELoss / F.mse_loss in {sub.script}" + (f" (found: {', '.join(mse)})" if mse else "")),
        ({"q_sample", "alphas_cumprod"} <= keys, f"q_sample and alphas_cumprod present in {sub.script}"),
    ]
    return [({True: OK, False: NOT_OK, None: NOT_CHECKED}[passed], line) for passed, line in items]


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
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to package (default: this one)")
    p.add_argument("--submission-dir", type=Path, help=f"the folder {MAKE_SUBMISSION} made: the model, results, "
                                                       "report and notes to ship (default: ROOT)")
    p.add_argument("--allow-blank-notes", action="store_true", help=f"build even while {NOTES} has blank "
                                                                     "sections, with a loud warning")
    args = p.parse_args(argv)
    for flag, path in (("--data-dir", args.data_dir), ("--submission-dir", args.submission_dir)):
        if path and not path.is_dir():
            p.error(f"{flag} {path}: no such folder")
    args.root = args.root.resolve()
    args.submission_dir = (args.submission_dir or args.root).resolve()
    args.data_dir = args.data_dir.resolve() if args.data_dir else default_dataset(args.root)
    args.out_dir = args.out_dir or args.root / "dist"
    return args


def refuse(sub, violations):
    print(f"refusing to build {'the package' if name_violations(sub) else sub.zip_name}:", file=sys.stderr)
    print("\n".join(violations), file=sys.stderr)
    return 1


def stage_slow_parts(root, submission_dir, folder, sub, photos, data_dir):
    """The report and the notebook's run, each followed by the rules on what it added: ([violations], seconds the
    notebook took)."""
    stage_report(submission_dir, folder, sub, data_dir)
    violations = package_violations(folder, sub, photos)
    if violations:
        return violations, None  # refused before the notebook's minute
    seconds = run_notebook(folder)
    return package_violations(folder, sub, photos) + layout_violations(folder, sub), seconds


def package(root, sub, out_dir, data_dir=None, submission_dir=None, allow_blank_notes=False):
    """Builds the zip from the code in root and the run in submission_dir (default: root): (path or None,
    [violations], checklist)."""
    submission_dir = submission_dir or root
    names, missing = name_violations(sub), missing_files(root, submission_dir)
    violations = (names + missing + root_python_violations(root) + allcode_violations(root)
                  + run_violations(submission_dir))
    blank_notes = blank_notes_lines(submission_dir)
    if allow_blank_notes and blank_notes:
        warn_loudly(blank_notes + ["--allow-blank-notes: the report ships with these sections BLANK."])
    elif blank_notes:
        violations += blank_notes
    if names or missing:
        return None, violations, []  # no name to stage the package under, or nothing to stage
    photos = dataset_photos(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / sub.folder
        violations += stage(root, submission_dir, folder, sub)
        violations += package_violations(folder, sub, photos)
        if violations:
            return None, violations, []  # refused before the slow steps
        try:
            violations, seconds = stage_slow_parts(root, submission_dir, folder, sub, photos, data_dir)
        except PackagingError as error:
            violations = [str(error)]
        if violations:
            return None, violations, []
        items = checklist(folder, sub, photos, data_dir, seconds)
        return write_zip(folder, Path(out_dir) / sub.zip_name), [], items


def zip_number_note(sub):
    return (f"note: the assignment text names the zip FirstName_RollNumber_04.zip but its folder "
            f"FirstName_RollNumber_05/; this zip is {sub.zip_name} (--zip-number 04 or 05 sets its number)")


def main(argv=None):
    args = parse_args(argv)
    sub = Submission(args.first_name, args.roll_number, args.zip_number)
    path, violations, items = package(args.root, sub, args.out_dir, args.data_dir, args.submission_dir,
                                      args.allow_blank_notes)
    if violations:
        return refuse(sub, violations)
    for mark, line in items:
        print(f"{mark} {line}")
    print(zip_number_note(sub))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
