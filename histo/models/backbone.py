"""EfficientNet backbones from timm: the paper's head, frozen BatchNorm, pretrained or local weights."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d


class ModelError(ValueError):
    """A model that cannot be built; the message names the config key and what to do."""


def create_backbone(
    timm_name: str,
    num_classes: int,
    drop_rate: float = 0.3,
    pretrained: bool = False,
    weights: str | None = None,
    freeze_bn: bool = True,
) -> torch.nn.Module:
    """A timm model whose head is global average pooling, dropout ``drop_rate`` and a linear layer.

    ``weights`` (a local timm/PyTorch state dict: .pth, .bin or .safetensors) takes precedence over
    ``pretrained``, which downloads ImageNet weights through timm. The ImageNet classifier is dropped
    either way. With ``freeze_bn`` every BatchNorm keeps its ImageNet statistics and affine
    parameters (timm's FrozenBatchNorm), as the paper did.
    """
    if not timm.is_model(timm_name):
        raise ModelError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    kwargs = {}
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"model.weights={weights!r} is not a file.")
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    elif pretrained:
        kwargs = {"pretrained": True}
    try:
        model = timm.create_model(timm_name, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
    except Exception as err:
        if weights:
            raise ModelError(f"Could not load model.weights={weights!r} into {timm_name}: {err}") from err
        raise ModelError(
            f"Could not download the pretrained weights of {timm_name} ({type(err).__name__}: {err}). "
            "Without internet, fetch them elsewhere (e.g. the Hugging Face repo timm/"
            f"{timm_name}) and pass model.weights=<file>, or train from scratch with model.pretrained=false."
        ) from err
    return freeze_batch_norm_2d(model) if freeze_bn else model


def normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std (0-1 scale) the model's pretrained weights expect."""
    cfg = timm.data.resolve_model_data_config(model)
    return tuple(cfg["mean"]), tuple(cfg["std"])
