"""One prepared check of histo on a CUDA GPU, in at most 8 minutes; writes gpu_check.md (and .json) and prints it.

    python scripts/gpu_check.py                               # one CUDA GPU: outputs/gpu_check.md
    python scripts/gpu_check.py --device cuda:1 --out DIR --budget-s 480 [--full-dataset]
    python scripts/gpu_check.py --dry-run                     # a CPU: every part, tiny, a few steps (CI)

It needs no dataset: a synthetic BreaKHis tree (histo's ``histo-synth`` code) at BreaKHis' 700x460. The
check is a list of independent parts (PARTS), run in order, each a function given a time budget: its
share of what is left of ``--budget-s`` (counted from the start of the process), so time one part saves
goes to the next. A part that cannot start in its budget is skipped and says so; one that fails says
why; the others still run. gpu_check.md is rewritten after every part, so a check stopped from outside
keeps what it measured. The parts:

- environment: GPU, driver, versions, TF32/cuDNN settings, what the GPU utilisation is read from.
- data: the synthetic tree (1,024 images, ~3 core-minutes to render; ``--full-dataset``: all 7,909,
  ~20 core-minutes and ~15 GB of temporary files with the caches), rendered on every core, and its image
  cache at the ten models' five sizes, built as ``histo-prepare`` builds it (its decoding rate gives
  make paper's preparation time). Rates are per image, so the default's 1,024 images measure them.
- training: images/s of the ten models at the paper's sizes and batch (32), histo's Classifier fitted by
  pl.Trainer from in-memory batches (training_speed.py, shared with bench_train.py), fp32 vs bf16-mixed
  vs bf16-mixed + channels_last, the forward-only (validation) rate, and the peak GPU memory of each.
- loader: V1-B0 (the fastest model, so the hardest to feed) in its fastest configuration, trained from
  the image cache with augmentation on the device (augment.run_on=device) at num_workers 4/8/16, beside
  the same steps from in-memory batches: images/s, the share of the time spent waiting for batches,
  and the GPU's utilisation (NVML through torch, else nvidia-smi, else not shown).
- stain: images/s of batched stain normalization on the GPU: histo (Vahadane, Macenko, Reinhard) and
  torch-staintools (Vahadane, Macenko; stain_peers.py, shared with bench_stain.py), its first call
  (compiling) and its stain-matrix cache on a second pass reported apart.
- predict: histo-predict's images/s (histo.predict.Predictor.run, from PNG files to the table) for the ten
  models at the paper's sizes, fp32 and bf16-mixed, each an untrained run (bench_predict.untrained_run), beside
  the training part's forward-only rate: how much decoding and resizing the files costs.
- compile: model.compile on/off for V1-B0 and V2-S, in a child process killed at the part's budget (a
  compile can take minutes and cannot be interrupted in-process); compile time reported apart.
- projection: the wall time of ``make paper`` on this GPU from the figures above.

To add a part: write ``def part_x(ctx, budget) -> Section`` (``budget.left()`` / ``budget.fits(seconds)``;
earlier results in ``ctx.results``; ``in_passes`` for a table of models) and add ``Part("x", part_x, share)``
to PARTS. ``--dry-run`` runs every part on tiny sizes for a few steps (``DRY``), so tests keep every code path
that can run on a CPU working.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts from here: imports included

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
from bench_predict import ours, untrained_run  # noqa: E402
from stain_peers import histo_normalizer, race, timed, to_batch, torch_staintools_normalizer  # noqa: E402
from training_speed import (  # noqa: E402
    CLASSES,
    PAPER_EPOCHS,
    PAPER_SPLIT,
    InMemory,
    eval_rate,
    fit_steps,
    paper_minutes,
)

from histo import config_option  # noqa: E402
from histo.data import device_augment  # noqa: E402
from histo.data.cache import cache_for_run, ensure  # noqa: E402
from histo.data.datamodule import BreakHisDataModule, load_data, loader_workers  # noqa: E402
from histo.data.image_file import read_rgb  # noqa: E402
from histo.data.synthetic import BREAKHIS_COUNTS, SyntheticSpec, write_dataset  # noqa: E402
from histo.evaluation.paper import MODELS  # noqa: E402
from histo.models import Classifier  # noqa: E402
from histo.predict import Predictor  # noqa: E402

BUDGET_S = 480  # the 8 minutes the check promises, end to end
RESERVE_S = 15  # kept back for writing the report and shutting down loader workers
BREAKHIS_IMAGES = sum(sum(m.values()) for m in BREAKHIS_COUNTS.values())  # 7,909
ONE_HOUR_MIN = 60


@dataclass(frozen=True)
class Settings:
    """What the parts measure, and how long: the GPU check (``FULL``) or the CPU dry run (``DRY``)."""

    models: tuple[str, ...] = MODELS
    size: int | None = None  # None: each model's paper size (conf/model/<name>.yaml)
    batch: int = 32  # the paper's
    warmup: int = 5
    steps: int = 20
    synthetic: SyntheticSpec = SyntheticSpec(patients_per_subtype=2, images_per_magnification=16, width=700, height=460)
    data_workers: int | None = None  # processes writing the tree and building the cache (None: all cores / histo's)
    loader_model: str = "v1_b0"
    workers: tuple[int, ...] = (4, 8, 16)
    loader_warmup: int = 20
    loader_steps: int = 200
    stain_batch: int = 16
    stain_batches: int = 4
    predict_images: int = 1024  # of the data part's tree, each model and precision
    compile_models: tuple[str, ...] = ("v1_b0", "v2_s")
    dry: bool = False


FULL = Settings()
DRY = Settings(models=("v1_b0", "v2_b0"), size=32, batch=4, warmup=1, steps=2,
               synthetic=SyntheticSpec(patients_per_subtype=1, images_per_magnification=2, width=64, height=48),
               data_workers=0, workers=(0, 2), loader_warmup=1, loader_steps=3, stain_batch=2, stain_batches=1,
               predict_images=6, compile_models=("v1_b0", "v2_b0"), dry=True)
# (label, trainer.precision, model.channels_last); the first is make paper's default
CONFIGS = (("fp32", "32-true", False), ("bf16-mixed", "bf16-mixed", False),
           ("bf16-mixed + channels_last", "bf16-mixed", True))


# ----- the frame: budgets, sections, the runner -----


class Budget:
    """A part's deadline on the monotonic clock."""

    def __init__(self, seconds: float):
        self.seconds = max(0.0, seconds)
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


