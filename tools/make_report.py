"""Builds a submission's Report.pdf from report/report.md, its results/ (figures and metrics.json) and its notes.md.

    python tools/make_report.py [--submission-dir DIR] [--name NAME] [--roll-number ROLL] [--out PATH]
                                [--data-dir PATH]

A submission folder DIR (default: the repository root) holds results/, written by tools/make_submission.py for the
student's own classes, and notes.md, the student's own reading of them. Every number in the report is read from
DIR/results/ when the report is built, so report and results cannot disagree; report/report.md is a template that
is true for any run: what a sentence says about an outcome is chosen by the measurement. It is a small markdown
subset:

    # Chapter, ## Section          numbered headings; they fill the contents page and the PDF outline
    paragraphs, "- " bullets, ``` code blocks, $$ a centred equation line $$, **bold**, *italic*, `code`,
    x~sub~, x^sup^
    ![caption](results/x.png){#fig:name width=0.8}      a numbered figure; @fig:name in the text refers to it
    ![caption](photos/x.png){#fig:name}                 a figure of training photos: only with --data-dir
    Table: caption {#tab:name}, then | a | b | rows      a numbered table (---: right-aligns a column); @tab:name
    {expression:format}     a value from the results, formatted with Python's format(), e.g. {metrics.parameters:,}
    !let name = expression  a short name for a value, usable in the lines below
    !for x in expression    the lines up to the matching !end, filled in once per item x of the list
    !if expression          the lines up to the matching !end, only where the expression is true
    !check expression       a fact the text relies on (e.g. one class list everywhere); the build stops if false.
                            Never an outcome of the run: a student's build must not stop on what was measured
    !notes Section title    the student's text under `## Section title` in notes.md, or a note that it is blank
    <!-- comment -->        a line left out of the report

Expressions read `metrics` (results/metrics.json) and `forward` (the forward-process figure's image and the mean
and std of its x_T): a.b and a["key"] look up keys, a[0] list items, pick(rows, key=value) the one row matching;
+ - * / // ** and comparisons (also in, is, not) work as in Python, and so does `A if condition else B`, which
is how a sentence follows the measurement. min, max, abs, round, len, str, sum, range and format are Python's;
[a, b] makes a list, names(list) reads "A, B and C", column(rows, key) is [row[key] for row in rows],
argmin(values) and argmax(values) the index of the smallest and largest value that is not None, and
alpha_bar(t, T) the script's own noise schedule. A missing key stops the build, naming the placeholder
and the keys that do exist; so does a float without a format. A line that fills in to nothing (a sentence the
measurement chose away) is left out, so it does not split its paragraph. Names made by !let inside a !for or !if
block last until its !end.

notes.md starts with a title line and a line of instructions; then, for each !notes directive in order, a
`## Section title` line and the blank marker line, which the student replaces with their own text (the same
markdown subset; no placeholders). notes_sections, write_notes_template, read_notes and blank_notes serve the
tools that write and check it.

--data-dir makes the forward-process figure from the first photo of the run's first class (the script's `forward`
command) and draws the photos/ figures, all in a temporary folder. Without it the report shows
results/forward_process.png, made from a generated image, and leaves the photos/ figures out, because the photos'
licence keeps them out of the repository. For the same reason a report built with --data-dir must be written
somewhere other than DIR/Report.pdf.

Building DIR/Report.pdf (the default --out) also writes DIR/report/built_from.json: the sha256 of
DIR/results/metrics.json (which tools/package_submission.py checks) and of every other input (tests/test_report.py
checks them all), named relative to DIR where they lie in it, else to the repository. The PDF is byte-for-byte
reproducible (reportlab's invariant mode). The builder needs reportlab (requirements-dev.txt), Pillow and the
DejaVu fonts that ship with matplotlib; rollNumber_05.py never imports it.
"""
import argparse
import ast
import hashlib
import io
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib
from PIL import Image as PILImage
from PIL import ImageOps
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (BaseDocTemplate, CondPageBreak, Frame, Image, KeepTogether, ListFlowable, ListItem,
                                NextPageTemplate, PageBreak, PageTemplate, Paragraph, Preformatted, Spacer, Table,
                                TableStyle)
from reportlab.platypus.tableofcontents import TableOfContents

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "report" / "report.md"
# the repository's own submission; another submission folder holds the same paths (in_submission)
RESULTS = ROOT / "results"
NOTES = ROOT / "notes.md"
DEFAULT_OUT = ROOT / "Report.pdf"
BUILT_FROM = ROOT / "report" / "built_from.json"
DATA_FILES = {"metrics": "metrics.json"}
FORWARD_FIGURE = "forward_process.png"
NOTES_TITLE = "# Notes for Report.pdf"
NOTES_BLANK = "(write your reading of these results here)"
NOTES_LEAD = "**Your reading.**"
PHOTO_FIGURES = "photos/"  # figures drawn from --data-dir at build time; a build without it leaves them out
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TITLE = "Generating animal images with a denoising diffusion model"
MAX_CODE_CHARS = 92  # a code line longer than this would run off the page: the build refuses it


