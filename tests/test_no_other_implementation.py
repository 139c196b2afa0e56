"""No other diffusion implementation in the repository. The assignment forbids possessing any implementation but
one's own, so no file git knows (tracked, or new and not ignored) may import one, list one in a requirements*.txt
or install one with pip. The names are tools/package_submission.py's OTHER_IMPLEMENTATIONS. Naming one in prose
is allowed: BENCHMARKS.md quotes an earlier comparison, and the packager and its tests hold the list itself."""
import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def listed_names():
    """OTHER_IMPLEMENTATIONS, read from the packager's source (importing the packager needs nbclient and pypdf)."""
    tree = ast.parse((ROOT / "tools" / "package_submission.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = [getattr(target, "id", None) for target in getattr(node, "targets", [])]
        if isinstance(node, ast.Assign) and "OTHER_IMPLEMENTATIONS" in targets:
            return list(ast.literal_eval(node.value))
    raise AssertionError("tools/package_submission.py has no OTHER_IMPLEMENTATIONS")


NAMES = listed_names()
# matched as the packager matches them, ignoring case, with "_" also matching "-", "." (pip's spellings) or nothing
OTHER = re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(name).replace("_", "[-_.]?") for name in NAMES)
                   + r")(?![a-z0-9])", re.IGNORECASE)
IMPORT_CALLS = {"import_module", "__import__", "importorskip"}  # importlib's, Python's and pytest's
IMPORT_LINE = re.compile(r"^\s*(from\s+\S+\s+import\s|import\s)")  # for code that does not parse
PIP_INSTALL = re.compile(r"\bpip3?\s+install\s+(.*)")
REQUIREMENTS = re.compile(r"(^|/)requirements[^/]*\.txt$")


def imported_names(node):
    """The module and object names an import statement or an import call names; [] for any other node."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] + [alias.name for alias in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in IMPORT_CALLS:
        return [arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return []


def import_lines(source):
    """Numbers of the lines that import a listed implementation: from the syntax tree, so strings and comments that
    merely name one do not count; line by line where the code does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [number for number, line in enumerate(source.splitlines(), 1)
                if IMPORT_LINE.match(line.split("#", 1)[0]) and OTHER.search(line.split("#", 1)[0])]
    return sorted({node.lineno for node in ast.walk(tree) if any(OTHER.search(n) for n in imported_names(node))})


def python_sources(path, text):
    """(where, source) of the Python code in a .py file or in a notebook's code cells (shell and magic lines,
    ! and %, blanked so the cell parses; the pip check below reads them)."""
    if path.endswith(".py"):
        return [("", text)]
    if path.endswith(".ipynb"):
        try:
            cells = json.loads(text)["cells"]
        except (ValueError, KeyError, TypeError):
            return []
        return [(f"cell {index} line ", re.sub(r"(?m)^\s*[!%].*$", "", "".join(cell.get("source", []))))
                for index, cell in enumerate(cells, 1) if cell.get("cell_type") == "code"]
    return []


def installed_names(arguments):
    """The package arguments of `pip install ...`: up to a comment or the next shell command, options skipped."""
    names = []
    for token in arguments.split():
        if token.startswith("#") or token in ("&&", "||", ";", "|"):
            break
        if not token.startswith("-"):
            names.append(token)
    return names


def offences(path, text):
    """'path:line: what: the line' for each import, requirement or pip install of a listed implementation."""
    found = []
    for where, source in python_sources(path, text):
        lines = source.splitlines()
        found += [f"{path}:{where}{number}: imports: {lines[number - 1].strip()}" for number in import_lines(source)]
    for number, line in enumerate(text.splitlines(), 1):
        if REQUIREMENTS.search(path):
            requirement = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
            if requirement and OTHER.fullmatch(requirement.group(1)):
                found.append(f"{path}:{number}: requires: {line.strip()}")
        for install in PIP_INSTALL.finditer(line):
            if any(OTHER.search(name) for name in installed_names(install.group(1))):
                found.append(f"{path}:{number}: installs: {line.strip()}")
    return found