@dataclass
class Section:
    """What a part reports: markdown lines for gpu_check.md and plain values for later parts and the JSON."""

    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Context, Budget], Section]
    share: float  # of the time left when it starts, relative to the shares of the parts still to run
    title: str = ""


@dataclass
class Context:
    device: torch.device
    settings: Settings
    tmp: Path
    results: dict = field(default_factory=dict)  # part name -> Section.data ("status" added by the runner)
    child: subprocess.Popen | None = None  # a running child process, stopped with the check
    _batches: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def in_memory(self, size: int, steps: int) -> DataLoader:
        """A loader of ``steps`` random uint8 batches at ``size`` (made once per size and count)."""
        key = (size, steps)
        if key not in self._batches:
            self._batches[key] = InMemory(self.settings.batch * steps, size)
        return DataLoader(self._batches[key], batch_size=self.settings.batch, shuffle=False, num_workers=0,
                          pin_memory=self.cuda)


def run_parts(parts: list[Part], ctx: Context, total_s: float, report: Callable[[list, Part | None], None]) -> list:
    """Run ``parts`` in order within ``total_s`` seconds from START. ``report(done, running)`` gets the
    (part, section) pairs so far and the part about to run (None at the end)."""
    done = []
    for i, part in enumerate(parts):
        report(done, part)
        left = total_s - (time.monotonic() - START) - RESERVE_S
        shares = sum(p.share for p in parts[i:])
        budget = Budget(left * part.share / shares if shares else left)
        started = time.monotonic()
        if part.share and budget.seconds < 1:
            section = Section([f"Skipped: no time left of the {total_s:.0f} s budget."], {})
            status = "skipped"
        else:
            try:
                section = part.run(ctx, budget)
                status = "done"
            except Exception as err:  # one part's failure (an OOM, a CUDA error) must not stop the others
                tail = traceback.format_exc().strip().splitlines()[-12:]
                section = Section([f"FAILED: {type(err).__name__}: {err}", "", "```", *tail, "```"], {})
                status = "failed"
        elapsed = time.monotonic() - started
        section.data.update(status=status, seconds=round(elapsed, 1), budget_s=round(budget.seconds, 1))
        ctx.results[part.name] = section.data
        done.append((part, section))
        print(f"[gpu_check] {part.name}: {status} in {elapsed:.0f} s (budget {budget.seconds:.0f} s); "
              f"{time.monotonic() - START:.0f} s since start, {time.process_time():.0f} s of CPU in this process",
              file=sys.stderr, flush=True)
    report(done, None)
    return done


def markdown(done: list, ctx: Context, total_s: float, running: Part | None = None) -> str:
    where = device_name(ctx.device)
    head = [f"# gpu_check: histo on {where}", ""]
    if ctx.settings.dry:
        head += ["**Dry run** (`--dry-run`): tiny images and models, a few steps; the numbers mean nothing, the "
                 "run shows that every part works.", ""]
    head += [f"Budget {total_s:.0f} s; {time.monotonic() - START:.0f} s used so far. "
             "Parts: " + ", ".join(f"{p.name} ({s.data.get('status')}, {s.data.get('seconds', 0):.0f} s)"
                                   for p, s in done), ""]
    body = []
    for part, section in done:
        body += [f"## {title(part)}", "", *section.lines, ""]
    if running is not None:
        body += [f"## {title(running)}", "", "Did not finish: the check stopped while this part ran (its time limit, "
                 "or stopped from outside); the parts after it did not run.", ""]
    return "\n".join(head + body)


def title(part: Part) -> str:
    return part.title or part.name.capitalize()


class Watchdog:
    """The hard limit: at ``deadline`` (monotonic), whatever runs, ``expire()`` is called (it writes what was
    measured, stops any child and ends the process). Parts keep to their budgets; this is for the one
    call that cannot be interrupted and overruns (a compile, a first call)."""

    def __init__(self, deadline: float, expire: Callable[[], None]):
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


# ----- the parts -----