class ReportError(Exception):
    """A problem in the source or the results that the author must fix; printed as one line."""


# ---------------------------------------------------------------------------------------------
# Values: {expression:format} placeholders and !check claims, evaluated against the results
# ---------------------------------------------------------------------------------------------

def pick(rows, **match):
    """The one row of a list of dicts whose keys equal `match`, e.g. pick(bench_cpu.training, model="ours")."""
    found = [row for row in rows if all(row.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise ReportError(f"pick({match}) matched {len(found)} rows, not 1")
    return found[0]


def alpha_bar(t, timesteps):
    """alpha_bar_t (paper numbering, t = 1..T) of the script's own noise schedule."""
    sys.path.insert(0, str(ROOT))
    from rollNumber_05 import NoiseSchedule
    return float(NoiseSchedule(timesteps).alphas_cumprod[t - 1])


def names(items):
    """['A', 'B', 'C'] -> 'A, B and C'; numbers as written, [1.0, 2.5] -> '1 and 2.5'."""
    items = [format(i, "g") if isinstance(i, float) else str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def column(rows, key):
    """One key of every row, e.g. column(metrics.lr_sweep.runs, "label") -> ['3e-3', '1e-3', ...]."""
    return [lookup(row, key, "a row") for row in rows]


def argmin(values):
    """The index of the smallest value that is not None (null in the results: not measured), or None if none is."""
    measured = [i for i, v in enumerate(values) if v is not None]
    return min(measured, key=lambda i: values[i]) if measured else None


def argmax(values):
    """The index of the largest value that is not None, or None if none is."""
    return argmin([None if v is None else -v for v in values])


FUNCTIONS = {"pick": pick, "names": names, "column": column, "argmin": argmin, "argmax": argmax,
             "alpha_bar": alpha_bar, "min": min, "max": max, "abs": abs, "round": round, "len": len, "str": str,
             "sum": sum, "range": range, "format": format}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg, ast.Not: operator.not_,
             ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
             ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Is: operator.is_, ast.IsNot: operator.is_not,
             ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


def lookup(container, key, where):
    """container[key] for a dict or a list, or a ReportError naming what exists at `where`."""
    if isinstance(container, dict) and key in container:
        return container[key]
    if isinstance(container, list) and isinstance(key, int) and -len(container) <= key < len(container):
        return container[key]
    there = f"keys there: {', '.join(map(str, container))}" if isinstance(container, dict) else \
        f"a {type(container).__name__}" + (f" of {len(container)}" if isinstance(container, list) else "")
    raise ReportError(f"no {key!r} in {where} ({there})")


def evaluate(text, data):
    """The value of one expression over the results; only the forms listed in the module docstring."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ReportError(f"not an expression: {text}") from None

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in data:
                return data[node.id]
            raise ReportError(f"unknown name {node.id!r}; the results are {', '.join(data)}")
        if isinstance(node, ast.List):
            return [value(item) for item in node.elts]
        if isinstance(node, ast.Attribute):
            return lookup(value(node.value), node.attr, ast.unparse(node.value))
        if isinstance(node, ast.Subscript):
            return lookup(value(node.value), value(node.slice), ast.unparse(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.Compare) and all(type(op) in OPERATORS for op in node.ops):
            values = [value(node.left)] + [value(c) for c in node.comparators]
            return all(OPERATORS[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:]))
        if isinstance(node, ast.BoolOp):  # lazy, as in Python: `x is not None and x > 0` is safe
            results = (value(v) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.IfExp):  # only the branch the condition picks: the other may not exist in this run
            return value(node.body) if value(node.test) else value(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            return FUNCTIONS[node.func.id](*map(value, node.args), **{k.arg: value(k.value) for k in node.keywords})
        raise ReportError(f"unsupported expression {ast.unparse(node)!r}")

    return value(tree)


def split_format(inner):
    """'expr:spec' -> (expr, spec); a colon inside brackets, parentheses or quotes belongs to the expression."""
    depth, quote = 0, None
    for i, ch in enumerate(inner):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ":" and depth == 0:
            return inner[:i], inner[i + 1:]
    return inner, ""


def render_value(inner, data):
    expr, spec = split_format(inner)
    try:
        result = evaluate(expr, data)
    except ReportError as err:
        raise ReportError(f"{{{inner}}}: {err}") from None
    if isinstance(result, float) and not spec:
        raise ReportError(f"{{{inner}}} is a float: give it a format, e.g. {{{expr}:.2f}}")
    try:
        return format(result, spec)
    except (ValueError, TypeError) as err:
        raise ReportError(f"{{{inner}}}: format {spec!r} does not fit {result!r} ({err})") from None


def fill_in(lines, data, source_name=None):
    """Source lines with every {placeholder} replaced; !let lines name a value for the lines below, !check lines
    are verified, !for and !if blocks are repeated or left out; all these are dropped, as are comments.
    Errors name the source line."""
    return fill_numbered(list(enumerate(lines, 1)), dict(data), source_name or SOURCE.name)


def fill_numbered(numbered, data, source_name):
    """fill_in for (line number, line) pairs: a block's lines are filled in by calling this again."""
    out, i = [], 0
    while i < len(numbered):
        number, line = numbered[i]
        try:
            if line.startswith(("!for ", "!if ")):
                end = block_end(numbered, i)
                bindings = block_bindings(line, data)
            elif line.strip() == "!end":
                raise ReportError("!end without a !for or !if above it")
            else:
                end = None
                out += fill_line(line, data)
        except ReportError as err:
            raise ReportError(f"{source_name} line {number}: {err}") from None
        if end is not None:  # outside the try: an error inside the block already names its own line
            for names in bindings:
                out += fill_numbered(numbered[i + 1:end], {**data, **names}, source_name)
            i = end
        i += 1
    return out


def fill_line(line, data):
    """One source line outside a block -> the report lines it gives (none for a directive); !let adds to `data`."""
    if line.startswith("!let "):
        name, _, expr = line[len("!let "):].partition("=")
        if not name.strip().isidentifier() or not expr.strip():
            raise ReportError(f"write !let NAME = EXPRESSION, not {line!r}")
        data[name.strip()] = evaluate(expr, data)
        return []
    if line.startswith("!check "):
        if not evaluate(line[len("!check "):], data):
            raise ReportError(f"claim is false with these results: {line[len('!check '):].strip()}")
        return []
    if line.strip().startswith("<!--"):
        return []
    filled = re.sub(r"\{([^{}#]+)\}", lambda m: render_value(m.group(1), data), line)
    return [filled] if filled.strip() or not line.strip() else []  # a sentence chosen away leaves no blank line


def block_end(numbered, start):
    """The index of the !end that closes the !for or !if block opened at `start`; blocks may nest."""
    depth = 0
    for i in range(start, len(numbered)):
        line = numbered[i][1]
        depth += line.startswith(("!for ", "!if ")) - (line.strip() == "!end")
        if depth == 0:
            return i
    raise ReportError(f"{numbered[start][1].split()[0]} without its !end")


def block_bindings(line, data):
    """What a block's lines are filled in with, once each: {name: item} per item of a !for; for an !if, one empty
    binding where its condition holds, none where it does not."""
    if line.startswith("!if "):
        return [{}] if evaluate(line[len("!if "):], data) else []
    m = re.fullmatch(r"!for\s+(\w+)\s+in\s+(.+)", line.strip())
    if not m:
        raise ReportError(f"write !for NAME in EXPRESSION, not {line!r}")
    return [{m.group(1): item} for item in evaluate(m.group(2), data)]


def load_results(results_dir, files=DATA_FILES):
    data = {}
    for name, file in files.items():
        path = Path(results_dir) / file
        if not path.is_file():
            raise ReportError(f"{path} is missing; rebuild the results (see Readme.txt)")
        data[name] = json.loads(path.read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------------------------
# The student's notes: notes.md holds a section for each !notes directive of the report
# ---------------------------------------------------------------------------------------------

NOTES_HELP = ("Replace each line in parentheses with your own reading of that chapter's results (what the figures "
              "show, what surprised you, what you would try next); Report.pdf prints each section at the end of "
              "its chapter, so rebuild the report after editing.")
MARKUP_STARTS = ("#", "- ", "```", "$$", "![", "Table:", "|")  # lines that are not the start of a paragraph


def notes_sections(source=SOURCE):
    """The titles of the report's !notes directives, in order: the sections notes.md has."""
    titles = [line[len("!notes "):].strip() for line in Path(source).read_text(encoding="utf-8").splitlines()
              if line.startswith("!notes ")]
    if len(set(titles)) < len(titles):
        raise ReportError(f"{Path(source).name}: two !notes directives have the same title")
    return titles


def write_notes_template(path, source=SOURCE):
    """notes.md with every section blank. An existing file holds the student's text and is never overwritten;
    returns whether the file was written."""
    sections = [f"## {title}\n{NOTES_BLANK}\n" for title in notes_sections(source)]
    try:
        with open(path, "x", encoding="utf-8") as f:  # "x": fails if the file exists, even if made a moment ago
            f.write("\n".join([NOTES_TITLE, NOTES_HELP, ""] + sections))
    except FileExistsError:
        return False
    return True


def read_notes(path):
    """{section title: the student's text} from notes.md, less the blank marker line, so an untouched section
    reads as ""; a missing file has no sections."""
    if not Path(path).is_file():
        return {}
    sections, title = {}, None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            title = line[len("## "):].strip()
            sections[title] = []
        elif title is not None and line.strip() != NOTES_BLANK:
            sections[title].append(line)
    return {title: "\n".join(lines).strip() for title, lines in sections.items()}


def blank_notes(path, source=SOURCE):
    """The titles of the report's notes sections that notes.md leaves blank or lacks, in order."""
    notes = read_notes(path)
    return [title for title in notes_sections(source) if not notes.get(title)]


def with_notes(lines, notes):
    """The filled-in source lines with each !notes directive replaced by the student's text for its section,
    after a lead-in; a blank section says so, in italics, where the text will go."""
    out = []
    for line in lines:
        if not line.startswith("!notes "):
            out.append(line)
            continue
        title = line[len("!notes "):].strip()
        text = notes.get(title, "").splitlines()
        if not text:
            out += ["", f"{NOTES_LEAD} *Still blank: write your reading under “{title}” in notes.md and rebuild "
                        f"the report.*", ""]
        elif text[0].startswith(MARKUP_STARTS):  # a list or table of the student's own begins below the lead-in
            out += ["", NOTES_LEAD, ""] + text + [""]
        else:
            out += ["", f"{NOTES_LEAD} {text[0]}"] + text[1:] + [""]
    return out


# ---------------------------------------------------------------------------------------------
# Typesetting: fonts, styles, inline markup and blocks -> reportlab flowables
# ---------------------------------------------------------------------------------------------

FONT_FILES = {"Serif": ["DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic"],
              "Sans": ["DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique"],
              "Mono": ["DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique"]}


def register_fonts():
    """DejaVu (ships with matplotlib, a dependency of the script): covers the Greek letters the text uses.
    Each family is registered as NAME, NAME-Bold, NAME-Italic and NAME-BoldItalic, so <b> and <i> work."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for family, files in FONT_FILES.items():
        faces = [family, f"{family}-Bold", f"{family}-Italic", f"{family}-BoldItalic"]
        for face, file in zip(faces, files):
            pdfmetrics.registerFont(TTFont(face, str(folder / f"{file}.ttf")))
        pdfmetrics.registerFontFamily(family, *faces)


def make_styles():
    body = ParagraphStyle("body", fontName="Serif", fontSize=10, leading=13.5, spaceAfter=6)
    return {
        "body": body,
        "bullet": ParagraphStyle("bullet", parent=body, spaceAfter=2),
        "h1": ParagraphStyle("h1", fontName="Sans-Bold", fontSize=16, leading=20, spaceBefore=14, spaceAfter=8,
                             keepWithNext=1),  # with a paragraph; before a list, the CondPageBreak does it
        "h2": ParagraphStyle("h2", fontName="Sans-Bold", fontSize=12, leading=15, spaceBefore=10, spaceAfter=4,
                             keepWithNext=1),
        "caption": ParagraphStyle("caption", parent=body, fontSize=8.5, leading=11, spaceBefore=3, spaceAfter=12),
        "code": ParagraphStyle("code", fontName="Mono", fontSize=8, leading=10.5, leftIndent=8, spaceBefore=2,
                               spaceAfter=8, backColor=colors.HexColor("#f3f3f3"), borderPadding=4),
        "table_caption": ParagraphStyle("table_caption", parent=body, fontSize=8.5, leading=11, spaceBefore=6,
                                        spaceAfter=4),
        "equation": ParagraphStyle("equation", parent=body, alignment=TA_CENTER, spaceBefore=2, spaceAfter=8),
        "cell": ParagraphStyle("cell", parent=body, fontSize=8.5, leading=11, spaceAfter=0),
        "title": ParagraphStyle("title", fontName="Sans-Bold", fontSize=22, leading=28, alignment=TA_CENTER),
        "subtitle": ParagraphStyle("subtitle", fontName="Serif-Italic", fontSize=13, leading=18, alignment=TA_CENTER),
        "centre": ParagraphStyle("centre", parent=body, fontSize=12, leading=18, alignment=TA_CENTER),
        "toc1": ParagraphStyle("toc1", fontName="Sans-Bold", fontSize=11, leading=16, leftIndent=0),
        "toc2": ParagraphStyle("toc2", fontName="Serif", fontSize=10, leading=13, leftIndent=18),
    }


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inline(text, refs):
    """Markdown inline markup -> reportlab paragraph markup. `code` spans are protected from the other rules."""
    text = escape(text)
    spans = []

    def keep(m):
        spans.append(f'<font name="Mono" size="8.5">{m.group(1)}</font>')
        return f"\x00{len(spans) - 1}\x00"

    text = re.sub(r"`([^`]+)`", keep, text)

    def reference(m):
        if m.group(0)[1:] not in refs:
            raise ReportError(f"reference to an unknown label {m.group(0)}")
        return refs[m.group(0)[1:]]

    text = re.sub(r"@(?:fig|tab):[\w-]+", reference, text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)
    text = re.sub(r"~([^~\s]+)~", r"<sub>\1</sub>", text)
    text = re.sub(r"\^([^\^\s]+)\^", r"<super>\1</super>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], text)


FIGURE = re.compile(r"!\[(?P<caption>.*)\]\((?P<path>[^)]+)\)"
                    r"\{#(?P<label>fig:[\w-]+)(?:\s+width=(?P<width>[\d.]+))?\}$")
TABLE = re.compile(r"Table:\s*(?P<caption>.*?)\s*\{#(?P<label>tab:[\w-]+)\}$")


def join_directives(lines):
    """A figure or table caption may run over several source lines: each becomes one line, up to its {#label}."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(("![", "Table:")):
            while not re.search(r"\{#[^}]*\}\s*$", line) and i + 1 < len(lines) and lines[i + 1].strip():
                i += 1
                line = line.rstrip() + " " + lines[i].strip()
        out.append(line)
        i += 1
    return out


def number_labels(lines):
    """'fig:x' -> 'Figure 3', 'tab:y' -> 'Table 1', numbered in order of appearance."""
    refs, counts = {}, {"fig": 0, "tab": 0}
    for line in lines:
        m = FIGURE.match(line.strip()) or TABLE.match(line.strip())
        if m:
            kind = m.group("label")[:3]
            counts[kind] += 1
            if m.group("label") in refs:
                raise ReportError(f"label {m.group('label')} is used twice")
            refs[m.group("label")] = f"{'Figure' if kind == 'fig' else 'Table'} {counts[kind]}"
    return refs


class Heading(Paragraph):
    """A heading that the document records in the contents and the PDF outline."""

    def __init__(self, number, text, style, level):
        super().__init__(f"{number}&nbsp;&nbsp;{text}", style)
        self.level, self.key = level, f"h{number}"
        self.plain = f"{number}  " + re.sub(r"<[^>]+>", "", text).replace("&amp;", "&").replace("&lt;", "<")


def figure_path(text, results_dir):
    """Figures come from results/ (or from the results_dir that stands in for it); photos/ figures from the
    photos/ folder that a build with --data-dir draws inside it."""
    if text.startswith(PHOTO_FIGURES):
        return Path(results_dir) / text
    if not text.startswith("results/"):
        raise ReportError(f"figure {text} is not in results/: the report shows only what results/ holds")
    return Path(results_dir) / text[len("results/"):]


def without_photo_figures(lines):
    """The source lines less the figures that only a build with the training photos can draw."""
    return [line for line in lines
            if not ((m := FIGURE.match(line.strip())) and m.group("path").startswith(PHOTO_FIGURES))]


def figure(m, refs, styles, width, results_dir):
    path = figure_path(m.group("path"), results_dir)
    if not path.is_file():
        raise ReportError(f"figure {path} does not exist; rebuild the results (see Readme.txt)")
    w, h = ImageReader(str(path)).getSize()
    draw_w = width * float(m.group("width") or 1.0)
    draw_h = draw_w * h / w
    if draw_h > 15 * cm:  # a tall figure shrinks to fit beside its caption
        draw_w, draw_h = draw_w * 15 * cm / draw_h, 15 * cm
    caption = Paragraph(f"<b>{refs[m.group('label')]}.</b> {inline(m.group('caption'), refs)}", styles["caption"])
    height = 4 + draw_h + caption.wrap(width, A4[1])[1] + caption.style.spaceBefore + caption.style.spaceAfter
    return height, [KeepTogether([Spacer(1, 4), Image(as_jpeg(path), draw_w, draw_h), caption])]


def as_jpeg(path):
    """The figure as JPEG bytes (quality 92, full colour resolution), laid on white. reportlab would embed a PNG's
    raw pixels, and the noisy sample grids barely compress: this keeps the PDF a few MB, with no visible loss."""
    with PILImage.open(path) as img:
        rgba = img.convert("RGBA")
    flat = PILImage.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, "JPEG", quality=92, subsampling=0)
    buffer.seek(0)
    return buffer


def column_widths(rows, style, width):
    """Each column as wide as its longest cell (header in bold), plus padding. If they do not fit, the wide columns are
    capped at the one width that makes the total fit and their text wraps, but never below their longest word."""
    def text_width(markup, bold):
        return pdfmetrics.stringWidth(re.sub(r"<[^>]+>", "", markup), style.fontName + ("-Bold" if bold else ""),
                                      style.fontSize) + 14

    columns = list(zip(*rows))
    natural = [max(text_width(c, i == 0) for i, c in enumerate(col)) for col in columns]
    shortest = [max(text_width(word, i == 0) for i, c in enumerate(col) for word in c.split()) for col in columns]
    low, high = 0.0, max(natural)
    for _ in range(40):  # bisect for the cap
        cap = (low + high) / 2
        fits = sum(max(min(w, cap), m) for w, m in zip(natural, shortest)) <= width
        low, high = (cap, high) if fits else (low, cap)
    return [max(min(w, low), m) for w, m in zip(natural, shortest)]


def table(caption_match, rows, refs, styles, width):
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    header, rule, body = cells[0], cells[1], cells[2:]
    label = caption_match.group("label")
    if not all(c and set(c) <= set(":-") for c in rule) or any(len(r) != len(header) for r in body):
        raise ReportError(f"table {label}: needs a | --- | rule line and the same number of cells in every row")
    right = [c.endswith(":") and not c.startswith(":") for c in rule]
    cell, cell_right = styles["cell"], ParagraphStyle("cell_right", parent=styles["cell"], alignment=TA_RIGHT)
    data = [[Paragraph(f"<b>{inline(c, refs)}</b>", cell_right if r else cell) for c, r in zip(header, right)]]
    data += [[Paragraph(inline(c, refs), cell_right if r else cell) for c, r in zip(row, right)] for row in body]
    plain = [[inline(c, refs) for c in row] for row in [header] + body]
    t = Table(data, colWidths=column_widths(plain, cell, width), repeatRows=1, hAlign="CENTER")
    t.setStyle(TableStyle([("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                           ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black),
                           ("VALIGN", (0, 0), (-1, -1), "TOP"),
                           ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f4f4f4")])]))
    caption = Paragraph(f"<b>{refs[label]}.</b> {inline(caption_match.group('caption'), refs)}",
                        styles["table_caption"])
    # a short table stays whole; a long one may break across pages (its header row repeats), but never right
    # after its caption
    _, height = t.wrap(width, A4[1])
    return min(height + 1.5 * cm, 6 * cm), [caption, t, Spacer(1, 10)]


def add_block(story, height, block):
    """Appends a figure or table that needs `height` on its page; the headings right above it go with it."""
    headings = []
    while story and isinstance(story[-1], Heading):
        headings.insert(0, story.pop())
        story.pop()  # the heading's own CondPageBreak
    story += [CondPageBreak(height + 2 * cm * len(headings))] + headings + block


def blocks_to_flowables(lines, refs, styles, width, results_dir):
    """The filled-in source lines -> flowables. Chapters and sections are numbered here."""
    story, chapter, section, i = [], 0, 0, 0
    paragraph = []

    def flush():
        if paragraph:
            story.append(Paragraph(inline(" ".join(paragraph), refs), styles["body"]))
            paragraph.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = len(stripped) - len(stripped.lstrip("#"))
            text = inline(stripped[level:].strip(), refs)
            if level == 1:
                chapter, section = chapter + 1, 0
                story += [CondPageBreak(5 * cm), Heading(f"{chapter}", text, styles["h1"], 0)]
            else:
                section += 1
                story += [CondPageBreak(3 * cm), Heading(f"{chapter}.{section}", text, styles["h2"], 1)]
        elif stripped.startswith("$$") and stripped.endswith("$$") and len(stripped) > 4:
            flush()
            story.append(Paragraph(inline(stripped[2:-2].strip(), refs), styles["equation"]))
        elif stripped.startswith("```"):
            flush()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
            if end is None:
                raise ReportError(f"code block opened by {stripped!r} is never closed")
            code = lines[i + 1:end]
            too_long = [c for c in code if len(c) > MAX_CODE_CHARS]
            if too_long:
                raise ReportError(f"code line longer than {MAX_CODE_CHARS} characters: {too_long[0]}")
            block = Preformatted("\n".join(code), styles["code"])
            lead_in = [story.pop()] if story and isinstance(story[-1], Paragraph) else []  # "Run this:" stays with it
            story.append(KeepTogether(lead_in + [block]))
            i = end
        elif FIGURE.match(stripped):
            flush()
            add_block(story, *figure(FIGURE.match(stripped), refs, styles, width, results_dir))
        elif TABLE.match(stripped):
            flush()
            end = i + 1
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            add_block(story, *table(TABLE.match(stripped), lines[i + 1:end], refs, styles, width))
            i = end - 1
        elif stripped.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip():
                if lines[i].strip().startswith("- "):
                    items.append(lines[i].strip()[2:])
                else:  # an indented continuation of the item above
                    items[-1] += " " + lines[i].strip()
                i += 1
            story.append(ListFlowable([ListItem(Paragraph(inline(t, refs), styles["bullet"]), leftIndent=14)
                                       for t in items], bulletType="bullet", start="\u2022", leftIndent=14,
                                      bulletFontName="Serif",
                                      spaceAfter=6))
            continue
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return story


# ---------------------------------------------------------------------------------------------
# The document: title page, contents, chapters; page numbers; report/built_from.json
# ---------------------------------------------------------------------------------------------

class ReportDoc(BaseDocTemplate):
    def __init__(self, path, author, **kwargs):
        super().__init__(str(path), pagesize=A4, leftMargin=2.3 * cm, rightMargin=2.3 * cm, topMargin=2.2 * cm,
                         bottomMargin=2.2 * cm, title=TITLE, author=author, subject="DDPM course assignment report",
                         creator="tools/make_report.py", invariant=1, **kwargs)
        frame = Frame(self.leftMargin, self.bottomMargin, self.width, self.height, id="body")
        self.addPageTemplates([PageTemplate("title", [frame]), PageTemplate("page", [frame], onPage=self.footer)])

    @staticmethod
    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Sans", 8)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(doc.leftMargin, 1.2 * cm, TITLE)
        canvas.drawRightString(doc.leftMargin + doc.width, 1.2 * cm, str(doc.page))
        canvas.restoreState()

    def afterFlowable(self, flowable):
        if isinstance(flowable, Heading):
            self.canv.bookmarkPage(flowable.key)
            self.canv.addOutlineEntry(flowable.plain, flowable.key, flowable.level)
            self.notify("TOCEntry", (flowable.level, flowable.plain, self.page, flowable.key))


def title_page(name, roll_number, data, styles):
    m = data["metrics"]
    classes, size = m["classes"], m["config"]["image_size"]
    summary = (f"A denoising diffusion probabilistic model with {m['parameters'] / 1e6:.1f} M parameters, trained on "
               f"{m['data']['train_images']} photos of {names(classes)}, draws new {size} x {size} px animals from "
               f"pure noise.")
    return [Spacer(1, 1.5 * cm), Paragraph(TITLE, styles["title"]), Spacer(1, 0.6 * cm),
            Paragraph(f"A DDPM trained from scratch on {len(classes)} classes of about "
                      f"{m['data']['images_per_class_asked']} photos each", styles["subtitle"]), Spacer(1, 1.5 * cm),
            Paragraph(f"<b>Name:</b> {escape(name)}", styles["centre"]),
            Paragraph(f"<b>Roll number:</b> {escape(roll_number)}", styles["centre"]),
            Spacer(1, 0.4 * cm), Paragraph("Course assignment report", styles["centre"]),
            Spacer(1, 1.5 * cm), Paragraph(escape(summary), ParagraphStyle("s", parent=styles["centre"],
                                                                           fontSize=10.5)),
            Spacer(1, 1.5 * cm)]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def in_submission(folder, path):
    """Where one of the repository's own submission paths (RESULTS, NOTES, DEFAULT_OUT, BUILT_FROM) lies in the
    submission folder `folder`."""
    return Path(folder) / Path(path).relative_to(ROOT)


def input_files(results_dir, notes):
    """Everything the report is made from: the text, the builder, the JSON results, the figures it shows and the
    student's notes."""
    lines = join_directives(SOURCE.read_text(encoding="utf-8").splitlines())
    figures = sorted({figure_path(m.group("path"), results_dir)
                      for line in without_photo_figures(lines) if (m := FIGURE.match(line.strip()))})
    return [SOURCE, Path(__file__).resolve()] + [Path(results_dir) / f for f in DATA_FILES.values()] + figures + \
        ([Path(notes)] if Path(notes).is_file() else [])


def input_digests(folder):
    """{name: sha256, or None where the file is missing} of every input of folder's Report.pdf, each named relative
    to the submission folder where it lies in it, else to the repository (the report's text and builder, for a
    submission made elsewhere)."""
    def name(path):
        path = Path(path).resolve()
        base = Path(folder).resolve() if path.is_relative_to(Path(folder).resolve()) else ROOT
        return path.relative_to(base).as_posix()
    return {name(p): sha256(p) if p.is_file() else None
            for p in input_files(in_submission(folder, RESULTS), in_submission(folder, NOTES))}


def forward_from_photo(data_dir, class_name, cfg, folder):
    """The forward-process figure of the first photo of `class_name` in data_dir, drawn by the script's `forward`
    command into `folder`; returns what the report says about it, with the x_T statistics the command prints."""
    command = [sys.executable, str(ROOT / "rollNumber_05.py"), "forward", "--data-dir", str(data_dir),
               "--class-name", class_name, "--image-size", str(cfg["image_size"]), "--timesteps",
               str(cfg["timesteps"]), "--out", str(Path(folder) / FORWARD_FIGURE)]
    run = subprocess.run(command, capture_output=True, text=True)
    stats = re.search(r"x_T has mean (\S+) and std (\S+)", run.stderr)
    if run.returncode or not stats:
        raise ReportError(f"the forward-process figure from {data_dir} failed: {run.stderr.strip()[-300:]}")
    return {"image": f"the first {class_name} photo of the training data",
            "x_T_mean": float(stats.group(1)), "x_T_std": float(stats.group(2).rstrip(";,."))}


def photo_grid(data_dir, classes, size, path, per_class=10):
    """The first photos of each class, short side resized and centre-cropped to the training size as in training:
    the data as the model sees it."""
    matplotlib.use("Agg")  # files only: works headless and on every OS
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class, len(classes)), squeeze=False)
    for row, name in zip(axes, classes):
        if not (Path(data_dir) / name).is_dir():
            raise ReportError(f"--data-dir {data_dir} has no folder {name}, a class of this run")
        files = sorted(f for f in (Path(data_dir) / name).iterdir()
                       if f.suffix.lower() in PHOTO_SUFFIXES and not f.name.startswith("."))
        for ax, file in zip(row, files):
            with PILImage.open(file) as img:
                ax.imshow(ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (size, size),
                                       method=PILImage.Resampling.BICUBIC))
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        row[0].set_ylabel(name, fontsize=10)
    fig.tight_layout(pad=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def forward_from_results(metrics):
    """What the report says about the committed forward-process figure, which noises a generated image."""
    return {"image": "a sample of the trained model",
            "x_T_mean": metrics["x_T_mean"], "x_T_std": metrics["x_T_std"]}


def build(out=DEFAULT_OUT, name="[Your Name]", roll_number="[Roll Number]", results_dir=None, data_dir=None,
          notes=None):
    """Writes the PDF to `out` from results_dir (default: results/) and the student's notes (default: notes.md
    beside results_dir, in the same submission folder); with data_dir, the forward-process figure noises a
    training photo instead and the photos/ figures are drawn. Returns the number of pages."""
    results_dir = Path(results_dir or RESULTS)
    notes = read_notes(notes or results_dir.parent / NOTES.name)
    data = load_results(results_dir)
    metrics = data["metrics"]
    with tempfile.TemporaryDirectory() as folder:
        if data_dir:
            # a copy of the results in which the photo's figure stands in for the committed one
            results_dir = shutil.copytree(results_dir, Path(folder) / "results")
            data["forward"] = forward_from_photo(data_dir, metrics["classes"][0], metrics["config"], results_dir)
            photo_grid(data_dir, metrics["classes"], metrics["config"]["image_size"],
                       results_dir / PHOTO_FIGURES / "training_data.png")
        else:
            data["forward"] = forward_from_results(metrics)
        return typeset(out, name, roll_number, data, notes, results_dir, photos=bool(data_dir))


def typeset(out, name, roll_number, data, notes, results_dir, photos):
    """Writes the PDF to `out` from the report's source, the values in `data`, the student's `notes` and the
    figures in results_dir; the photos/ figures only if `photos`."""
    lines = join_directives(with_notes(fill_in(SOURCE.read_text(encoding="utf-8").splitlines(), data), notes))
    lines = lines if photos else without_photo_figures(lines)
    refs = number_labels(lines)
    register_fonts()
    styles = make_styles()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")  # a failed build leaves no half-written PDF under the real name
    doc = ReportDoc(part, author=name)
    contents = TableOfContents(levelStyles=[styles["toc1"], styles["toc2"]], dotsMinLevel=0,
                               tableStyle=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                           ("RIGHTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 1),
                                           ("BOTTOMPADDING", (0, 0), (-1, -1), 1)])  # short enough for the title page
    story = title_page(name, roll_number, data, styles) + [  # the contents share the title page
        Paragraph("Contents", styles["h1"]), contents, NextPageTemplate("page"), PageBreak()]
    story += blocks_to_flowables(lines, refs, styles, doc.width, results_dir)
    try:
        doc.multiBuild(story)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return doc.page


def write_built_from(folder=ROOT):
    """folder/report/built_from.json: what folder/Report.pdf was built from."""
    record = {"results_sha256": sha256(in_submission(folder, RESULTS) / "metrics.json"),
              "inputs": input_digests(folder), "report_sha256": sha256(in_submission(folder, DEFAULT_OUT))}
    path = in_submission(folder, BUILT_FROM)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submission-dir", type=Path, default=ROOT, help="the submission folder: results/ and "
                                                                          "notes.md are read from it (default: the "
                                                                          "repository root)")
    parser.add_argument("--name", default="[Your Name]", help="name on the title page (default: %(default)s)")
    parser.add_argument("--roll-number", default="[Roll Number]", help="roll number on the title page "
                                                                       "(default: %(default)s)")
    parser.add_argument("--out", type=Path, help="PDF to write (default: Report.pdf in the submission folder)")
    parser.add_argument("--data-dir", type=Path, help="the training data: the forward-process figure then noises "
                                                      "a real photo (needs --out)")
    args = parser.parse_args(argv)
    own_report = in_submission(args.submission_dir, DEFAULT_OUT)
    out = args.out or own_report
    if args.data_dir and out.resolve() == own_report.resolve():
        parser.error(f"--data-dir puts a training photo into the PDF, and {own_report} must not hold one: give "
                     f"--out PATH for a copy elsewhere (e.g. under dist/)")
    try:
        pages = build(out, args.name, args.roll_number, in_submission(args.submission_dir, RESULTS), args.data_dir,
                      in_submission(args.submission_dir, NOTES))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if out.resolve() == own_report.resolve():
        write_built_from(args.submission_dir)
    print(f"wrote {out} ({pages} pages)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
