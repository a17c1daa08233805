"""How fast histo's Classifier trains and evaluates: the measurements bench_train.py and gpu_check.py share.

:func:`fit_steps` fits a :class:`histo.models.Classifier` in a ``pl.Trainer`` set up as ``histo-train``
sets it up (precision, per-epoch metrics, a CSV logger every 10 steps; no progress bar, no checkpoints,
no validation) for ``warmup + steps`` steps, from any loader or datamodule; its :class:`StepClock` times
the steps after the warm-up: their wall time, images, and how long the loop waited between one step's
end and the next one's start (fetching the batch and moving it to the device: the loader's share).
Batches from :class:`InMemory` cost no decoding, so they measure the model and the framework alone.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from histo.models import Classifier

CLASSES = ["benign", "malignant"]
PAPER_SPLIT = {"train": 5545, "val": 1182, "test": 1182}  # images in each split of the paper's (7,909 in all)
PAPER_EPOCHS = 40
PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
warnings.filterwarnings("ignore", message=".*(does not have many workers|log_every_n_steps|LeafSpec|"
                                          "overridden `on_after_batch_transfer`|Tensor Cores).*")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # no per-fit banners between the table rows


class InMemory(Dataset):
    """uint8 images and labels already in memory, served as histo's datasets serve them."""

    def __init__(self, n: int, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


class StepClock(pl.Callback):
    """Times the training steps after the first ``warmup`` (counted across epochs), up to the end of fitting.

    ``seconds``: from the end of the last warm-up step to the end of the last step (``max_steps``) or of
    fitting, the device synchronised at both; ``images``: images in those steps; ``waited``: the summed gaps between a step's end
    and the next step's start, where the loop fetches the next batch and moves it to the device; the
    device is not synchronised per step, so a gap idles the device only once its queue of work runs dry.
    ``warmup_seconds``: from the start of fitting to the end of the warm-up (compiling, cuDNN's choices).
    """

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, torch.device(device)
        self.step = 0
        self.fit_started = self.started = self.last_end = None
        self.seconds = self.warmup_seconds = None
        self.images, self.waited = 0, 0.0

    def on_fit_start(self, trainer, module):
        self.fit_started = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.started is not None and self.last_end is not None:
            self.waited += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.step += 1
        if self.started is not None:
            self.images += len(batch["label"])
            if self.step == trainer.max_steps:
                self._stop()
        elif self.step == self.warmup:
            sync(self.device)
            self.started = time.perf_counter()
            self.warmup_seconds = self.started - self.fit_started
        self.last_end = time.perf_counter()

    def on_train_end(self, trainer, module):
        if self.started is not None and self.seconds is None:
            self._stop()

    def _stop(self) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        """Images per second over the timed steps."""
        if not self.seconds or not self.images:
            raise RuntimeError(f"No timed steps: fitting stopped after {self.step} step(s), warm-up {self.warmup}.")
        return self.images / self.seconds

    @property
    def wait_share(self) -> float:
        """The share of the timed wall time spent between steps (fetching and moving batches)."""
        return self.waited / self.seconds if self.seconds else float("nan")


def fit_steps(model: Classifier, data, device: str, precision: str, warmup: int, steps: int) -> StepClock:
    """Fit ``model`` for ``warmup + steps`` steps on ``data`` (a DataLoader or a LightningDataModule,
    its training loader used; epochs repeat as needed) and return the clock of the last ``steps``."""
    device = torch.device(device)
    clock = StepClock(warmup, device)
    accelerator, devices = lightning_devices(device)
    with tempfile.TemporaryDirectory(prefix="histo-speed-") as tmp:
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, precision=precision, max_steps=warmup + steps, max_epochs=-1,
            limit_val_batches=0, num_sanity_val_steps=0, logger=pl.loggers.CSVLogger(tmp), log_every_n_steps=10,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
            default_root_dir=tmp,
        )
        if isinstance(data, pl.LightningDataModule):
            trainer.fit(model, datamodule=data)
        else:
            trainer.fit(model, train_dataloaders=data)
    return clock


def eval_rate(model: Classifier, loader, device: str, precision: str, warmup: int) -> float:
    """Images/s of forward passes without gradients (validation and prediction), after ``warmup`` batches."""
    device = torch.device(device)
    model = model.to(device).eval()
    dtype = PRECISION_DTYPES.get(precision)
    started, n = None, 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for step, batch in enumerate(loader):
            model(model.preprocess(batch["image"].to(device, non_blocking=True)))
            if step == warmup - 1:
                sync(device)
                started = time.perf_counter()
            elif step >= warmup:
                n += len(batch["label"])
    sync(device)
    if started is None or n == 0:
        raise RuntimeError(f"eval_rate needs more than {warmup} batches.")
    return n / (time.perf_counter() - started)


def paper_minutes(train_rate: float, evaluation_rate: float) -> float:
    """Minutes one model takes with the paper's recipe at these rates: 40 epochs of training and validation,
    then the prediction of val and test with the best checkpoint (start-up and checkpoint writing not included)."""
    epochs = PAPER_EPOCHS * (PAPER_SPLIT["train"] / train_rate + PAPER_SPLIT["val"] / evaluation_rate)
    return (epochs + (PAPER_SPLIT["val"] + PAPER_SPLIT["test"]) / evaluation_rate) / 60


def lightning_devices(device: torch.device) -> tuple[str, int | list[int]]:
    """``pl.Trainer``'s accelerator and devices for ``device`` (``cuda:1`` means that GPU, not the first)."""
    if device.type == "cuda":
        return "gpu", [device.index if device.index is not None else torch.cuda.current_device()]
    return device.type, 1


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU are otherwise the time to queue it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