def part_environment(ctx: Context, budget: Budget) -> Section:
    lines, data = [], {"device": str(ctx.device), "name": device_name(ctx.device)}
    rows = [("device", device_name(ctx.device)), ("torch", torch.__version__), ("Lightning", pl.__version__),
            ("CPU cores", str(os.cpu_count())), ("python", platform.python_version())]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        data.update(memory_gb=round(props.total_memory / 1e9, 1), capability=f"{props.major}.{props.minor}",
                    bf16=torch.cuda.is_bf16_supported())
        rows += [("GPU memory", f"{props.total_memory / 2**30:.1f} GiB"), ("compute capability", data["capability"]),
                 ("CUDA (torch built with)", str(torch.version.cuda)), ("cuDNN", str(torch.backends.cudnn.version())),
                 ("driver", nvidia_smi(ctx.device, "driver_version") or "unknown (no nvidia-smi)"),
                 ("bf16 supported", str(data["bf16"]))]
    rows += [("TF32 in convolutions (cudnn.allow_tf32)", str(torch.backends.cudnn.allow_tf32)),
             ("TF32 in matmuls (float32 matmul precision)", torch.get_float32_matmul_precision()),
             ("cudnn.benchmark (histo leaves the default)", str(torch.backends.cudnn.benchmark))]
    _, source = utilisation_query(ctx.device)
    rows.append(("GPU utilisation read from", source))
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    data.update(utilisation_source=source)
    return Section(lines, data)


def part_data(ctx: Context, budget: Budget) -> Section:
    spec = ctx.settings.synthetic
    workers = ctx.settings.data_workers if ctx.settings.data_workers is not None else os.cpu_count() or 1
    started = time.monotonic()
    root = write_dataset(ctx.tmp / "BreaKHis_v1", spec, workers=workers)
    rendered = time.monotonic() - started
    data_cfg = data_config(root, ctx.tmp / "cache")
    index = load_data(data_cfg, config_option("split", "image"), ctx.tmp).index
    images = index.images
    sizes = sorted({model_size(ctx.settings, m) for m in MODELS})
    cache_workers = ctx.settings.data_workers if ctx.settings.data_workers is not None else loader_workers(data_cfg)
    started = time.monotonic()
    ensure(data_cfg.cache_dir, index, sizes, data_cfg.interpolation, None, cache_workers)
    built = time.monotonic() - started
    rate = len(images) / built
    data = {"root": str(root), "cache_dir": str(data_cfg.cache_dir), "images": len(images), "sizes": sizes,
            "render_s": round(rendered, 1), "prepare_rate": rate, "prepare_workers": cache_workers,
            "prepare_minutes_breakhis": BREAKHIS_IMAGES / rate / 60}
    extent = "BreaKHis' full counts" if spec.counts == "breakhis" else "a part of BreaKHis (--full-dataset: all 7,909)"
    lines = [f"Synthetic BreaKHis tree (histo-synth's code): {len(images):,} images of {spec.width}x{spec.height}, "
             f"{extent}; "
             f"rendered by {max(1, workers)} process(es) in {rendered:.0f} s.",
             f"Image cache at {', '.join(map(str, sizes))} px (histo-prepare's code, {cache_workers} workers): "
             f"{rate:,.0f} images/s, so {data['prepare_minutes_breakhis']:.1f} min for BreaKHis' {BREAKHIS_IMAGES:,} "
             "images (make paper's first step)."]
    return Section(lines, data)


