"""Peak memory of a real training run against its number of epochs: it must not grow; prints a table.

    .venv/bin/python scripts/bench_memory.py [--epochs 1,3] [--caches auto,off] [--workers 2] [--size 64]

Each measurement is a fresh ``python -m histo.train`` process (V1-B0 from scratch on the built-in
synthetic dataset, CPU, loader workers as given, the CSV logger and checkpointing as in any run) with
a callback that records the resident memory of the training process (RSS) and of its loader
workers (PSS: forked workers share most pages with the trainer, so their RSS would count those
again) at the end of every epoch. The peak is the kernel's own count for the process (``wait4``'s maximum
resident set size: the largest process of the run, the trainer). A first, unreported run writes the
synthetic dataset and builds the image cache, so every reported run starts from the same state.
Linux only (``/proc``). The last line is ``ratio: <peak RSS with the most epochs / with the fewest>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]


class EpochMemory(pl.Callback):
    """Writes ``[{epoch, trainer_mb, workers_mb}]`` to ``out`` at the end of every training epoch."""

    def __init__(self, out: str):
        self.out, self.rows = Path(out), []

    def on_train_epoch_end(self, trainer, module):
        workers = [_memory_mb(pid, "Pss") for pid in _children(os.getpid())]
        self.rows.append({"epoch": trainer.current_epoch, "trainer_mb": _memory_mb(os.getpid(), "Rss"),
                          "workers_mb": round(sum(workers), 1), "workers": len(workers)})
        self.out.write_text(json.dumps(self.rows))


def _memory_mb(pid: int, field: str) -> float:
    """``Rss`` (resident) or ``Pss`` (resident, pages shared with other processes divided among them) in MB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def run(tmp: Path, epochs: int, cache: str, args, tag: str) -> tuple[float, list[dict]]:
    """One training process; its peak RSS (MB) and the per-epoch trace."""
    trace = tmp / f"memory-{tag}.json"
    command = [sys.executable, "-m", "histo.train", "trainer=cpu", "model.pretrained=false",
               f"model.image_size={args.size}", f"data.num_workers={args.workers}", "data.batch_size=16",
               f"data.cache={cache}", f"trainer.max_epochs={epochs}", f"paths.output_root={tmp}",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               "data.synthetic.patients_per_subtype=3", "+callbacks.memory._target_=bench_memory.EpochMemory",
               f"+callbacks.memory.out={trace}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}
    log = tmp / f"memory-{tag}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest of all runs so far
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"The training run failed:\n{' '.join(command)}\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, json.loads(trace.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="1,3", help="comma-separated epoch counts")
    parser.add_argument("--caches", default="auto,off", help="data.cache settings to measure")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    epochs = sorted(int(e) for e in args.epochs.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        run(Path(tmp), 1, "auto", args, "warmup")
        for cache in args.caches.split(","):
            for n in epochs:
                peak, trace = run(Path(tmp), n, cache, args, f"{cache}-{n}")
                rows.append((cache, n, peak, trace))
    print(f"# Peak memory of `histo.train` (V1-B0, {args.size} px, synthetic data, CPU, {args.workers} loader "
          f"workers, batch 16) against epochs\n")
    print("| data.cache | epochs | peak RSS, trainer (MB) | at the end of each epoch: trainer RSS / workers' PSS, summed (MB) |")
    print("|---|---|---|---|")
    for cache, n, peak, trace in rows:
        ends = ", ".join(f"{r['trainer_mb']:.0f} / {r['workers_mb']:.0f}" for r in trace)
        print(f"| {cache} | {n} | {peak:.0f} | {ends} |")
    ratios = []
    for cache in args.caches.split(","):
        peaks = {n: p for c, n, p, _ in rows if c == cache}
        ratios.append(peaks[epochs[-1]] / peaks[epochs[0]])
    print(f"ratio: {max(ratios):.3f}")


if __name__ == "__main__":
    main()