def git_files(root):
    """The files git knows in `root`: tracked ones and new ones that are not ignored; None without git."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, timeout=60)
    if listing.returncode != 0:
        return None
    return sorted({name for name in listing.stdout.decode("utf-8", "replace").split("\0") if name})


def scan(root, files):
    found = []
    for name in files:
        path = root / name
        if not path.is_file():  # deleted in the working tree, not yet in git
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary: the model, figures, the PDF
            continue
        try:
            found += offences(name, data.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return found


def test_no_file_imports_requires_or_installs_another_implementation():
    files = git_files(ROOT)
    if files is None:
        pytest.skip("needs git and the repository's .git folder")
    assert {"tools/experiments/bench.py", "requirements-dev.txt", "Readme.txt", ".ci/run"} <= set(files), \
        "the listing missed files"
    assert scan(ROOT, files) == []


# What the scan must catch, and prose and code it must let pass. `pip install` is spelt with {PIP} here, so that
# this file's own lines are not install commands; the imports are strings here, which the syntax tree ignores.
PIP = "pip"
CAUGHT = {
    "probe.py": ["from diffusers import UNet2DModel", "import k_diffusion as K", "from foo import UNet2DModel",
                 "if True:", "    import denoising_diffusion_pytorch", "import torch, diffusers",
                 "spec = importlib.import_module('diffusers')", "pytest.importorskip('diffusers')"],
    "requirements-dev.txt": ["diffusers==0.42.1", "k-diffusion>=0.1", "Denoising-Diffusion-PyTorch"],
    "Readme.txt": [f"   .venv/bin/{PIP} install --no-index --find-links .whl diffusers==0.42.1",
                   f"python -m {PIP} install git+https://github.com/crowsonkb/k-diffusion"],
    "tools/setup.sh": [f"{PIP}3 install -q minDiffusion && echo done"],
}
CAUGHT_LINES = {"probe.py": [1, 2, 3, 5, 6, 7, 8], "requirements-dev.txt": [1, 2, 3], "Readme.txt": [1, 2],
                "tools/setup.sh": [1]}
ALLOWED = {
    "probe.py": ["import torch  # unlike diffusers' UNet2DModel", 'text = "from diffusers import UNet2DModel"',
                 "OTHER_IMPLEMENTATIONS = ('diffusers', 'k_diffusion')", '"""', "import diffusers", '"""'],
    "requirements-dev.txt": ["pytest==9.2.0", "# diffusers was the bench's peer", "-r requirements.txt"],
    "Readme.txt": ["Compared with diffusers' UNet2DModel (0.42.1), ours trains 3.5 times as fast.",
                   f".venv/bin/{PIP} install -r requirements-dev.txt && echo diffusers"],
    "tools/setup.sh": [f"{PIP} install torch  # not diffusers"],
}


def write_files(root, lines_by_file):
    for name, lines in lines_by_file.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_detector_flags_each_kind_of_offence_and_spares_prose(tmp_path):
    write_files(tmp_path, CAUGHT)
    names = list(CAUGHT)
    flagged = scan(tmp_path, names)
    expected = [f"{name}:{number}:" for name, numbers in CAUGHT_LINES.items() for number in numbers]
    assert [line.split(" ", 1)[0] for line in flagged] == expected, flagged
    write_files(tmp_path, ALLOWED)
    assert scan(tmp_path, names) == []


def test_the_detector_reads_notebook_code_cells(tmp_path):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["Unlike diffusers, one file.\n"]},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": ["import torch\n", "from diffusers import UNet2DModel\n"]},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": [f"!{PIP} install diffusers\n"]}]
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "probe.ipynb").write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    flagged = scan(tmp_path, ["probe.ipynb"])
    assert [line.split(": ")[1] for line in flagged] == ["imports", "installs"], flagged


def test_the_listing_covers_new_files_and_leaves_out_ignored_ones(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, timeout=60)
    (tmp_path / ".gitignore").write_text(".venv/\n")
    write_files(tmp_path, {"tools/experiments/bench.py": CAUGHT["probe.py"][:1],
                           ".venv/lib/site-packages/diffusers/__init__.py": CAUGHT["probe.py"][:1]})
    files = git_files(tmp_path)
    assert files == [".gitignore", "tools/experiments/bench.py"]
    assert [line.split(" ", 1)[0] for line in scan(tmp_path, files)] == ["tools/experiments/bench.py:1:"]
