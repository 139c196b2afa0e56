"""Writes rollNumber_05_allCode.py: the submission's code in one Python file.

    python tools/build_allcode.py              # (re)write rollNumber_05_allCode.py at the repository root
    python tools/build_allcode.py --check      # exit 1 with one line if the file on disk is stale, 0 if current
    python tools/build_allcode.py --script-name 21L1234_05.py --out /tmp/21L1234_05_allCode.py

The sources are the submission's code files, in this order: the script (rollNumber_05.py), then the code cells
of test_single_sample.ipynb. tools/ and tests/ are the repository's own kit, not the student's submission, and
stay out. Each source stands under a header naming its file; each notebook cell under
'# ---- notebook cell N ----', N being the cell's index in the notebook (its id cell-NN).
The result only has to compile, not run: the modules are pasted one after the other, so `from __future__`
imports are moved to the top (Python allows them nowhere else) and IPython magics (%, !) are commented out.

--script-name renames the script for a submission: the header names the new file, the script's mentions of its
own name are rewritten, and so is the notebook's `from rollNumber_05 import ...`. The sources are still read from
rollNumber_05.py and the notebook under --root. tools/package_submission.py renames through the same functions.
The output is a function of the sources alone (no dates, fixed order, '\\n' line ends), so a rebuild of unchanged
sources gives identical bytes and --check can compare bytes.
"""
import argparse
import ast
import json
import keyword
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_NAME = "rollNumber_05.py"
NOTEBOOK_NAME = "test_single_sample.ipynb"
RULE = "#" * 100


class SourceError(Exception):
    """A source file that cannot go into the all-code file (missing, or not valid Python); one line."""


# Renaming: the submission calls the script ROLL_05.py ----------------------------------------------------------

def module_name(script_name):
    """'21L1234_05.py' -> '21L1234_05'."""
    return Path(script_name).stem


def allcode_name(script_name):
    """'rollNumber_05.py' -> 'rollNumber_05_allCode.py': the assignment's name for the all-code file."""
    return f"{module_name(script_name)}_allCode.py"


def rename_in_text(text, script_name):
    """Every mention of rollNumber_05 (the file, the all-code file, the module) becomes the new name.
    The script names itself in its usage lines and argparse's prog; the Readme in its commands."""
    return text.replace(module_name(SCRIPT_NAME), module_name(script_name))


def is_importable_name(name):
    """Whether `import NAME` is valid Python: a roll number that starts with a digit or holds a hyphen makes it
    invalid."""
    return name.isidentifier() and not keyword.iskeyword(name)


def import_lines(node, new_module):
    """The statements that replace one `from rollNumber_05 import ...` / `import rollNumber_05 [as m]`.
    Where the new module name is not an identifier, importlib loads it and each name is bound explicitly."""
    valid = is_importable_name(new_module)
    load = f'importlib.import_module("{new_module}")  # not an identifier, which `import` rejects'
    if isinstance(node, ast.ImportFrom):
        names = [(alias.name, alias.asname or alias.name) for alias in node.names]
        if valid:
            return [f"from {new_module} import " + ", ".join(n if n == a else f"{n} as {a}" for n, a in names)]
        if names == [("*", "*")]:
            return ["import importlib", f"ddpm = {load}",
                    'globals().update({k: v for k, v in vars(ddpm).items() if not k.startswith("_")})']
        return ["import importlib", f"ddpm = {load}"] + [f"{alias} = ddpm.{name}" for name, alias in names]
    alias = node.names[0].asname or node.names[0].name  # the code below keeps using the old binding
    if valid:
        return [f"import {new_module} as {alias}"]
    return ["import importlib", f"{alias} = {load}"]


def script_imports(tree):
    """The statements of a cell that import the script, at any depth, in line order."""
    old = module_name(SCRIPT_NAME)
    return sorted((node for node in ast.walk(tree)
                   if (isinstance(node, ast.ImportFrom) and node.module == old and node.level == 0)
                   or (isinstance(node, ast.Import) and [a.name for a in node.names] == [old])),
                  key=lambda node: node.lineno)


def rewrite_script_imports(source, new_module):
    """A notebook code cell with its imports of rollNumber_05 pointed at new_module: (new source, count)."""
    lines = source.split("\n")
    imports = script_imports(parse(NOTEBOOK_NAME, without_magics(source)))
    for node in reversed(imports):  # from the bottom up, so earlier line numbers stay valid
        indent = " " * node.col_offset
        lines[node.lineno - 1:node.end_lineno] = [indent + line for line in import_lines(node, new_module)]
    return "\n".join(lines), len(imports)


# Reading the sources ---------------------------------------------------------------------------------------------

