"""Builds BENCHMARKS.md from report/benchmarks.md and results/bench_*.json (and metrics.json).

    python tools/make_benchmarks.py [--check]

The speed and engineering record of the repository: benchmarks, what made the code faster, and the commands
behind results/. It stays out of Report.pdf and out of the submission. The source uses the placeholders,
!let and !check lines of tools/make_report.py; the output is plain markdown. --check writes nothing and fails
when BENCHMARKS.md is not what the current source and results give.
"""
import argparse
import sys
from pathlib import Path

from make_report import RESULTS, ROOT, ReportError, fill_in, load_results

SOURCE = ROOT / "report" / "benchmarks.md"
OUT = ROOT / "BENCHMARKS.md"
DATA_FILES = {"metrics": "metrics.json", "bench_cpu": "bench_cpu.json", "bench_cuda": "bench_cuda.json",
              "bench_cuda_compile": "bench_cuda_compile.json"}
HEADER = "<!-- Built by python tools/make_benchmarks.py from report/benchmarks.md and results/; do not edit. -->"


def render(source=SOURCE, results_dir=RESULTS):
    """The text of BENCHMARKS.md."""
    lines = fill_in(Path(source).read_text(encoding="utf-8").splitlines(), load_results(results_dir, DATA_FILES),
                    Path(source).name)
    return "\n".join([HEADER] + lines).rstrip() + "\n"


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
        print(f"{OUT.name} is {'current' if current else 'stale: run python tools/make_benchmarks.py'}",
              file=sys.stderr)
        return 0 if current else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
