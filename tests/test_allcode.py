"""tools/build_allcode.py: rollNumber_05_allCode.py holds the submission's code files (the script and the notebook's
code cells, not tools/ or tests/), compiles, and is rebuilt whenever one changes (the committed file is checked
here, so a stale one fails CI)."""
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import build_allcode  # noqa: E402

ALLCODE = ROOT / "rollNumber_05_allCode.py"
REBUILD = "python tools/build_allcode.py"


def expected_headers(script="rollNumber_05.py"):
    return [f"# ==== file: {name} ====" for name in (script, "test_single_sample.ipynb")]


def make_project(root, script='"""The script."""\nPROG = "rollNumber_05.py"\n', cells=("import os\n",)):
    """A minimal project: a script, a notebook with the given code cells, and a tools/ and tests/ of its own."""
    (root / "tools").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "rollNumber_05.py").write_text(script)
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]}]
                + [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": c}
                   for c in cells],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "test_single_sample.ipynb").write_text(json.dumps(notebook))
    (root / "tools" / "a.py").write_text("A = 1\n")
    (root / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    return root


# The committed file ----------------------------------------------------------------------------------------------

def test_committed_allcode_is_current():
    reason = build_allcode.staleness(ROOT)
    assert reason is None, f"{reason}\n(run `{REBUILD}` and commit rollNumber_05_allCode.py)"


def test_committed_allcode_compiles():
    compile(ALLCODE.read_text(encoding="utf-8"), ALLCODE.name, "exec")


def test_committed_allcode_has_a_header_for_each_source_in_order():
    lines = [line for line in ALLCODE.read_text(encoding="utf-8").splitlines() if line.startswith("# ==== file: ")]
    assert lines == expected_headers()


def test_committed_allcode_holds_each_notebook_code_cell():
    notebook = json.loads((ROOT / "test_single_sample.ipynb").read_text())
    code_cells = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"]
    text = ALLCODE.read_text(encoding="utf-8")
    assert [f"# ---- notebook cell {i} ----" for i in code_cells] == \
        [line for line in text.splitlines() if line.startswith("# ---- notebook cell")]


# The builder -----------------------------------------------------------------------------------------------------

def test_build_is_deterministic(tmp_path):
    make_project(tmp_path)
    first = build_allcode.build_text(tmp_path)
    build_allcode.write(tmp_path / "out.py", first)
    assert build_allcode.build_text(tmp_path).encode() == first.encode() == (tmp_path / "out.py").read_bytes()


def test_sources_are_the_script_then_the_notebook_without_tools_or_tests(tmp_path):
    make_project(tmp_path)
    text = build_allcode.build_text(tmp_path)
    assert [line for line in text.splitlines() if line.startswith("# ==== file: ")] == expected_headers()
    assert "A = 1" not in text and "def test_x" not in text


def test_a_change_in_tools_does_not_make_the_file_stale(tmp_path):
    make_project(tmp_path)
    assert build_allcode.main(["--root", str(tmp_path)]) == 0
    (tmp_path / "tools" / "a.py").write_text("A = 3\n")
    assert build_allcode.staleness(tmp_path) is None


def test_check_exits_1_with_one_line_when_stale_and_0_when_current(tmp_path, capsys):
    make_project(tmp_path)
    assert build_allcode.main(["--root", str(tmp_path)]) == 0
    assert build_allcode.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / "rollNumber_05.py").write_text("X = 3\n")
    capsys.readouterr()
    assert build_allcode.main(["--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "stale" in err and REBUILD in err


def test_check_reports_a_missing_file(tmp_path, capsys):
    make_project(tmp_path)
    assert build_allcode.main(["--root", str(tmp_path), "--check"]) == 1
    assert "missing" in capsys.readouterr().err


def test_check_runs_from_the_command_line():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_allcode.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sources_that_compile_only_alone_are_refused_in_one_line(tmp_path, capsys):
    make_project(tmp_path, script='"""Doc."""\nfrom __future__ import annotations\n')  # mid-file in the all-code file
    assert build_allcode.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "do not compile" in err and "__future__" in err


def test_notebook_magics_are_commented_out(tmp_path):
    make_project(tmp_path, cells=("%matplotlib inline\n!pip list\nx = 1\n",))
    text = build_allcode.build_text(tmp_path)
    assert "# %matplotlib inline" in text and "# !pip list" in text


def test_a_source_that_does_not_compile_is_named(tmp_path, capsys):
    make_project(tmp_path, cells=("def f(:\n",))
    assert build_allcode.main(["--root", str(tmp_path)]) == 1
    assert "test_single_sample.ipynb" in capsys.readouterr().err


# Renaming for the submission -------------------------------------------------------------------------------------

def test_renamed_build_names_the_renamed_script_and_compiles():
    text = build_allcode.build_text(ROOT, "21L1234_05.py")
    compile(text, "21L1234_05_allCode.py", "exec")
    headers = [line for line in text.splitlines() if line.startswith("# ==== file: ")]
    assert headers == expected_headers(script="21L1234_05.py")
    assert 'prog="21L1234_05.py"' in text  # the script's own name, in its usage line


def test_renamed_build_rewrites_the_notebook_import():
    text = build_allcode.build_text(ROOT, "21L1234_05.py")
    notebook_part = text.split("# ==== file: test_single_sample.ipynb ====")[1].split("# ==== file: ")[0]
    assert "rollNumber_05" not in notebook_part
    assert 'importlib.import_module("21L1234_05")' in notebook_part


def test_import_of_an_identifier_module_stays_a_plain_import():
    source = build_allcode.rewrite_script_imports("from rollNumber_05 import a, b as c\nx = 1\n", "Ab12_05")
    assert source == "from Ab12_05 import a, b as c\nx = 1\n"


def test_import_of_a_digit_leading_module_binds_every_name(monkeypatch):
    fake = types.ModuleType("21L1234_05")
    fake.a, fake.b = "A", "B"
    monkeypatch.setitem(sys.modules, "21L1234_05", fake)  # what importlib returns for the renamed script
    source = build_allcode.rewrite_script_imports(
        "import time\n\nfrom rollNumber_05 import (a,\n    b as c)\ny = a + c\n", "21L1234_05")
    namespace = {}
    exec(compile(source, "cell", "exec"), namespace)
    assert "import 21L1234_05" not in source
    assert namespace["y"] == "AB" and namespace["ddpm"] is fake


def test_indented_import_keeps_its_indentation(monkeypatch):
    source = build_allcode.rewrite_script_imports("if True:\n    from rollNumber_05 import a\n", "9X_05")
    compile(source, "cell", "exec")
    assert source.startswith("if True:\n    import importlib\n    ddpm = ")


def test_import_of_a_hyphenated_module_loads_the_file(tmp_path, monkeypatch):
    (tmp_path / "i21-0001_05.py").write_text("a = 'A'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "i21-0001_05", raising=False)
    source = build_allcode.rewrite_script_imports("from rollNumber_05 import a\n", "i21-0001_05")
    namespace = {}
    exec(source, namespace)
    assert namespace["a"] == "A" and namespace["ddpm"].__file__ == str(tmp_path / "i21-0001_05.py")


@pytest.mark.parametrize("name", ["21L1234_05", "9X_05", "i21-0001_05"])
def test_roll_number_module_names_that_import_rejects(name):
    assert not build_allcode.is_importable_name(name)
    with pytest.raises(SyntaxError):
        compile(f"import {name}", "x", "exec")


def test_output_does_not_depend_on_where_the_project_lies(tmp_path):
    """The packager and the tests build from copies of the project (--root)."""
    make_project(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert build_allcode.build_text(tmp_path / "a") == build_allcode.build_text(tmp_path / "b")
