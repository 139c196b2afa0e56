"""Builds a submission's Report.pdf from the template report/report.md, its results/ and its notes.md.

    python tools/make_report.py --name NAME --roll-number ROLL [--submission-dir DIR] [--out PATH]
                                [--data-dir PATH]

The repository's own Report.pdf: python tools/make_report.py --name Example --roll-number 00-0000 (the names of its
run of tools/make_submission.py).

A submission folder DIR (default: the repository root) holds what tools/make_submission.py made for the student's
own classes: saved_models/ddpm_animals.pt, results/ (figures and metrics.json) and notes.md, the student's own
reading of them. report/report.md is a Jinja2 template (https://jinja.palletsprojects.com) of a small markdown
subset, filled in with `metrics` (results/metrics.json), `forward` (the forward-process figure's numbers), `photos`
(whether the training photos are shown) and `notes("Section title")` (the student's text). A float must be given
a format: {{ x|fmt(".2f") }}; a key missing from the results stops the build, naming the template line. A sentence
that reads a figure sits in an {% if %} on the numbers that make it true. The markdown subset:

    # Chapter, ## Section          numbered headings; they fill the contents page and the PDF outline
    paragraphs, "- " bullets, $$ a centred equation line $$, **bold**, *italic*, `code`, x~sub~, x^sup^
    ![caption](results/x.png){#fig:name width=0.8}  a numbered figure from DIR/results/; @fig:name refers to it
    ![caption](built/x.png){#fig:name}              a figure drawn while building (below)
    Table: caption {#tab:name}, then | a | b | rows  a numbered table (---: right-aligns a column); @tab:name
    <!-- comment -->                                 left out of the report

While building, the script's own functions draw into built/: the forward process (of the first photo of the first
class with --data-dir, else of a sample of DIR's model), the loss by t, and with --data-dir the photos as the model
sees them and each test sample beside its nearest photos. The photos' licence keeps them out of the repository, so
a report built with --data-dir must be written somewhere other than DIR/Report.pdf.

Building DIR/Report.pdf (the default --out) also writes DIR/report/built_from.json: the sha256 of
DIR/results/metrics.json (which tools/package_submission.py checks) and of every other input (tests/test_report.py
checks them all). The PDF is byte-for-byte reproducible on one machine (reportlab's invariant mode).
"""
import argparse
import io
import json
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

import jinja2
import matplotlib
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (BaseDocTemplate, CondPageBreak, Frame, Image, KeepTogether, ListFlowable, ListItem,
                                NextPageTemplate, PageBreak, PageTemplate, Paragraph, Spacer, Table, TableStyle)
from reportlab.platypus.tableofcontents import TableOfContents

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import make_results as figures  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from make_results import sha256  # noqa: E402

SOURCE = ROOT / "report" / "report.md"
# the paths of a submission folder: the repository is one (ROOT), tools/make_submission.py --out-dir makes others
MODEL, RESULTS, NOTES = "saved_models/ddpm_animals.pt", "results", "notes.md"
REPORT, BUILT_FROM = "Report.pdf", "report/built_from.json"
NOTES_TITLE = "# Notes for Report.pdf"
NOTES_BLANK = "(write your reading of these results here)"
NOTES_HELP = ("Replace each line in parentheses with your own reading of that chapter's results (what the figures "
              "show, what surprised you, what you would try next); Report.pdf prints each section at the end of "
              "its chapter, so rebuild the report after editing.")
NOTES_CALL = re.compile(r'\{\{\s*notes\("([^"]+)"\)\s*\}\}')
TITLE = "Generating animal images with a denoising diffusion model"


class ReportError(Exception):
    """A problem in the template or the results that the author must fix; printed as one line."""


# ---------------------------------------------------------------------------------------------
# The text: report/report.md filled in with the results
# ---------------------------------------------------------------------------------------------

def names(items):
    """['A', 'B', 'C'] -> 'A, B and C'; numbers as written, [1.0, 2.5] -> '1 and 2.5'."""
    items = [format(i, "g") if isinstance(i, float) else str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def argmin(values):
    """The index of the smallest value that is not None (not measured), or None if none is."""
    measured = [i for i, v in enumerate(values) if v is not None]
    return min(measured, key=values.__getitem__) if measured else None


def fmt(value, spec):
    """format() for the template, {{ x|fmt(".2f") }}; a missing key raises Jinja's error that names it."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # documented for Undefined subclasses
    return format(value, spec)


def refuse_bare_float(value):
    """Jinja's finalize: every float in the text is formatted on purpose, never printed with 16 digits."""
    if isinstance(value, float):
        raise ReportError(f"the float {value!r} needs a format, e.g. {{{{ x|fmt('.2f') }}}}")
    return value


def alpha_bar(t, timesteps):
    """alpha_bar_t (paper numbering, t = 1..T) of the script's own noise schedule."""
    return float(ddpm.NoiseSchedule(timesteps).alphas_cumprod[t - 1])


TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               finalize=refuse_bare_float, comment_start_string="<!--",
                               comment_end_string="-->")  # so that {#fig:x} stays a label
