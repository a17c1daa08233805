"""Compare the runs of a sweep: ``histo-compare <multirun dir> [--sort METRIC] [--sort-split val|test] [--split test|val]``.

Prints a table (one row per run: the overrides that differ, metrics with 95 % intervals; unfinished
and broken runs with their state) and writes it as ``compare.md`` and ``compare.csv`` into the
directory (or ``--out``). The logic is :mod:`histo.evaluation.run_comparison`; this module is the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histo.command import USAGE_STATUS
from histo.evaluation.metrics import METRICS
from histo.evaluation.run_comparison import comparison, to_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="histo-compare", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a multirun directory (or any directory of finished runs)")
    parser.add_argument("--sort", default="balanced_accuracy", choices=METRICS, help="metric to sort by (best first)")
    parser.add_argument("--sort-split", default="val", choices=("val", "test"),
                        help="split whose metric sorts the runs (default val: choosing on test selects on what is reported)")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="split whose metrics are shown")
    parser.add_argument("--out", type=Path, default=None, help="where to write compare.md/.csv (default: root)")
    args = parser.parse_args(argv)
    try:
        frame = comparison(args.root, args.split, args.sort, args.sort_split)
    except (FileNotFoundError, ValueError) as error:
        print(f"histo-compare: {error}", file=sys.stderr)
        return USAGE_STATUS
    table = to_markdown(frame)
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(
        f"# {len(frame)} runs under {args.root} ({args.split} metrics, sorted by {args.sort_split} {args.sort})\n\n{table}")
    frame.to_csv(out / "compare.csv", index=False)
    print(table)
    print(f"Written: {out / 'compare.md'}, {out / 'compare.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
