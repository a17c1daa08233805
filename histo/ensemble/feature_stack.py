"""Feature-level stacking, the paper's "v1ensemble"/"v2ensemble": an MLP on the members' concatenated features.

The paper froze its five trunks and trained a small MLP with batch norm and dropout on their
concatenated pooled features, on the val split, with the test split monitored every epoch. Here
the input is the same (each member's penultimate features, saved by training with
``predict.features=true``), the MLP is ``D -> 128 -> 32 -> classes`` with batch norm, ReLU and
dropout 0.2, it is fitted on val minus a patient-grouped hold-out fold, and early stopping watches
the hold-out log loss; the test split is only predicted at the end. Features are standardised
with the fitting rows' mean and standard deviation. Deterministic for a seed (CPU).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Settings:
    hidden: tuple[int, ...] = (128, 32)
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20


@dataclass
class FittedMLP:
    net: nn.Module
    mean: np.ndarray
    std: np.ndarray
    best_epoch: int
    epochs: int
    holdout_log_loss: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            x = torch.as_tensor((features - self.mean) / self.std, dtype=torch.float32)
            return torch.softmax(self.net(x), dim=1).double().numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted network and standardisation as named tensors (saved as safetensors, never pickled)."""
        state = {f"net.{k}": v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}
        return {**state, "mean": torch.from_numpy(np.array(self.mean)), "std": torch.from_numpy(np.array(self.std))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], hidden, dropout: float, n_classes: int) -> FittedMLP:
        """The network :meth:`tensors` saved, rebuilt for prediction."""
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
        net = mlp(len(mean), n_classes, tuple(hidden), dropout)
        net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(net.eval(), mean, std, best_epoch=-1, epochs=-1, holdout_log_loss=float("nan"))


def mlp(n_inputs: int, n_classes: int, hidden=(128, 32), dropout: float = 0.2) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Dropout per hidden layer, then a linear output layer."""
    layers, width = [], n_inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, n_classes))


def fit(x_fit, y_fit, x_holdout, y_holdout, n_classes: int, settings: Settings, seed: int) -> FittedMLP:
    """Train on the fitting rows, keep the weights of the epoch with the lowest hold-out log loss."""
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0) + 1e-6
    fit_x = torch.as_tensor((x_fit - mean) / std, dtype=torch.float32)
    fit_y = torch.as_tensor(y_fit, dtype=torch.long)
    hold_x = torch.as_tensor((x_holdout - mean) / std, dtype=torch.float32)
    hold_y = torch.as_tensor(y_holdout, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):  # deterministic, and leaves the caller's RNG alone
        torch.manual_seed(seed)
        net = mlp(fit_x.shape[1], n_classes, settings.hidden, settings.dropout)
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best = (np.inf, 0, copy.deepcopy(net.state_dict()))
        epoch = 0
        for epoch in range(1, settings.max_epochs + 1):
            net.train()
            for rows in _batches(len(fit_x), settings.batch_size, generator):
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(fit_x[rows]), fit_y[rows]).backward()
                optimizer.step()
            net.eval()
            with torch.no_grad():
                loss = float(nn.functional.cross_entropy(net(hold_x), hold_y))
            if loss < best[0] - 1e-6:
                best = (loss, epoch, copy.deepcopy(net.state_dict()))
            elif epoch - best[1] >= settings.patience:
                break
        net.load_state_dict(best[2])
    return FittedMLP(net, mean, std, best_epoch=best[1], epochs=epoch, holdout_log_loss=best[0])


def _batches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled mini-batches; a last batch of one row joins the one before (batch norm needs two)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches
