"""Builds BENCHMARKS.md from report/benchmarks.md and results/bench_*.json (and metrics.json).

    python tools/experiments/make_benchmarks.py [--check]

The speed and engineering record of the repository: benchmarks, what made the code faster, and the commands
behind results/. It stays out of Report.pdf and out of the submission. The source is a Jinja2 template filled in
by tools/make_report.py's fill, with pick(rows, key=value) to find a row and fail(claim) to stop on a false claim;
the output is plain markdown. --check writes nothing and fails when BENCHMARKS.md is not what the current source
and results give.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, for make_report's template filling
from make_report import ROOT, ReportError, fill  # noqa: E402

RESULTS = ROOT / "results"
SOURCE = ROOT / "report" / "benchmarks.md"
OUT = ROOT / "BENCHMARKS.md"
DATA = ("metrics", "bench_cpu", "bench_cuda", "bench_cuda_compile")  # results/NAME.json, named so in the template
HEADER = ("<!-- Built by python tools/experiments/make_benchmarks.py from report/benchmarks.md and results/; "
          "do not edit. -->")


def pick(rows, **match):
    """The one row of a list of dicts whose keys equal `match`, e.g. pick(bench_cpu.training, model="ours")."""
    found = [row for row in rows if all(row.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise ReportError(f"pick({match}) matched {len(found)} rows, not 1")
    return found[0]


def fail(claim):
    raise ReportError(f"claim is false with these results: {claim}")


def render():
    """The text of BENCHMARKS.md."""
    data = {name: json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8")) for name in DATA}
    text = fill(SOURCE, pick=pick, fail=fail, abs=abs, **data)
    return (HEADER + "\n" + text).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether BENCHMARKS.md is current")
    args = parser.parse_args(argv)
    try:
        text = render()
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check:
        current = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT.name} is {'current' if current else 'stale: run python tools/experiments/make_benchmarks.py'}",
              file=sys.stderr)
        return 0 if current else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
