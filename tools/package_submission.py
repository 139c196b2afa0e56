"""Builds the submission: NAME_ROLL_05.zip, holding one folder NAME_ROLL_05/ with the renamed files.

    python tools/package_submission.py --first-name Ada --roll-number 21L1234 [--out-dir dist]

The folder holds ROLL_05.py (rollNumber_05.py, its mentions of its own name rewritten), ROLL_05_allCode.py
(rebuilt for the new names by tools/build_allcode.py), test_single_sample.ipynb (importing ROLL_05), Report.pdf
(name and roll number on the title page, by tools/make_report.py), Readme.txt (commands renamed), saved_models/
and requirements.txt.

It refuses to build, listing every violation one per line and exiting 1, when a file is missing, the all-code file
is stale, the repository root holds more than two Python files, the report was built from other results, the
package would hold a dataset photo, or a name is invalid. The package itself is checked once the names are valid
and no file is missing. On success it prints a checklist of the assignment's conventions.

The report builder's contract: `python tools/make_report.py --name NAME --roll-number ROLL --out PATH` writes the
report to PATH with NAME and ROLL on the title page, and every build of the repository's report writes
report/built_from.json = {"results_sha256": "<sha256 hex of the bytes of results/metrics.json>"}.
"""
import argparse
import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_allcode as allcode  # noqa: E402

ROOT = allcode.ROOT
SCRIPT = allcode.SCRIPT_NAME
NOTEBOOK = allcode.NOTEBOOK_NAME
ALLCODE = allcode.allcode_name(SCRIPT)
README = "Readme.txt"
REQUIREMENTS = "requirements.txt"
MODELS = "saved_models"
MODEL = "saved_models/ddpm_animals.pt"  # the script's DEFAULT_CHECKPOINT, which the notebook loads
REPORT = "Report.pdf"
REPORT_PLACES = ("Report.pdf", "report/Report.pdf")  # where `python tools/make_report.py` may leave it
REPORT_BUILDER = "tools/make_report.py"
REPORT_FLAGS = ("--name", "--roll-number", "--out")
BUILT_FROM = "report/built_from.json"
METRICS = "results/metrics.json"
PHOTO_SUFFIXES = {".jpg", ".jpeg"}  # the dataset is JPEG; figures are PNG, so any JPEG is suspect
DATASET_SUFFIXES = {".jpg", ".jpeg", ".png"}
OK, NOT_OK = "\u2713", "\u2717"  # check mark, ballot x


class PackagingError(Exception):
    """A step that failed for a reason the user can fix; one line, listed with the violations."""


@dataclass(frozen=True)
class Submission:
    """The names the assignment derives from the student's first name and roll number."""
    first_name: str
    roll_number: str

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
        return f"{self.folder}.zip"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dataset_dir(root):
    """The photo set sits beside the repository (../shared/data/animals) and must never be shipped."""
    return Path(root).resolve().parent / "shared" / "data" / "animals"


# Rules on the repository -----------------------------------------------------------------------------------------

def name_violations(sub):
    found = []
    if not re.fullmatch(r"[A-Za-z]{1,40}", sub.first_name):
        found.append(f"invalid first name {sub.first_name!r}: use 1-40 letters A-Z, nothing else")
    if not re.fullmatch(r"[A-Za-z0-9]{1,20}", sub.roll_number):
        found.append(f"invalid roll number {sub.roll_number!r}: use 1-20 letters and digits, nothing else")
    return found


def find_report(root):
    return next((root / place for place in REPORT_PLACES if (root / place).is_file()), None)


def missing_files(root):
    found = [f"missing file: {name}" for name in (SCRIPT, NOTEBOOK, README, REQUIREMENTS, MODEL)
             if not (root / name).is_file()]
    if not (root / ALLCODE).is_file():
        found.append(f"missing file: {ALLCODE} (build it: python tools/build_allcode.py)")
    if find_report(root) is None:
        found.append(f"missing file: {' or '.join(REPORT_PLACES)} (build it: python {REPORT_BUILDER})")
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


