"""EfficientNet backbones from timm: the paper's head, frozen BatchNorm, pretrained or local weights."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d

from histo.command import UserError


class ModelError(UserError):
    """A model that cannot be built; the message names the config key and what to do."""


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

    ``weights`` (a local timm/PyTorch state dict: .pth, .bin or .safetensors) takes precedence over
    ``pretrained``, which downloads ImageNet weights through timm. The ImageNet classifier is dropped
    either way. With ``freeze_bn`` every BatchNorm keeps its ImageNet statistics and affine
    parameters (timm's FrozenBatchNorm), as the paper did. ``frozen_layers`` keeps the first that
    many parameterised layers (convolutions, in network order, BatchNorm not counted) frozen.
    """
    if not timm.is_model(timm_name):
        raise ModelError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    kwargs = {}
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"model.weights={weights!r} is not a file.")
        try:  # tensors only: a weights file cannot run code when it is read
            state_dict = timm.models.load_state_dict(str(path), weights_only=True)
        except Exception as err:
            raise ModelError(f"Could not read model.weights={weights!r}: {err}") from err
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state_dict}}
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
    model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
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