TEMPLATES.filters.update(fmt=fmt, names=names, rate=figures.lr_label)
TEMPLATES.globals.update(alpha_bar=alpha_bar, argmin=argmin)


def render_text(metrics, forward, photos, notes, source=SOURCE):
    """The report's markdown: the template filled in with these results and the student's notes."""
    def notes_of(title):
        text = notes.get(title, "")
        return text or f"*Still blank: write your reading under “{title}” in notes.md and rebuild the report.*"
    return fill(source, metrics=metrics, forward=forward, photos=photos, notes=notes_of)


def fill(source, **values):
    """The template file `source` filled in with `values`; an error names the template's line."""
    try:
        return TEMPLATES.from_string(Path(source).read_text(encoding="utf-8")).render(**values)
    except jinja2.TemplateSyntaxError as err:
        raise ReportError(f"{Path(source).name} line {err.lineno}: {err.message}") from None
    except (jinja2.UndefinedError, ReportError, TypeError, ValueError) as err:
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == "<template>"]
        raise ReportError(f"{Path(source).name} line {lines[-1] if lines else '?'}: {err}") from None


# ---------------------------------------------------------------------------------------------
# The student's notes: notes.md holds a section for each notes("...") of the template
# ---------------------------------------------------------------------------------------------

def notes_sections(source=SOURCE):
    """The titles of the template's notes("...") calls, in order: the sections notes.md has."""
    titles = NOTES_CALL.findall(Path(source).read_text(encoding="utf-8"))
    if len(set(titles)) < len(titles):
        raise ReportError(f"{Path(source).name}: two notes sections have the same title")
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
    """The titles of the template's notes sections that notes.md leaves blank or lacks, in order."""
    notes = read_notes(path)
    return [title for title in notes_sections(source) if not notes.get(title)]


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


def figure_path(text, folders):
    """'results/x.png' or 'built/x.png' -> the file in the folder of that name."""
    folder, _, name = text.partition("/")
    if folder not in folders:
        raise ReportError(f"figure {text} is in neither {' nor '.join(f'{f}/' for f in folders)}")
    return Path(folders[folder]) / name


def figure(m, refs, styles, width, folders):
    path = figure_path(m.group("path"), folders)
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


def blocks_to_flowables(lines, refs, styles, width, folders):
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
        elif FIGURE.match(stripped):
            flush()
            add_block(story, *figure(FIGURE.match(stripped), refs, styles, width, folders))
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
# The document: title page, contents, chapters; page numbers
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


def title_page(name, roll_number, m, styles):
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


# ---------------------------------------------------------------------------------------------
# The build: figures drawn now, the text, the PDF, report/built_from.json
# ---------------------------------------------------------------------------------------------

def draw_figures(submission_dir, metrics, data_dir, folder):
    """The figures drawn at build time into `folder` by the script's and make_results' own functions: the loss by
    t; the forward process of the first photo of the first class (with data_dir) or of a sample of the model; with
    data_dir also the photos as the model sees them and the test samples beside their nearest photos. Returns what
    the report says of the forward process."""
    model, schedule, cfg = ddpm.load_model(Path(submission_dir) / MODEL, "cpu")
    seed = metrics["run"]["seed"]
    curves = {f"chosen model, step {metrics['chosen']['step']:,}": metrics["evaluation"]["denoising_loss_per_t"]}
    curves.update({f"lr {run['label']} run": run["denoising_loss_per_t"] for run in metrics["lr_sweep"]["runs"]
                   if run.get("denoising_loss_per_t")})
    figures.loss_by_t(curves, folder / "loss_by_t.png")
    if data_dir:
        images, labels = ddpm.training_images(data_dir, cfg)
        figures.training_photos(images, labels, cfg.classes, folder / "training_photos.png")
        figures.nearest_neighbours(model, schedule, cfg, images, folder, seed, show_photos=True)
        x0, image = images[0], f"the first {cfg.classes[0]} photo of the training data"
    else:
        x0 = ddpm.generate_from_noise(model, schedule, ddpm.seeded_noise(1, cfg.image_size, seed), "ddim", 50,
                                      labels=ddpm.class_labels(cfg, 1), guidance=ddpm.guidance_for(cfg), seed=seed)[0]
        image = f"a {cfg.classes[0]} sample of the trained model"
    snapshots, spread = ddpm.plot_forward_process(schedule, x0, folder / "forward_process.png", seed)
    x_T = snapshots[cfg.timesteps]
    return {"image": image, "x_T_mean": float(x_T.mean()), "x_T_std": float(x_T.std()),
            "std_x0": spread[0][1], "largest_gap": max(abs(measured - predicted) for measured, predicted
                                                       in spread.values())}