def report_freshness_violations(root):
    """The report must show the current results. report/built_from.json, written by the report builder, records
    the hash of results/metrics.json it was built from; without it, fall back to comparing file times."""
    report, built_from, metrics = find_report(root), root / BUILT_FROM, root / METRICS
    if report is None:
        return []  # already listed as missing
    fix = f"rebuild it: python {REPORT_BUILDER}"
    if built_from.is_file():
        try:
            recorded = json.loads(built_from.read_text(encoding="utf-8")).get("results_sha256")
        except (ValueError, AttributeError):
            return [f"{BUILT_FROM} is not a JSON object with results_sha256: {fix}"]
        if not metrics.is_file():
            return [f"{BUILT_FROM} names results, but {METRICS} is missing"]
        if recorded != sha256(metrics):
            return [f"{report.relative_to(root)} was built from other results ({BUILT_FROM} does not match the "
                    f"sha256 of {METRICS}): {fix}"]
        return []
    results = [path for path in (root / "results").rglob("*") if path.is_file()]
    newest = max(results, key=lambda path: path.stat().st_mtime, default=None)
    if newest and newest.stat().st_mtime > report.stat().st_mtime:
        return [f"{report.relative_to(root)} is older than {newest.relative_to(root)}: {fix}"]
    return []


# Staging the package ---------------------------------------------------------------------------------------------

def read_exact(path):
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep the line ends as they are
        return f.read()


def stage_renamed(root, folder, name, new_name, sub):
    """A text file copied with its mentions of rollNumber_05 renamed, and nothing else changed."""
    allcode.write(folder / new_name, allcode.rename_in_text(read_exact(root / name), sub.script))


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


def stage_copies(root, folder):
    shutil.copy2(root / REQUIREMENTS, folder / REQUIREMENTS)
    shutil.copytree(root / MODELS, folder / MODELS, ignore=shutil.ignore_patterns(".*", "__pycache__"))


def stage(root, folder, sub):
    """Everything but the report, which is built last (it is the slow step): [violations]."""
    folder.mkdir(parents=True)
    stage_renamed(root, folder, SCRIPT, sub.script, sub)  # the script names itself in its usage lines
    stage_renamed(root, folder, README, README, sub)
    stage_copies(root, folder)
    found = []
    for step in (stage_allcode, stage_notebook):
        try:
            step(root, folder, sub)
        except PackagingError as error:
            found.append(str(error))
    return found


# Rules on the package --------------------------------------------------------------------------------------------

def dataset_photos(dataset):
    """{(size, sha256)} of the dataset's images; empty where the dataset is absent."""
    if not dataset.is_dir():
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


def code_violations(folder, sub):
    """The renamed script must still be valid Python (the rename touches identifiers only if it mentions them)."""
    try:
        compile((folder / sub.script).read_text(encoding="utf-8"), sub.script, "exec")
    except SyntaxError as error:
        return [f"{sub.script} is not valid Python after the rename (line {error.lineno}: {error.msg})"]
    return []


# The report ------------------------------------------------------------------------------------------------------

def report_builder_takes_names(root):
    """Whether tools/make_report.py exists and accepts --name, --roll-number and --out."""
    builder = root / REPORT_BUILDER
    return builder.is_file() and all(flag in builder.read_text(encoding="utf-8") for flag in REPORT_FLAGS)


