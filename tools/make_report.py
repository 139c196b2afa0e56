"""Builds a submission's Report.pdf from the template report/report.typ, its results/ and its notes.md.

    python tools/make_report.py --name NAME --roll-number ROLL [--submission-dir DIR] [--out PATH] [--data-dir PATH]

The repository's own Report.pdf: --name Example --roll-number 00-0000 (the names of its run of make_submission.py).
A submission folder DIR (default: the repository root) holds what tools/make_submission.py made for the student's
own classes: saved_models/ddpm_animals.pt, results/ (figures and metrics.json) and notes.md, the student's reading.

report/report.typ is Typst markup (https://typst.app/docs) and a Jinja2 template, filled in with `metrics`
(results/metrics.json), `forward` (the forward-process figure's numbers), `photos` (whether the training photos are
shown) and `notes("Section title")` (the student's text). A float must be given a format: {{ x|fmt(".2f") }}; a key
missing from the results stops the build, naming the template line; every value is escaped for Typst, so a class
name or a note prints as written. Typst numbers the headings, figures and tables and resolves @fig:x and @tab:x.

While building, the script's own functions draw into built/ (DIR's figures are results/): the forward process (of
the first photo of the first class with --data-dir, else of a sample of DIR's model), the loss by t, and with
--data-dir the photos as the model sees them and each test sample beside its nearest photos. The photos' licence
keeps them out of the repository, so a report built with --data-dir must be written elsewhere than DIR/Report.pdf.

Building DIR/Report.pdf (the default --out) also writes DIR/report/built_from.json: the sha256 of every input and
of the PDF (tests/test_report.py checks that the committed report is current). The PDF is byte-for-byte
reproducible: Typst uses only the fonts it ships, and no date.
"""
import argparse
import json
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import jinja2
import typst

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import make_results as figures  # noqa: E402
import rollNumber_05 as ddpm  # noqa: E402
from make_results import sha256  # noqa: E402

SOURCE = ROOT / "report" / "report.typ"
# the paths of a submission folder: the repository is one (ROOT), tools/make_submission.py --out-dir makes others
MODEL, RESULTS, NOTES = "saved_models/ddpm_animals.pt", "results", "notes.md"
REPORT, BUILT_FROM = "Report.pdf", "report/built_from.json"
NOTES_TITLE = "# Notes for Report.pdf"
NOTES_BLANK = "(write your reading of these results here)"
NOTES_HELP = ("Replace each line in parentheses with your own reading of that chapter's results (what the figures "
              "show, what surprised you, what you would try next); Report.pdf prints each section at the end of "
              "its chapter, so rebuild the report after editing.")
NOTES_CALL = re.compile(r'\{\{\s*notes\("([^"]+)"\)\s*\}\}')


class ReportError(Exception):
    """A problem in the template or the results that the author must fix; printed as one line."""


# --- The text: report/report.typ filled in with the results -----------------------------------------------------

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
                               comment_end_string="-->")  # as in markdown and HTML; Typst code may hold {#
TEMPLATES.filters.update(fmt=fmt, names=names, rate=figures.lr_label)
TEMPLATES.globals.update(alpha_bar=alpha_bar, argmin=argmin)

# the characters that start markup in Typst text (strong, emphasis, raw, math, code, references, labels, content,
# non-breaking space, comments, headings); a backslash before one prints it as it is
TYPST_SPECIAL = re.compile(r"[\\*_`$#@<\[\]~/=]")


class TypstMarkup(str):
    """Text that is Typst markup already, which escape_for_typst leaves as it is."""


def escape_for_typst(value):
    """The report's finalize: every value prints as written, so a class name or a note may hold * _ # $ @ < [ ]."""
    value = refuse_bare_float(value)
    return value if isinstance(value, TypstMarkup) else TYPST_SPECIAL.sub(lambda m: "\\" + m.group(), str(value))


# the report's own environment: the one above, with every value escaped for Typst (BENCHMARKS.md stays markdown)
REPORT_TEMPLATES = TEMPLATES.overlay(finalize=escape_for_typst)


def render_text(metrics, forward, photos, notes, source=SOURCE):
    """The report's Typst markup: the template filled in with these results and the student's notes."""
    def notes_of(title):
        return notes.get(title) or TypstMarkup(f"_Still blank: write your reading under “{escape_for_typst(title)}” "
                                               f"in notes.md and rebuild the report._")
    return fill(source, REPORT_TEMPLATES, metrics=metrics, forward=forward, photos=photos, notes=notes_of)


def fill(source, templates=TEMPLATES, **values):
    """The template file `source` filled in with `values`; an error names the template's line."""
    try:
        return templates.from_string(Path(source).read_text(encoding="utf-8")).render(**values)
    except jinja2.TemplateSyntaxError as err:
        raise ReportError(f"{Path(source).name} line {err.lineno}: {err.message}") from None
    except (jinja2.UndefinedError, ReportError, TypeError, ValueError) as err:
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == "<template>"]
        raise ReportError(f"{Path(source).name} line {lines[-1] if lines else '?'}: {err}") from None


# --- The student's notes: notes.md holds a section for each notes("...") of the template ------------------------

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


# --- The build: figures drawn now, the text, the PDF, report/built_from.json ------------------------------------

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


def build(submission_dir, out, name, roll_number, data_dir=None):
    """Writes the report of submission_dir to `out` (None: its Report.pdf), with the student's name and roll number
    on the title page; with data_dir, the figures that show the training photos too."""
    submission_dir, metrics_path = Path(submission_dir), Path(submission_dir) / RESULTS / "metrics.json"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path} is missing; make it with python tools/make_submission.py (see Readme.txt)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    notes = read_notes(submission_dir / NOTES)
    # Typst reads files only under its root folder: the figures of results/ are copied beside the built ones
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "built").mkdir()
        (root / "results").mkdir()
        for png in (submission_dir / RESULTS).glob("*.png"):
            shutil.copy(png, root / "results")
        forward = draw_figures(submission_dir, metrics, data_dir, root / "built")
        (root / "report.typ").write_text(render_text(metrics, forward, bool(data_dir), notes), encoding="utf-8")
        try:  # only the fonts Typst ships: the same PDF on every machine
            pdf = typst.compile(root / "report.typ", root=root, ignore_system_fonts=True,
                                sys_inputs={"name": name, "roll": roll_number})
        except typst.TypstError as err:  # e.g. a figure missing from results/: named in the submission folder
            raise ReportError(f"Typst: {err.message.replace(str(root), str(submission_dir))}") from None
    out = Path(out or submission_dir / REPORT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pdf)


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
    record = {"inputs": input_digests(folder), "report_sha256": sha256(folder / REPORT)}
    (folder / BUILT_FROM).parent.mkdir(parents=True, exist_ok=True)
    (folder / BUILT_FROM).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submission-dir", type=Path, default=ROOT, help="the submission folder: its model, results/ "
                        "and notes.md are read (default: the repository root)")
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
        build(args.submission_dir, out, args.name, args.roll_number, args.data_dir)
    except (ReportError, ddpm.UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if out.resolve() == own_report.resolve():
        write_built_from(args.submission_dir)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