def load_metrics(submission_dir):
    path = Path(submission_dir) / RESULTS / "metrics.json"
    if not path.is_file():
        raise ReportError(f"{path} is missing; make it with python tools/make_submission.py (see Readme.txt)")
    return json.loads(path.read_text(encoding="utf-8"))


def build(submission_dir, out, name, roll_number, data_dir=None):
    """Writes the report of submission_dir to `out` (None: its Report.pdf), with the student's name and roll number
    on the title page; with data_dir, the figures that show the training photos too. Returns the number of pages."""
    submission_dir = Path(submission_dir)
    metrics = load_metrics(submission_dir)
    notes = read_notes(submission_dir / NOTES)
    with tempfile.TemporaryDirectory() as built:
        forward = draw_figures(submission_dir, metrics, data_dir, Path(built))
        text = render_text(metrics, forward, bool(data_dir), notes)
        return typeset(text, Path(out or submission_dir / REPORT), name, roll_number, metrics,
                       {"results": submission_dir / RESULTS, "built": Path(built)})


def typeset(text, out, name, roll_number, metrics, folders):
    """Writes the PDF to `out` from the filled-in markdown and the figures in `folders`."""
    lines = join_directives(text.splitlines())
    refs = number_labels(lines)
    register_fonts()
    styles = make_styles()
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")  # a failed build leaves no half-written PDF under the real name
    doc = ReportDoc(part, author=name)
    contents = TableOfContents(levelStyles=[styles["toc1"], styles["toc2"]], dotsMinLevel=0,
                               tableStyle=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                           ("RIGHTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 1),
                                           ("BOTTOMPADDING", (0, 0), (-1, -1), 1)])  # short enough for the title page
    story = title_page(name, roll_number, metrics, styles) + [  # the contents share the title page
        Paragraph("Contents", styles["h1"]), contents, NextPageTemplate("page"), PageBreak()]
    story += blocks_to_flowables(lines, refs, styles, doc.width, folders)
    try:
        doc.multiBuild(story)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return doc.page


def input_digests(submission_dir):
    """{name: sha256, or None where missing} of every input of submission_dir's Report.pdf: the template, the
    builder and the figure code, the model, the results and the notes, each named relative to the submission folder
    where it lies in it, else to the repository."""
    folder = Path(submission_dir).resolve()
    inputs = [SOURCE, Path(__file__), Path(figures.__file__), Path(ddpm.__file__), folder / MODEL, folder / NOTES,
              *sorted((folder / RESULTS).glob("*.png")), folder / RESULTS / "metrics.json"]

    def name(path):
        path = Path(path).resolve()
        return path.relative_to(folder if path.is_relative_to(folder) else ROOT).as_posix()
    return {name(p): sha256(p) if Path(p).is_file() else None for p in inputs}


def write_built_from(submission_dir):
    """submission_dir/report/built_from.json: what its Report.pdf was built from."""
    folder = Path(submission_dir)
    record = {"results_sha256": sha256(folder / RESULTS / "metrics.json"), "inputs": input_digests(folder),
              "report_sha256": sha256(folder / REPORT)}
    (folder / BUILT_FROM).parent.mkdir(parents=True, exist_ok=True)
    (folder / BUILT_FROM).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submission-dir", type=Path, default=ROOT, help="the submission folder: its model, "
                                                                          "results/ and notes.md are read "
                                                                          "(default: the repository root)")
    parser.add_argument("--name", required=True, help="the student's name, on the title page")
    parser.add_argument("--roll-number", required=True, help="the student's roll number, on the title page")
    parser.add_argument("--out", type=Path, help="PDF to write (default: Report.pdf in the submission folder)")
    parser.add_argument("--data-dir", type=Path, help="the training photos: the report then shows them (needs "
                                                      "--out)")
    args = parser.parse_args(argv)
    own_report = args.submission_dir / REPORT
    out = args.out or own_report
    if args.data_dir and out.resolve() == own_report.resolve():
        parser.error(f"--data-dir puts the training photos into the PDF, and {own_report} must not hold them: give "
                     f"--out PATH for a copy elsewhere (e.g. under dist/)")
    try:
        pages = build(args.submission_dir, out, args.name, args.roll_number, args.data_dir)
    except (ReportError, ddpm.UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if out.resolve() == own_report.resolve():
        write_built_from(args.submission_dir)
    print(f"wrote {out} ({pages} pages)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