def read_text(path):
    """A source's text with '\\n' line ends and a final newline, so the output does not depend on the editor."""
    if not path.is_file():
        raise SourceError(f"{path} is missing")
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def without_magics(source):
    """IPython magics and shell escapes (%time, !pip) commented out: they are not Python."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def cell_source(cell):
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def notebook_code_cells(path):
    """[(index in the notebook, source)] of the code cells; json suffices, nbformat is not needed."""
    if not path.is_file():
        raise SourceError(f"{path} is missing")
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return [(index, cell_source(cell)) for index, cell in enumerate(notebook.get("cells", []))
            if cell.get("cell_type") == "code"]


def notebook_text(path, script_name):
    """The notebook's code cells, each under its own header, with the script import renamed."""
    parts = []
    for index, source in notebook_code_cells(path):
        if script_name != SCRIPT_NAME:
            source, _ = rewrite_script_imports(source, module_name(script_name))
        parts.append(f"# ---- notebook cell {index} ----\n{without_magics(source).rstrip()}\n")
    return "\n".join(parts)


def collect_sources(root, script_name=SCRIPT_NAME):
    """[(name shown in the header, code)] in the order of the all-code file."""
    root = Path(root)
    script = read_text(root / SCRIPT_NAME)
    if script_name != SCRIPT_NAME:
        script = rename_in_text(script, script_name)
    return [(script_name, script), (NOTEBOOK_NAME, notebook_text(root / NOTEBOOK_NAME, script_name))]


# Writing the all-code file ---------------------------------------------------------------------------------------

def parse(name, code):
    try:
        return ast.parse(code, name)
    except SyntaxError as error:
        raise SourceError(f"{name} is not valid Python (line {error.lineno}: {error.msg})") from None


def split_future_imports(name, code):
    """(the module's `from __future__` lines, the code with them commented out in place)."""
    lines = code.split("\n")
    futures = []
    for node in parse(name, code).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            futures.append(" ".join(line.strip() for line in lines[node.lineno - 1:node.end_lineno]))
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = "# (moved to the top of this file) " + lines[i]
    return futures, "\n".join(lines)


def file_header(name):
    return f"{RULE}\n# ==== file: {name} ====\n{RULE}\n"


def render(sources):
    """The all-code file's text from [(name, code)]."""
    futures, bodies = [], []
    for name, code in sources:
        moved, code = split_future_imports(name, code)
        futures += [line for line in moved if line not in futures]
        bodies.append(file_header(name) + code.rstrip("\n") + "\n")
    names = " and ".join(name for name, _ in sources)
    intro = (f'"""The code of the submission in one file: {names}, each under a header.\n\n'
             "Each file runs on its own as shipped; this file gathers them for reading and only has to compile.\n"
             '"""\n')  # no word of the builder: the all-code file ships without the repository's tools
    head = intro + "".join(line + "\n" for line in futures)
    return head + "\n\n" + "\n\n".join(bodies)


def build_text(root=ROOT, script_name=SCRIPT_NAME):
    """The all-code text for the sources under root; raises SourceError if they do not make valid Python."""
    text = render(collect_sources(root, script_name))
    try:
        compile(text, allcode_name(script_name), "exec")
    except SyntaxError as error:  # each source compiled alone, so the pasting broke it
        raise SourceError(f"the concatenated sources do not compile (line {error.lineno}: {error.msg})") from None
    return text


def write(out, text):
    # newline="" so Windows writes '\n' too: the bytes must not depend on the platform
    Path(out).write_text(text, encoding="utf-8", newline="")


def staleness(root=ROOT, out=None, script_name=SCRIPT_NAME):
    """None if the file at out is what the builder would write now, else a one-line reason."""
    out = Path(out) if out else Path(root) / allcode_name(script_name)
    fix = "rebuild it with `python tools/build_allcode.py`"
    if not out.is_file():
        return f"{out.name} is missing: {fix}"
    if out.read_bytes() != build_text(root, script_name).encode("utf-8"):
        return f"{out.name} is stale (a code file changed since it was built): {fix}"
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this repository)")
    p.add_argument("--script-name", default=SCRIPT_NAME,
                   help="the script's file name in the output (default: %(default)s)")
    p.add_argument("--out", type=Path, help="file to write (default: ROOT/<script stem>_allCode.py)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file at --out is stale")
    args = p.parse_args(argv)
    if not args.script_name.endswith(".py") or "/" in args.script_name:
        p.error(f"--script-name must be a file name ending in .py, got {args.script_name!r}")
    args.out = args.out or args.root / allcode_name(args.script_name)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.check:
            reason = staleness(args.root, args.out, args.script_name)
            print(reason or f"{args.out.name} is current", file=sys.stderr if reason else sys.stdout)
            return 1 if reason else 0
        write(args.out, build_text(args.root, args.script_name))
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
