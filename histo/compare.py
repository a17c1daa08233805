"""Compare the runs of a sweep: ``histo-compare root=<multirun dir> [sort=auroc] [sort_split=val|test]
[split=test|val] [out=<dir>]`` (or ``python -m histo.compare ...``).

Prints a table (one row per run: the overrides that differ, metrics with 95 % intervals; unfinished
and broken runs with their state) and writes it as ``compare.md`` and ``compare.csv`` into ``root``
(or ``out``). The logic is :mod:`histo.evaluation.run_comparison`; this module is the command.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from histo.command import UserError, hydra_command
from histo.evaluation.metrics import METRICS
from histo.evaluation.run_comparison import comparison, to_markdown

SPLITS = ("test", "val")


def compare(cfg: DictConfig) -> pd.DataFrame:
    """Table the runs under ``cfg.root``, print the table and write compare.md/.csv."""
    if OmegaConf.is_missing(cfg, "root") or not cfg.root:
        raise UserError("root=<directory> is missing: the multirun directory (or any directory of runs) to compare.")
    if cfg.sort not in METRICS:
        raise UserError(f"sort={cfg.sort} is not a metric; use one of {', '.join(METRICS)}.")
    for key in ("split", "sort_split"):
        if cfg[key] not in SPLITS:
            raise UserError(f"{key}={cfg[key]} is not valid; use test or val.")
    root = Path(cfg.root)
    try:
        frame = comparison(root, cfg.split, cfg.sort, cfg.sort_split)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    table = to_markdown(frame)
    out = Path(cfg.out) if cfg.out else root
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(
        f"# {len(frame)} runs under {root} ({cfg.split} metrics, sorted by {cfg.sort_split} {cfg.sort})\n\n{table}")
    frame.to_csv(out / "compare.csv", index=False)
    print(table)
    print(f"Written: {out / 'compare.md'}, {out / 'compare.csv'}")
    return frame


@hydra_command("compare", prog="histo-compare")
def main(cfg: DictConfig) -> None:
    compare(cfg)


if __name__ == "__main__":
    main()