def part_training(ctx: Context, budget: Budget) -> Section:
    s = ctx.settings
    configs = [c for c in CONFIGS if c[1] != "bf16-mixed" or bf16_ok(ctx)]
    by_label = {c[0]: c[1:] for c in configs}
    results, skipped = in_passes(budget, list(by_label), s.models, "training",
                                 lambda name, label: measure_training(ctx, name, *by_label[label]))

    head = "| model | size | " + " | ".join(f"{c[0]} img/s" for c in configs) + " | bf16 / fp32 | channels_last gain " \
           "| forward-only img/s (" + " / ".join(c[0] for c in configs) + ") | peak GPU memory, MB allocated (" + \
           " / ".join(c[0] for c in configs) + ") |"
    lines = [f"histo's Classifier in pl.Trainer, batch {s.batch}, random weights, in-memory uint8 batches (no "
             f"decoding), {s.warmup} warm-up + {s.steps} timed steps each; configurations measured in passes over "
             "the models (fp32 first).", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name in s.models:
        r = results[name]
        cells = [cell(r.get(c[0]), "rate", "{:,.1f}") for c in configs]
        ratio = ratio_cell(r.get("bf16-mixed"), r.get("fp32"))
        gain = ratio_cell(r.get("bf16-mixed + channels_last"), r.get("bf16-mixed"))
        evals = " / ".join(cell(r.get(c[0]), "eval_rate", "{:,.0f}") for c in configs)
        peaks = " / ".join(cell(r.get(c[0]), "peak_mb", "{:,.0f}") for c in configs)
        lines.append(f"| {name} | {model_size(s, name)} | " + " | ".join(cells) + f" | {ratio} | {gain} | {evals} | {peaks} |")
    if skipped:
        lines += ["", f"Not measured (the part's {budget.seconds:.0f} s were spent): {', '.join(skipped)}."]
    if not ctx.cuda:
        lines += ["", "Peak GPU memory: n/a on a CPU."]
    return Section(lines, {"models": results, "configs": [c[0] for c in configs]})


def in_passes(budget: Budget, labels: list[str], models: tuple[str, ...], what: str,
              measure: Callable[[str, str], dict]) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """``measure(model, label)`` for every label and model, one pass over the models per label (the first label
    for all models first, so a short budget cuts the later ones). A call not expected to fit (1.2x the model's
    previous one, else the longest so far) is skipped; one out of GPU memory is recorded as failed.
    Returns {model: {label: result}} and the "model label" pairs skipped."""
    results: dict[str, dict[str, dict]] = {m: {} for m in models}
    took: dict[str, float] = {}
    skipped = []
    for label in labels:
        for name in models:
            expected = took.get(name, max(took.values(), default=5.0))
            if not budget.fits(1.2 * expected):
                results[name][label] = {"skipped": "budget"}
                skipped.append(f"{name} {label}")
                continue
            started = time.monotonic()
            try:
                results[name][label] = measure(name, label)
            except torch.cuda.OutOfMemoryError as err:
                results[name][label] = {"failed": f"out of memory: {str(err).splitlines()[0]}"}
            free_memory()
            took[name] = time.monotonic() - started
            print(f"  {what} {name} {label}: {results[name][label]}", file=sys.stderr, flush=True)
    return results, skipped


def measure_training(ctx: Context, name: str, precision: str, channels_last: bool) -> dict:
    """Training and forward-only images/s and the peak memory of one model in one configuration."""
    s = ctx.settings
    size = model_size(s, name)
    loader = ctx.in_memory(size, s.warmup + s.steps)
    model = classifier(config_option("model", name), size, channels_last=channels_last)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    clock = fit_steps(model, loader, str(ctx.device), precision, s.warmup, s.steps)
    result = {"rate": clock.rate, "warmup_s": clock.warmup_seconds}
    if ctx.cuda:
        result["peak_mb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
        result["reserved_mb"] = torch.cuda.max_memory_reserved(ctx.device) / 2**20
    result["eval_rate"] = eval_rate(model, loader, str(ctx.device), precision, s.warmup)
    return result


def part_loader(ctx: Context, budget: Budget) -> Section:
    s = ctx.settings
    data = ctx.results.get("data", {})
    if data.get("status") != "done":
        return Section(["Not measured: it trains from the data part's image cache, and the data part did not finish."])
    name = s.loader_model
    label, precision, channels_last = fastest_config(ctx, name)
    size = model_size(s, name)
    data_cfg = data_config(Path(data["root"]), Path(data["cache_dir"]))
    dataset = load_data(data_cfg, config_option("split", "image"), ctx.tmp)
    cache = cache_for_run(data_cfg, dataset.index, size, None, loader_workers(data_cfg))
    augment = {**OmegaConf.to_container(config_option("augment", "paper")), "run_on": "device"}
    batch_augment = device_augment.from_config(augment)
    query, source = utilisation_query(ctx.device)
    steps = s.loader_warmup + s.loader_steps
    settings = [("in-memory batches (no loader work: the baseline)", None), *((f"image cache, num_workers={w}", w)
                                                                             for w in s.workers)]
    rows, expected = [], 15.0
    for row_label, workers in settings:
        if not budget.fits(expected):
            rows.append((row_label, None))
            continue
        started = time.monotonic()
        if workers is None:
            source_data = ctx.in_memory(size, min(steps, 32))  # epochs repeat
        else:
            source_data = BreakHisDataModule(dataset, image_size=size, interpolation=data_cfg.interpolation,
                                             augment=augment, batch_size=s.batch, num_workers=workers,
                                             persistent_workers=True, cache=cache)
        model = classifier(config_option("model", name), size, channels_last=channels_last,
                           device_augment=batch_augment.to_dict())
        with Utilisation(query) as utilisation:
            clock = fit_steps(model, source_data, str(ctx.device), precision, s.loader_warmup, s.loader_steps)
        util = utilisation.mean(clock.started, clock.started + clock.seconds)
        rows.append((row_label, {"rate": clock.rate, "wait_share": clock.wait_share, "utilisation": util,
                                 "workers": workers}))
        del model, source_data
        free_memory()
        expected = max(expected, 1.3 * (time.monotonic() - started))

    base = rows[0][1]
    lines = [f"{name} at {size} px, {label} (its fastest configuration in the training part), batch {s.batch}, "
             f"the paper's augmentation on the device (augment.run_on=device), {s.loader_warmup} warm-up + "
             f"{s.loader_steps} timed steps ({dataset.split.counts()['train']:,} training images: epochs repeat). "
             "Waiting = the time between one step's end and the next one's start (fetching the batch and moving "
             f"it to the device), as a share of the timed wall time. GPU utilisation from {source}.", "",
             "| source of batches | images/s | vs in-memory | waiting for data | GPU utilisation |", "|---|---|---|---|---|"]
    keeps_up = {}
    for row_label, r in rows:
        if r is None:
            lines.append(f"| {row_label} | not measured (budget) | | | |")
            continue
        versus = f"{r['rate'] / base['rate']:.2f}" if base else "n/a"
        util = f"{r['utilisation']:.0f} %" if r["utilisation"] is not None else "n/a"
        lines.append(f"| {row_label} | {r['rate']:,.0f} | {versus} | {100 * r['wait_share']:.1f} % | {util} |")
        if r["workers"] is not None and base:
            keeps_up[r["workers"]] = r["rate"] >= 0.95 * base["rate"]
    default_workers = loader_workers(data_cfg)
    verdict = ", ".join(f"{w} workers: {'yes' if k else 'NO'}" for w, k in keeps_up.items())
    lines += ["", f"Keeps up (images/s within 5 % of in-memory batches): {verdict or 'not measured'}. "
              f"histo's default num_workers here: {default_workers} (min(8, CPU cores))."]
    return Section(lines, {"rows": dict(rows), "keeps_up": keeps_up, "config": label, "model": name})


def part_stain(ctx: Context, budget: Budget) -> Section:
    s = ctx.settings
    data = ctx.results.get("data", {})
    if data.get("status") != "done":
        return Section(["Not measured: it normalizes the data part's images, and the data part did not finish."])
    files = sorted(Path(data["root"]).rglob("*.png"))
    images = [read_rgb(f) for f in files[: 4 * s.stain_batch * s.stain_batches]]
    shape = max({im.shape for im in images}, key=lambda sh: sum(im.shape == sh for im in images))
    images = [im for im in images if im.shape == shape][: s.stain_batch * (s.stain_batches + 1)]
    target, images = images[0], images[1:]
    batches = [list(range(i, i + s.stain_batch)) for i in range(0, len(images) - s.stain_batch + 1, s.stain_batch)]
    batches = batches[: s.stain_batches]
    tensors = {tuple(b): to_batch([images[i] for i in b], ctx.device) for b in batches}
    rows = []

    def measure(library: str, method: str, first: Callable, run: Callable, again: bool = False,
                fit_s: float | None = None) -> None:
        """``first`` once (warm-up, compiling), then ``run`` on every batch, timed; with ``again``, ``run``
        once more on the same batches (a cache filled by the first pass)."""
        if not budget.fits(5):
            rows.append((library, method, None))
            return
        first_s, _ = timed(ctx.device, None, first, batches[0])
        result = {"fit_s": fit_s, "first_call_s": first_s}
        for key in ("rate", "cached_rate") if again else ("rate",):
            result[key] = race({library: (ctx.device, run)}, batches, "", 0, warm_up=False, check_same=False)[0]["rate"]
        rows.append((library, method, result))

    for method in ("vahadane", "macenko", "reinhard"):
        normalize = histo_normalizer(method, target)
        run = lambda b, n=normalize: n(tensors[tuple(b)])  # noqa: E731
        measure("histo", method, run, run)
    peer_available = importlib.util.find_spec("torch_staintools") is not None
    compile = ctx.cuda
    if peer_available:
        calls = itertools.count()
        for method in ("vahadane", "macenko"):
            if not budget.fits(60 if method == "vahadane" else 20):  # its fit compiles and learns a dictionary
                rows.append(("torch-staintools", method, None))
                continue
            try:  # another library, compiled on the fly: its failure must not hide histo's rows
                fit_s, peer = timed(ctx.device, None, torch_staintools_normalizer, method, target, ctx.device,
                                    compile, True)
                measure("torch-staintools", method,
                        lambda b, p=peer: p(tensors[tuple(b)], [f"call{next(calls)}" for _ in b]),  # new keys
                        lambda b, p=peer: p(tensors[tuple(b)], [f"image{i}" for i in b]), again=True, fit_s=fit_s)
            except Exception as err:
                rows.append(("torch-staintools", method, {"failed": f"{type(err).__name__}: {err}"[:300]}))
    lines = [f"Batches of {s.stain_batch} images of {shape[1]}x{shape[0]} (synthetic H&E), already on the device; "
             f"{len(batches)} timed batch(es) after a first call. torch-staintools with its recommended settings "
             f"(stain_peers.py), torch.compile {'on' if compile else 'off'}; its fit (on the target image) compiles "
             "its solvers; its cached column is a second pass over the same images with its stain-matrix cache "
             "filled (what normalizing on the fly meets from epoch 2).", "",
             "| library | method | fit, s | first call, s | images/s | images/s, stain matrices cached |",
             "|---|---|---|---|---|---|"]
    for library, method, r in rows:
        if r is None or "failed" in r:
            lines.append(f"| {library} | {method} | {'FAILED: ' + r['failed'] if r else 'not measured (budget)'} | | | |")
            continue
        cached = f"{r['cached_rate']:,.1f}" if "cached_rate" in r else ""
        fit = f"{r['fit_s']:.2f}" if r["fit_s"] is not None else ""
        lines.append(f"| {library} | {method} | {fit} | {r['first_call_s']:.2f} | {r['rate']:,.1f} | {cached} |")
    if not peer_available:
        lines += ["", "torch-staintools is not installed (`pip install -e '.[bench]'`): its rows are missing."]
    return Section(lines, {"rows": [{"library": a, "method": b, **(r or {"skipped": "budget"})} for a, b, r in rows]})


def part_predict(ctx: Context, budget: Budget) -> Section:
    """histo-predict's images/s per model: an untrained run at the model's paper size (speed does not depend on
    the weights) through :meth:`Predictor.run`, from the data part's PNG files to the prediction table."""
    s = ctx.settings
    data = ctx.results.get("data", {})
    if data.get("status") != "done":
        return Section(["Not measured: it predicts the data part's images, and the data part did not finish."])
    paths = [str(p) for p in sorted(Path(data["root"]).rglob("*.png"))[: s.predict_images]]
    # decoding and resizing full-size PNGs is the loader's whole work: as many processes as the cores allow
    workers = max((w for w in s.workers if w <= (os.cpu_count() or 1)), default=0)
    precisions = {"fp32": "auto", **({"bf16-mixed": "bf16-mixed"} if bf16_ok(ctx) else {})}

    def measure(name: str, label: str) -> dict:
        run = ctx.tmp / "predict" / name
        if not (run / "run.json").is_file():
            untrained_run(run, name, model_size(s, name))  # trained in fp32: precision auto is fp32
        predictor = Predictor.from_runs([run], device=str(ctx.device), precision=precisions[label])
        ours(predictor, paths[: s.batch], s.batch, workers)  # warm-up: loader processes, kernels, cuDNN's choice
        return {"rate": len(paths) / ours(predictor, paths, s.batch, workers)}

    results, skipped = in_passes(budget, list(precisions), s.models, "predict", measure)
    training = ctx.results.get("training", {}).get("models", {})
    head = ("| model | size | " + " | ".join(f"{p} img/s" for p in precisions) + " | bf16 / fp32 | forward-only "
            "img/s (training part, best) | histo-predict / forward-only |")
    lines = [f"histo.predict.Predictor.run over {len(paths):,} PNG files of the data part ({s.synthetic.width}x"
             f"{s.synthetic.height}), one untrained run per model (scripts/bench_predict.py's untrained_run), batch "
             f"{s.batch}, num_workers={workers} (the most of the loader part's choices this machine's cores allow), "
             "the network channels-last as histo-predict runs it; a one-batch warm-up, then one timed pass from "
             "file paths to the table (loader start-up included, as a histo-predict call pays it). The last column "
             "compares with the training part's forward pass on in-memory batches: well below 1, the files (decoding, "
             "resizing, loader start-up), not the network, limit prediction.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    forward_only = {}
    for name in s.models:
        r = results[name]
        best = max((v["rate"] for v in r.values() if "rate" in v), default=None)
        forward = max((v["eval_rate"] for v in training.get(name, {}).values() if "eval_rate" in v), default=None)
        forward_only[name] = forward
        share = f"{best / forward:.2f}" if best and forward else "n/a"
        lines.append(f"| {name} | {model_size(s, name)} | " + " | ".join(cell(r.get(p), "rate", "{:,.1f}")
                                                                     for p in precisions)
                     + f" | {ratio_cell(r.get('bf16-mixed'), r.get('fp32'))} | "
                     + (f"{forward:,.0f}" if forward else "n/a") + f" | {share} |")
    if skipped:
        lines += ["", f"Not measured (the part's {budget.seconds:.0f} s were spent): {', '.join(skipped)}."]
    return Section(lines, {"models": results, "precisions": list(precisions), "images": len(paths),
                           "workers": workers, "forward_only_rate": forward_only})


def part_compile(ctx: Context, budget: Budget) -> Section:
    """model.compile off and on, in a child process (this script with ``--compile-child``) killed at the budget."""
    s = ctx.settings
    label, precision, channels_last = ("bf16-mixed", "bf16-mixed", False) if bf16_ok(ctx) else CONFIGS[0]
    results_file = ctx.tmp / "compile.jsonl"
    command = [sys.executable, str(Path(__file__).resolve()), "--compile-child", str(results_file),
               "--device", str(ctx.device), "--precision", precision] + (["--dry-run"] if s.dry else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if s.dry:
        env["TORCHDYNAMO_DISABLE"] = "1"  # the dry run exercises the path, not the minutes of compiling
    log_path = ctx.tmp / "compile.log"
    timeout = max(1.0, budget.left() - 5)
    with open(log_path, "w") as log:
        ctx.child = child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        try:
            code, killed = child.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            stop(child)
            code, killed = child.returncode, True
        ctx.child = None
    measured = []
    for line in results_file.read_text().splitlines() if results_file.is_file() else []:
        try:
            measured.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when the child was stopped
            pass
    by_model = {m: {r["compile"]: r for r in measured if r["model"] == m} for m in s.compile_models}
    lines = [f"histo's Classifier with model.compile=false / true (nn.Module.compile of the network when fitting "
             f"starts), {label}, batch {s.batch}, in-memory batches, {s.warmup} warm-up + {s.steps} timed steps; "
             "the first steps' time (compiling included) is shown apart. One child process for all, killed when the "
             f"part's {budget.seconds:.0f} s run out." + (" Dry run: TORCHDYNAMO_DISABLE=1, so nothing is compiled."
                                                          if s.dry else ""), "",
             "| model | size | eager img/s | compiled img/s | compiled / eager | warm-up s, eager | warm-up s, compiled "
             "(compiling) |", "|---|---|---|---|---|---|---|"]
    for name in s.compile_models:
        eager, compiled = by_model[name].get(False), by_model[name].get(True)
        ratio = ratio_cell(compiled, eager)
        lines.append(f"| {name} | {model_size(s, name)} | {cell(eager, 'rate', '{:,.1f}')} "
                     f"| {cell(compiled, 'rate', '{:,.1f}')} | {ratio} | {cell(eager, 'warmup_s', '{:.1f}')} "
                     f"| {cell(compiled, 'warmup_s', '{:.1f}')} |")
    if killed:
        lines += ["", f"The child was stopped after {timeout:.0f} s (the part's budget): what is missing did not finish."]
    elif code != 0:
        tail = log_path.read_text().strip().splitlines()[-15:]
        lines += ["", f"The child failed (exit code {code}); the end of its output:", "", "```", *tail, "```"]
    return Section(lines, {"models": {m: {str(k): v for k, v in r.items()} for m, r in by_model.items()},
                           "killed": killed, "exit_code": code})


def compile_child(results_file: Path, device: str, precision: str, settings: Settings) -> None:
    """Eager, then compiled, for each model; one JSON line per measurement, written as soon as it is done."""
    s = settings
    ctx = Context(torch.device(device), s, results_file.parent)
    for name in s.compile_models:
        size = model_size(s, name)
        loader = ctx.in_memory(size, s.warmup + s.steps)
        for compiled in (False, True):
            line = {"model": name, "compile": compiled}
            try:
                model = classifier(config_option("model", name), size, compile=compiled)
                clock = fit_steps(model, loader, device, precision, s.warmup, s.steps)
                line.update(rate=clock.rate, warmup_s=clock.warmup_seconds)
            except Exception as err:  # a model that does not compile must not hide the next one
                line["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            with open(results_file, "a") as out:
                out.write(json.dumps(line) + "\n")
            model = None
            free_memory()


def stop(child: subprocess.Popen) -> None:
    """Stop a child started in its own session, and whatever it started (compile workers), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def part_projection(ctx: Context, budget: Budget) -> Section:
    """make paper's wall time from the training part's rates and the data part's decoding rate."""
    training = ctx.results.get("training", {})
    models = training.get("models", {})
    prepare = ctx.results.get("data", {}).get("prepare_minutes_breakhis")
    lines = [f"The paper's recipe per model: {PAPER_EPOCHS} epochs of {PAPER_SPLIT['train']:,} training images and "
             f"{PAPER_SPLIT['val']:,} validation images, then val and test predicted once (training_speed.paper_minutes), "
             f"at the training part's rates; plus the image caches of all {BREAKHIS_IMAGES:,} images at five sizes "
             "(histo-prepare, the data part's rate). Not included: each run's start-up (process, model, loader "
             "workers: seconds), checkpoint writing, and the ensembles and report (CPU, minutes).", "",
             "| configuration | how | training, min | image caches, min | make paper, min | under one hour |",
             "|---|---|---|---|---|---|"]
    how = {"fp32": "make paper", "bf16-mixed": "make paper PRECISION=bf16-mixed",
           "bf16-mixed + channels_last": "make paper PRECISION=bf16-mixed ... model.channels_last=true"}
    projected = {}
    for label in training.get("configs", []):
        rates = {m: r.get(label, {}) for m, r in models.items()}
        measured = {m: r for m, r in rates.items() if "rate" in r and "eval_rate" in r}
        train_min = sum(paper_minutes(r["rate"], r["eval_rate"]) for r in measured.values())
        if set(measured) != set(MODELS):
            lines.append(f"| {label} | {how.get(label, '')} | incomplete: {len(measured)} of {len(MODELS)} models "
                         f"measured ({train_min:,.1f} min for those) | | | |")
            continue
        total = train_min + (prepare or 0)
        projected[label] = total
        caches = f"{prepare:.1f}" if prepare is not None else "not measured"
        lines.append(f"| {label} | {how.get(label, '')} | {train_min:,.1f} | {caches} | {total:,.1f} "
                     f"| {'yes' if total < ONE_HOUR_MIN else 'NO'} |")
    loader = ctx.results.get("loader", {})
    if loader.get("keeps_up"):
        slow = [w for w, ok in loader["keeps_up"].items() if not ok]
        lines += ["", "The loader kept up at every num_workers measured." if not slow else
                  f"The loader did not keep up with {loader.get('model')} at num_workers {slow}: the projection "
                  "assumes it does, so it is optimistic for the small models there."]
    else:
        lines += ["", "Whether the loader keeps up was not measured: the projection assumes it does."]
    if ctx.settings.dry:
        lines += ["", "Dry run: the sizes are tiny and the device is a CPU, so these minutes mean nothing."]
    return Section(lines, {"minutes": projected})


PARTS = [
    Part("environment", part_environment, 0),
    Part("data", part_data, 40),
    Part("training", part_training, 160, "Training speed and peak memory (the ten models)"),
    Part("loader", part_loader, 60, "Does the loader keep up?"),
    Part("stain", part_stain, 60, "Stain normalization on the device"),
    Part("predict", part_predict, 50, "histo-predict images/s (the ten models)"),
    Part("compile", part_compile, 140, "torch.compile"),
    Part("projection", part_projection, 0, "Projected wall time of make paper"),
]


# ----- helpers -----


def data_config(root: Path, cache_dir: Path):
    data_cfg = config_option("data", "breakhis")
    data_cfg.root, data_cfg.cache_dir = str(root), str(cache_dir)
    return data_cfg


def model_size(settings: Settings, name: str) -> int:
    return settings.size or int(config_option("model", name).image_size)


def classifier(model_conf, size: int, **options) -> Classifier:
    """The model a run of ``model_conf`` trains (random weights: the GPU machine need not download any)."""
    return Classifier(model_conf.timm_name, CLASSES, image_size=size, model_name=model_conf.name,
                      drop_rate=model_conf.drop_rate, freeze_bn=model_conf.freeze_bn,
                      frozen_layers=model_conf.frozen_layers, pretrained=False, **options)


def bf16_ok(ctx: Context) -> bool:
    return not ctx.cuda or torch.cuda.is_bf16_supported()


def fastest_config(ctx: Context, name: str) -> tuple[str, str, bool]:
    """The configuration in which the training part measured ``name`` fastest (bf16-mixed if it did not)."""
    measured = ctx.results.get("training", {}).get("models", {}).get(name, {})
    rated = [c for c in CONFIGS if "rate" in measured.get(c[0], {})]
    if rated:
        return max(rated, key=lambda c: measured[c[0]]["rate"])
    return CONFIGS[1] if bf16_ok(ctx) else CONFIGS[0]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cell(result: dict | None, key: str, fmt: str) -> str:
    if not result:
        return "n/a"
    if key in result and result[key] is not None:
        return fmt.format(result[key])
    if "failed" in result:
        return f"failed ({result['failed']})"
    return "not measured (budget)" if result.get("skipped") else "n/a"


def ratio_cell(a: dict | None, b: dict | None) -> str:
    if a and b and "rate" in a and "rate" in b:
        return f"{a['rate'] / b['rate']:.2f}"
    return "n/a"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def nvml_id(device: torch.device) -> str:
    """The GPU's id for nvidia-smi, which ignores CUDA_VISIBLE_DEVICES (that maps torch's index to it)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


def nvidia_smi(device: torch.device, query: str) -> str | None:
    """One ``--query-gpu`` field of the device, or None without nvidia-smi."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i",
                              nvml_id(device)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def utilisation_query(device: torch.device) -> tuple[Callable[[], float] | None, str]:
    """A function returning the GPU's utilisation in % and where it comes from; (None, why) when there is none."""
    if device.type != "cuda":
        return None, "nothing (not a GPU): the waiting share stands for it"
    try:
        torch.cuda.utilization(device)
        return (lambda: float(torch.cuda.utilization(device))), "NVML (torch.cuda.utilization), every 0.2 s"
    except Exception:  # pynvml missing, or NVML not usable here
        pass
    value = nvidia_smi(device, "utilization.gpu")
    if value is not None and value.replace(".", "").isdigit():
        return (lambda: float(nvidia_smi(device, "utilization.gpu") or "nan")), "nvidia-smi, every 0.2 s"
    return None, "nothing (no NVML, no nvidia-smi): the waiting share stands for it"


class Utilisation:
    """Samples ``query()`` every ``period`` s in a thread while in the ``with`` block."""

    def __init__(self, query: Callable[[], float] | None, period: float = 0.2):
        self.query, self.period = query, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append((time.perf_counter(), self.query()))
            except Exception:
                return

    def __enter__(self) -> Utilisation:
        if self.query is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        """The mean of the samples taken between ``start`` and ``end`` (perf_counter); None without any."""
        values = [v for t, v in self.samples if start <= t <= end and v == v]
        return float(np.mean(values)) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:1 ... (default: cuda; the dry run: cpu)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check.md", help="the report (.md; .json beside)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for everything, from the start")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, a few steps, on a CPU (what the tests run)")
    parser.add_argument("--full-dataset", action="store_true",
                        help="the synthetic tree at BreaKHis' full counts (7,909 images) instead of 1,024")
    parser.add_argument("--compile-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16-mixed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = DRY if args.dry_run else FULL
    if args.full_dataset:
        settings = replace(settings, synthetic=replace(settings.synthetic, counts="breakhis"))
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if args.dry_run:
        torch.set_num_threads(1)  # on a few shared cores, more threads only wait for each other
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False). On a CPU, run it with --dry-run.")
    if device.type != "cuda" and not args.dry_run:
        sys.exit(f"gpu_check: --device {device} is not a CUDA GPU; the check is for GPUs (--dry-run runs it on a CPU).")
    if device.type == "cuda":  # one explicit index everywhere: Lightning, memory statistics, the compile child
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if args.compile_child:
        compile_child(args.compile_child, str(device), args.precision, settings)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(device, settings, Path(tmp))

        lock, progress = threading.Lock(), {"done": [], "running": None}

        def report(done: list, running: Part | None) -> None:
            with lock:
                progress.update(done=list(done), running=running)
                args.out.write_text(markdown(done, ctx, args.budget_s, running))
                args.out.with_suffix(".json").write_text(json.dumps(ctx.results, indent=1, default=str))

        def expire() -> None:
            report(progress["done"], progress["running"])
            if ctx.child is not None:
                stop(ctx.child)
            shutil.rmtree(tmp, ignore_errors=True)  # os._exit skips the with-block's clean-up
            print(f"[gpu_check] stopped at the {args.budget_s:.0f} s limit; what was measured is in {args.out}",
                  file=sys.stderr, flush=True)
            os._exit(3)

        with Watchdog(START + args.budget_s, expire):
            run_parts(PARTS, ctx, args.budget_s, report)
    print(args.out.read_text())
    print(f"[gpu_check] wrote {args.out} and {args.out.with_suffix('.json')} in {time.monotonic() - START:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