def build_report(root, first_name, roll_number, out):
    """Report.pdf with the name and roll number filled in, by the report builder."""
    command = [sys.executable, str(root / REPORT_BUILDER), "--name", first_name, "--roll-number", roll_number,
               "--out", str(out)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0 or not Path(out).is_file():
        last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise PackagingError(f"{REPORT_BUILDER} failed (exit {done.returncode}): {last}")


def warn_loudly(lines):
    bar = "!" * 100
    print("\n".join([bar, *(f"WARNING: {line}" for line in lines), bar]), file=sys.stderr)


def stage_report(root, folder, sub):
    out = folder / REPORT
    if report_builder_takes_names(root):
        build_report(root, sub.first_name, sub.roll_number, out)
        return
    warn_loudly([f"{REPORT_BUILDER} is missing or lacks {', '.join(REPORT_FLAGS)}.",
                 f"{REPORT} is shipped UNCHANGED: your name and roll number are NOT on its title page."])
    shutil.copy2(find_report(root), out)


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


def pdf_pages(path):
    """Page objects counted in the raw bytes ('/Type /Page', not '/Pages'); None if they sit in compressed
    object streams, where counting would need a PDF library."""
    count = len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", Path(path).read_bytes()))
    return count or None


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
    """The default of Config.<field> where it is a literal, else None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id == field and isinstance(item.value, ast.Constant)):
                    return item.value.value
    return None


def notebook_imports(path, module):
    """Whether a code cell imports module, by `from/import` or by importlib.import_module("module")."""
    cells = allcode.notebook_code_cells(path)
    pattern = re.compile(rf"^\s*(from|import)\s+{re.escape(module)}\b|import_module\(\s*[\"']{re.escape(module)}[\"']",
                         re.M)
    return any(pattern.search(source) for _, source in cells)


def file_size(path):
    size = Path(path).stat().st_size
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def checklist(folder, sub, photo_count):
    """[(passed, line)] for the assignment's conventions, read from the staged package."""
    tree = ast.parse((folder / sub.script).read_text(encoding="utf-8"))
    names, keys = identifiers(tree), identifiers(tree, strings=True)
    python = sorted(path.name for path in folder.glob("*.py"))
    models = sorted(folder.glob(f"{MODELS}/*.pt"))
    pages = pdf_pages(folder / REPORT)
    requirements = [line for line in (folder / REQUIREMENTS).read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    timesteps = config_default(tree, "timesteps")
    mse = sorted(names & {"MSELoss", "mse_loss"})
    photos = f"compared with the {photo_count} dataset photos" if photo_count else "dataset folder not found here"
    return [
        (True, f"file names: {sub.zip_name} -> {sub.folder}/ with {sub.script}, {sub.allcode}, {NOTEBOOK}, "
               f"{REPORT}, {README}, {REQUIREMENTS}, {MODELS}/"),
        (python == sorted([sub.script, sub.allcode]), f"two Python files: {', '.join(python)}"),
        (notebook_imports(folder / NOTEBOOK, sub.module), f"notebook {NOTEBOOK} present and imports {sub.module}"),
        (bool(models), "saved model: " + (", ".join(f"{p.relative_to(folder)} ({file_size(p)})" for p in models)
                                          or "none")),
        (True, f"report {REPORT} present ({f'{pages} pages' if pages else 'page count not readable'}, "
               f"{file_size(folder / REPORT)})"),
        (True, f"all-code file current: {sub.allcode} rebuilt from the sources, compiles; {ALLCODE} is current"),
        (True, f"no dataset images: no .jpg/.jpeg files, no copies of a photo ({photos})"),
        (bool(requirements), f"{REQUIREMENTS} present ({len(requirements)} packages)"),
        (timesteps == 1000, f"T = 1000 by default in {sub.script} (Config.timesteps = {timesteps})"),
        (not mse, f"no nn.MSELoss / F.mse_loss in {sub.script}" + (f" (found: {', '.join(mse)})" if mse else "")),
        ({"q_sample", "alphas_cumprod"} <= keys, f"q_sample and alphas_cumprod present in {sub.script}"),
    ]


# Command line ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first-name", required=True, help="letters only, e.g. Ada")
    p.add_argument("--roll-number", required=True, help="letters and digits only, e.g. 21L1234")
    p.add_argument("--out-dir", type=Path, help="where the zip goes (default: ROOT/dist)")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to package (default: this one)")
    args = p.parse_args(argv)
    args.root = args.root.resolve()
    args.out_dir = args.out_dir or args.root / "dist"
    return args


def refuse(sub, violations):
    print(f"refusing to build {'the package' if name_violations(sub) else sub.zip_name}:", file=sys.stderr)
    print("\n".join(violations), file=sys.stderr)
    return 1


def package(root, sub, out_dir):
    """Builds the zip: (path or None, [violations], checklist)."""
    names, missing = name_violations(sub), missing_files(root)
    violations = (names + missing + root_python_violations(root) + allcode_violations(root)
                  + report_freshness_violations(root))
    if names or missing:
        return None, violations, []  # no name to stage the package under, or nothing to stage
    photos = dataset_photos(dataset_dir(root))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / sub.folder
        violations += stage(root, folder, sub)
        violations += photo_violations(folder, photos) + code_violations(folder, sub)
        if violations:
            return None, violations, []
        try:
            stage_report(root, folder, sub)
        except PackagingError as error:
            return None, [str(error)], []
        violations = photo_violations(folder, photos)  # the report builder wrote a file too
        if violations:
            return None, violations, []
        items = checklist(folder, sub, len(photos))
        return write_zip(folder, Path(out_dir) / sub.zip_name), [], items


def main(argv=None):
    args = parse_args(argv)
    sub = Submission(args.first_name, args.roll_number)
    path, violations, items = package(args.root, sub, args.out_dir)
    if violations:
        return refuse(sub, violations)
    for passed, line in items:
        print(f"{OK if passed else NOT_OK} {line}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
