"""EfficientNet backbones from timm: the paper's head, frozen BatchNorm, pretrained or local weights."""

from __future__ import annotations

import logging

import timm
import torch
from timm.layers import freeze_batch_norm_2d

from histo.models import weights as local_weights
from histo.models.errors import ModelError

log = logging.getLogger(__name__)


def create_backbone(
    timm_name: str,
    num_classes: int,
    drop_rate: float = 0.3,
    pretrained: bool = False,
    weights: str | None = None,
    freeze_bn: bool = True,
    frozen_layers: int = 0,
) -> torch.nn.Module:
    """A timm model whose head is global average pooling, dropout ``drop_rate`` and a linear layer.

    With ``pretrained`` the ImageNet weights come from ``weights`` (a local state dict in timm, torchvision
    or efficientnet_pytorch naming, .pth, .bin or .safetensors, or ``package:<pip name>``: see
    :mod:`histo.models.weights`) or, when it is null or names a package that is not installed, are
    downloaded through timm; without ``pretrained`` the network starts from random (``weights`` is not
    read). The ImageNet classifier is dropped either way. With ``freeze_bn`` every BatchNorm keeps its ImageNet statistics and affine
    parameters (timm's FrozenBatchNorm), as the paper did. ``frozen_layers`` keeps the first that
    many parameterised layers (convolutions, in network order, BatchNorm not counted) frozen.
    """
    if not timm.is_model(timm_name):
        raise ModelError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    path = local_weights.resolve(str(weights)) if weights and pretrained else None
    if weights and pretrained and path is None:
        log.warning("model.weights=%s: that package is not installed, so the ImageNet weights are downloaded "
                    "through timm.", weights)
    try:
        model = timm.create_model(timm_name, num_classes=num_classes, drop_rate=drop_rate,
                                  pretrained=bool(pretrained and path is None))
    except Exception as err:
        raise ModelError(
            f"Could not download the pretrained weights of {timm_name} ({type(err).__name__}: {err}). "
            "Without internet, fetch them elsewhere (e.g. the Hugging Face repo timm/"
            f"{timm_name}) and pass model.weights=<file>, or train from scratch with model.pretrained=false."
        ) from err
    if path is not None:
        local_weights.load(model, path, f"model.weights={weights!r}")
    freeze_leading_layers(model, frozen_layers)
    return freeze_batch_norm_2d(model) if freeze_bn else model


def freeze_leading_layers(model: torch.nn.Module, n: int) -> list[str]:
    """Stop gradients to the first ``n`` layers that own parameters (BatchNorm excluded); returns their names.

    The paper trained V2-B1 and V2-B2 with Keras' ``model.layers[-300:]`` trainable; that leaves
    exactly the first 4 (V2-B1) and 9 (V2-B2) convolutions frozen, which ``n`` reproduces.
    """
    frozen = []
    for name, module in model.named_modules():
        if len(frozen) == n:
            break
        own = list(module.parameters(recurse=False))
        if own and not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for p in own:
                p.requires_grad_(False)
            frozen.append(name)
    if len(frozen) < n:
        raise ModelError(f"model.frozen_layers={n} exceeds the {len(frozen)} parameterised layers of the model.")
    return frozen


def normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std (0-1 scale) the model's pretrained weights expect."""
    cfg = timm.data.resolve_model_data_config(model)
    return tuple(cfg["mean"]), tuple(cfg["std"])
