"""A Lightning callback that turns ``trainer.predict`` output into the prediction files.

The writer is given the data it predicts on (a :class:`PredictionSource`, the run's datamodule): which
split each predict loader serves, each split's rows and the class names.

Under DDP each process predicts a shard (the distributed sampler may repeat images to even out
the shards); the callback gathers all shards on rank 0, keeps each image once, checks that every
image of the split is there, and writes ``predictions/<split>.csv`` (and, when asked,
``features/<split>.npy`` in the same row order).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir


class PredictionSource(Protocol):
    """What the writer needs of the data it predicts on (:class:`histo.data.datamodule.BreakHisDataModule`)."""

    predict_splits: tuple[str, ...]  # the split each predict loader serves, in predict_dataloader()'s order
    class_names: tuple[str, ...]

    def split_table(self, split: str) -> pd.DataFrame:
        """The rows of ``split``, in the order its loader serves them (a batch's ``index`` counts them)."""


class PredictionWriter(pl.Callback):
    """Writes ``<run_dir>/predictions/<split>.csv`` (and features) for each split ``source`` predicts."""

    def __init__(self, run_dir: str | Path, source: PredictionSource):
        self.run = RunDir(run_dir)
        self.source = source
        self._parts: dict[int, dict[str, list]] = {}

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._parts = defaultdict(lambda: defaultdict(list))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for key, value in outputs.items():
            self._parts[dataloader_idx][key].append(value.detach().cpu())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        for loader_idx, split in enumerate(self.source.predict_splits):
            local = {k: torch.cat(v).numpy() for k, v in self._parts[loader_idx].items()}
            shards = _gather(local)
            if trainer.is_global_zero:
                self._write(split, shards)
        self._parts = {}

    def _write(self, split: str, shards: list[dict]) -> None:
        merged = {k: np.concatenate([s[k] for s in shards if len(s.get(k, []))]) for k in shards[0]}
        table = self.source.split_table(split)
        index, first = np.unique(merged["index"], return_index=True)  # drops sampler padding
        if not np.array_equal(index, np.arange(len(table))):
            missing = sorted(set(range(len(table))) - set(index.tolist()))
            raise RuntimeError(
                f"Predictions for the {split} split miss {len(missing)} of {len(table)} images "
                f"(e.g. {table['image'].iloc[missing[0]]}); limit_predict_batches must stay 1.0."
            )
        frame = predictions.make_frame(table, merged["logits"][first], list(self.source.class_names))
        predictions.write(frame, self.run.predictions_path(split))
        if "features" in merged:
            order = table["image"].iloc[index].argsort(kind="stable").to_numpy()  # rows as in the CSV
            features_path = self.run.features_path(split)
            features_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(features_path, merged["features"][first][order].astype(np.float32))


def _gather(local: dict) -> list[dict]:
    """Every process's arrays, on every process (shards may differ in length)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, local)
    return shards
