"""Benchmark training: histo's LightningModule in a real pl.Trainer against a plain PyTorch loop; prints a table.

    .venv/bin/python scripts/bench_train.py                      # CPU: V1-B0 at 112 px, batch 32, fp32
    .venv/bin/python scripts/bench_train.py --device cuda --models all --sizes paper --precision bf16-mixed \\
        --channels-last                                          # a GPU: the ten models at the paper's sizes

Both sides train the same timm network (``conf/model/<name>.yaml``'s ``timm_name``, random weights,
frozen BatchNorm, dropout 0.3) with the same Adam parameter groups (backbone 1e-4, head 1e-3), the
same cross-entropy, precision, memory format and batches, from the same in-memory uint8 tensors (no
decoding: this measures the framework, not the loader). Ours is :class:`histo.models.Classifier`
fitted by ``pl.Trainer`` as ``histo-train`` does it: uint8 to normalised input in
``on_after_batch_transfer``, per-epoch torchmetrics, ``self.log`` to a CSV logger every 10 steps;
no progress bar and no checkpointing. The plain loop is a dozen lines of PyTorch. Each side
runs ``--warmup`` steps, then ``--steps`` timed steps (from the end of the last warm-up step to the
end of the last step, batches fetched and moved included); the two alternate ``--repeats`` times
and the table shows medians. ``ratio: <ours / plain>`` (geometric mean over the models) is the last
line; the target is >= 0.95. With ``--device cuda`` it also estimates the training time of each
model with the paper's recipe (40 epochs of 5,545 images, a validation pass of 1,182 each epoch, the
prediction of val and test)
and of the ten (`make paper`'s training); on a CPU that estimate is printed but means little. The
timing code is shared with gpu_check.py (training_speed.py).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
from training_speed import (  # noqa: E402
    CLASSES,
    PAPER_EPOCHS,
    PAPER_SPLIT,
    PRECISION_DTYPES,
    InMemory,
    eval_rate,
    fit_steps,
    paper_minutes,
    sync,
)

from histo import config_option  # noqa: E402
from histo.evaluation.paper import MODELS  # noqa: E402
from histo.models import Classifier  # noqa: E402
from histo.models.backbone import create_backbone, normalization  # noqa: E402


def ours(timm_name: str, size: int, loader: DataLoader, args) -> float:
    model = Classifier(timm_name, CLASSES, image_size=size, pretrained=False, channels_last=args.channels_last)
    return fit_steps(model, loader, args.device, args.precision, args.warmup, args.steps).seconds


def plain(timm_name: str, size: int, loader: DataLoader, args) -> float:
    device = torch.device(args.device)
    net = create_backbone(timm_name, len(CLASSES), drop_rate=0.3, pretrained=False, freeze_bn=True).to(device)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory).train()
    mean, std = (255 * torch.tensor(v, device=device).view(1, -1, 1, 1) for v in normalization(net))
    head = list(net.get_classifier().parameters())
    backbone = [p for p in net.parameters() if p.requires_grad and all(p is not h for h in head)]
    optimizer = torch.optim.Adam([{"params": backbone, "lr": 1e-4}, {"params": head, "lr": 1e-3}])
    dtype = PRECISION_DTYPES.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    started = None
    for step, batch in enumerate(loader):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        x = ((images.float() - mean) / std).contiguous(memory_format=memory)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step == args.warmup - 1:
            sync(device)
            started = time.perf_counter()
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    parser.add_argument("--models", default="v1_b0", help="all, or a comma-separated list of conf/model names")
    parser.add_argument("--sizes", default="small", help="small (--size for every model) | paper (each model's size)")
    parser.add_argument("--size", type=int, default=112, help="the input size with --sizes small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side, alternating; medians shown")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(MODELS) if args.models == "all" else args.models.split(",")
    gpu = args.device.startswith("cuda")

    rows, ratios = [], []
    for name in names:
        conf = config_option("model", name)
        size = int(conf.image_size) if args.sizes == "paper" else args.size
        data = InMemory(args.batch * (args.warmup + args.steps), size)
        loader = DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=0, pin_memory=gpu)
        times = {"plain": [], "ours": []}
        for r in range(args.repeats):
            for side in ("plain", "ours") if r % 2 == 0 else ("ours", "plain"):
                torch.manual_seed(r)
                run = plain if side == "plain" else ours
                times[side].append(run(conf.timm_name, size, loader, args))
        rate = {side: args.batch * args.steps / statistics.median(t) for side, t in times.items()}
        spread = {side: [args.batch * args.steps / s for s in t] for side, t in times.items()}
        model = Classifier(conf.timm_name, CLASSES, image_size=size, pretrained=False, channels_last=args.channels_last)
        evaluation = eval_rate(model, loader, args.device, args.precision, args.warmup)
        minutes = paper_minutes(rate["ours"], evaluation)
        ratios.append(rate["ours"] / rate["plain"])
        rows.append((name, conf.timm_name, size, rate, spread, evaluation, minutes))
        print(f"  {name}: plain {rate['plain']:.1f} img/s, ours {rate['ours']:.1f} img/s", file=sys.stderr, flush=True)

    where = torch.cuda.get_device_name(args.device) if gpu else f"CPU, {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# Training benchmark on {where}: batch {args.batch}, {args.precision}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}, {args.warmup} warm-up + {args.steps} timed "
          f"steps, {args.repeats} alternating repeats; torch {torch.__version__}, Lightning {pl.__version__}\n")
    print("| model | timm | size | plain loop img/s (median; min-max) | ours img/s (median; min-max) | ours / plain "
          "| eval img/s | est. paper recipe, min |")
    print("|---|---|---|---|---|---|---|---|")
    for name, timm_name, size, rate, spread, evaluation, minutes in rows:
        cells = [f"{rate[s]:.1f} ({min(spread[s]):.1f}-{max(spread[s]):.1f})" for s in ("plain", "ours")]
        print(f"| {name} | {timm_name} | {size} | {cells[0]} | {cells[1]} | {rate['ours'] / rate['plain']:.3f} "
              f"| {evaluation:.1f} | {minutes:,.0f} |")
    total = sum(r[-1] for r in rows)
    label = "" if gpu else " (on this CPU: a sanity number, not the GPU target)"
    print(f"\nEstimated training time with the paper's recipe ({PAPER_EPOCHS} epochs of {PAPER_SPLIT['train']} images + "
          f"{PAPER_SPLIT['val']} validation images each, then val and test predicted once) at the sizes above, {len(rows)} model(s): {total:,.0f} min"
          f"{label}; loading, prediction and start-up not included.")
    print(f"ratio: {math.exp(statistics.fmean(math.log(r) for r in ratios)):.3f}")


if __name__ == "__main__":
    main()
