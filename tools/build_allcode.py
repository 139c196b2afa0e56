"""Writes rollNumber_05_allCode.py: the script, then the notebook's code cells, each under a header (tools/ and
tests/ are the kit's, not the submission's). tools/package_submission.py builds it for the renamed script.

    python tools/build_allcode.py [--check]    # --check: write nothing, exit 1 with one line if the file is stale

The output depends on the sources alone (no dates, '\\n' line ends), so --check compares bytes.
"""
import argparse
import ast
import json
import keyword
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_NAME, MODULE = "rollNumber_05.py", "rollNumber_05"
NOTEBOOK_NAME = "test_single_sample.ipynb"
RULE = "#" * 100


class SourceError(Exception):
    """A source that is not valid Python; one line."""


def allcode_name(script_name):
    return f"{Path(script_name).stem}_allCode.py"  # the assignment's name for the all-code file


def rename_in_text(text, script_name):
    """Every mention of rollNumber_05 (the file, the all-code file, the module) becomes the new name."""
    return text.replace(MODULE, Path(script_name).stem)


def is_importable_name(name):  # not where a roll number starts with a digit or holds a hyphen
    return name.isidentifier() and not keyword.iskeyword(name)


def rewrite_script_imports(source, module):
    """A notebook code cell that imports module instead of rollNumber_05. Where module is no identifier, importlib
    loads it in place of each `from rollNumber_05 import ...` (at any depth) and each name is bound from it."""
    if is_importable_name(module):
        return source.replace(MODULE, module)
    lines = source.split("\n")
    imports = [node for node in ast.walk(parse(NOTEBOOK_NAME, without_magics(source)))
               if isinstance(node, ast.ImportFrom) and node.module == MODULE and node.level == 0]
    for node in sorted(imports, key=lambda node: node.lineno, reverse=True):  # bottom up: line numbers stay valid
        bound = [f"{alias.asname or alias.name} = ddpm.{alias.name}" for alias in node.names]
        lines[node.lineno - 1:node.end_lineno] = [
            " " * node.col_offset + line for line in
            ["import importlib", f'ddpm = importlib.import_module("{module}")  # `import` rejects it', *bound]]
    return "\n".join(lines)


def without_magics(source):
    """IPython magics and shell escapes (%matplotlib, !pip) commented out: they are not Python."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def parse(name, code):
    try:
        return ast.parse(code, name)
    except SyntaxError as error:
        raise SourceError(f"{name} is not valid Python (line {error.lineno}: {error.msg})") from None


def notebook_code_cells(path):
    """[(index in the notebook, source)] of the code cells; json suffices, nbformat is not needed."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    return [(index, "".join(cell["source"])) for index, cell in enumerate(cells) if cell["cell_type"] == "code"]


def build_text(root=ROOT, script_name=SCRIPT_NAME):
    """The all-code text of the sources under root, the script called script_name."""
    # text mode reads '\r\n' as '\n'; under its own name the renaming changes nothing
    script = rename_in_text((Path(root) / SCRIPT_NAME).read_text(encoding="utf-8"), script_name)
    cells = [(index, rewrite_script_imports(source, Path(script_name).stem))
             for index, source in notebook_code_cells(Path(root) / NOTEBOOK_NAME)]
    notebook = "\n".join(f"# ---- notebook cell {index} ----\n{without_magics(source).rstrip()}\n"
                         for index, source in cells)
    sources = [(script_name, script), (NOTEBOOK_NAME, notebook)]
    for name, code in sources:
        parse(name, code)  # names the file at fault
    # no word of the builder: the all-code file ships without the repository's tools
    text = (f'"""The code of the submission in one file: {script_name} and {NOTEBOOK_NAME}, each under a header.\n\n'
            "Each file runs on its own as shipped; this file gathers them for reading and only has to compile.\n"
            '"""\n\n\n' + "\n\n".join(f"{RULE}\n# ==== file: {name} ====\n{RULE}\n" + code.rstrip("\n") + "\n"
                                      for name, code in sources))
    try:
        compile(text, allcode_name(script_name), "exec")
    except SyntaxError as error:  # each source parses alone, so the pasting broke it (a `from __future__` import)
        raise SourceError(f"the concatenated sources do not compile (line {error.lineno}: {error.msg})") from None
    return text


def write(out, text):
    Path(out).write_text(text, encoding="utf-8", newline="")  # newline="": '\n' on Windows too


def staleness(root=ROOT):
    """None if root's all-code file is what the builder writes now, else a one-line reason."""
    out, fix = Path(root) / allcode_name(SCRIPT_NAME), "rebuild it with `python tools/build_allcode.py`"
    if not out.is_file():
        return f"{out.name} is missing: {fix}"
    if out.read_bytes() != build_text(root).encode("utf-8"):
        return f"{out.name} is stale (a code file changed since it was built): {fix}"
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this repository)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    args = p.parse_args(argv)
    out = args.root / allcode_name(SCRIPT_NAME)
    try:
        if args.check:
            reason = staleness(args.root)
            print(reason or f"{out.name} is current", file=sys.stderr if reason else sys.stdout)
            return 1 if reason else 0
        write(out, build_text(args.root))
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
