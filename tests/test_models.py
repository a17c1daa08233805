"""Models: the ten configs, the head, frozen BatchNorm, local weights, clear errors, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import compose_config
from hydra.errors import MissingConfigException
from timm.layers import FrozenBatchNormAct2d

from histo import CONF_DIR
from histo.data.dataset import ImageDataset
from histo.data.transforms import eval_transform
from histo.evaluation.run_dir import RunDir
from histo.models import Classifier, ModelError, create_backbone, load_classifier

PAPER_SIZES = {"v1_b0": 224, "v1_b1": 240, "v1_b2": 260, "v1_b3": 300, "v1_b4": 380,
               "v2_b0": 224, "v2_b1": 240, "v2_b2": 260, "v2_b3": 300, "v2_s": 380}
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def test_the_ten_paper_models_are_configured():
    assert MODELS == sorted(PAPER_SIZES)


@pytest.mark.parametrize("name", MODELS)
def test_model_config_composes_and_runs_forward(name, tmp_path):
    cfg = compose_config("train", [f"model={name}", "model.pretrained=false"], tmp_path)
    assert cfg.model.image_size == PAPER_SIZES[name]
    assert cfg.model.family == name[:2]
    net = create_backbone(cfg.model.timm_name, 2, cfg.model.drop_rate, pretrained=False, freeze_bn=True)
    assert net.drop_rate == 0.3 and net.get_classifier().out_features == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_frozen_batchnorm_does_not_move_in_training():
    model = Classifier("tf_efficientnet_b0", ["benign", "malignant"], image_size=32)
    bn = next(m for m in model.net.modules() if isinstance(m, FrozenBatchNormAct2d))
    before = bn.running_mean.clone(), bn.weight.clone()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    optimizer.step()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.weight, before[1])
    assert not any(p.requires_grad for p in bn.parameters())


def test_two_learning_rates_backbone_and_head():
    model = Classifier("tf_efficientnet_b0", ["benign", "malignant"], image_size=32)
    groups = model.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    head = {id(p) for p in model.net.get_classifier().parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert not head & {id(p) for p in groups[0]["params"]}


def test_local_weights_file(tmp_path):
    source = timm.create_model("tf_efficientnet_b0", pretrained=False)  # 1000 ImageNet classes
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    net = create_backbone("tf_efficientnet_b0", 2, weights=str(tmp_path / "weights.pth"), freeze_bn=False)
    assert torch.equal(net.conv_stem.weight, source.conv_stem.weight)
    assert torch.equal(net.blocks[3][0].conv_pw.weight, source.blocks[3][0].conv_pw.weight)
    assert net.get_classifier().out_features == 2
    with pytest.raises(ModelError, match="model.weights"):
        create_backbone("tf_efficientnet_b0", 2, weights=str(tmp_path / "missing.pth"))


def test_unknown_timm_name():
    with pytest.raises(ModelError, match="model.timm_name='tf_efficientnet_b9'"):
        create_backbone("tf_efficientnet_b9", 2)


def test_unknown_model_option_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException, match="v1_b0"):
        compose_config("train", ["model=v1_b9"], tmp_path)


def test_failed_download_names_model_weights():
    code = ("from histo.models import create_backbone\n"
            "create_backbone('tf_efficientnet_b0.aa_in1k', 2, pretrained=True)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "ModelError" in result.stderr and "model.weights=<file>" in result.stderr
    assert "model.pretrained=false" in result.stderr


def test_checkpoint_rebuilds_the_model_without_hydra(trained_runs):
    """The best checkpoint alone reproduces the logits in the run's prediction file."""
    run = RunDir(trained_runs[0])
    model = load_classifier(run.best_checkpoint())
    hp = model.hparams
    assert hp.class_names == ["benign", "malignant"] and hp.image_size == 32
    frame = run.read_predictions("test").head(6)
    root = Path(run.record()["data"]["root"])
    dataset = ImageDataset(root, frame, eval_transform(hp.image_size))
    images = torch.stack([dataset[i]["image"] for i in range(len(frame))])
    with torch.no_grad():
        logits = model(model.preprocess(images)).numpy()
    expected = frame[["logit_benign", "logit_malignant"]].to_numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("timm_name", "frozen", "paper_trainable", "paper_total"), [
    ("tf_efficientnetv2_b1", 4, 6_774_550, 6_933_686),
    ("tf_efficientnetv2_b2", 9, 8_506_656, 8_772_192),
])
def test_frozen_layers_reproduce_the_papers_trainable_counts(timm_name, frozen, paper_trainable, paper_total):
    """Keras counts BatchNorm statistics as (non-trainable) parameters; with them the totals agree."""
    net = create_backbone(timm_name, 2, frozen_layers=frozen, freeze_bn=False)
    # per BatchNorm channel: 2 affine parameters (frozen in the paper) and 2 running statistics
    per_two = sum(2 * m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad) - per_two
    assert sum(p.numel() for p in net.parameters()) + per_two == paper_total
    assert trainable == paper_trainable
    with pytest.raises(ModelError, match="model.frozen_layers"):
        create_backbone("tf_efficientnet_b0", 2, frozen_layers=10_000)


class _Payload:
    """A pickle that runs code when it is loaded without ``weights_only=True``."""

    def __reduce__(self):
        return (print, ("a weights file ran code",))


def test_weights_and_checkpoints_are_loaded_as_tensors_only(trained_runs, tmp_path):
    torch.save({"conv_stem.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="Could not read model.weights=.*evil.pth"):
        create_backbone("tf_efficientnet_b0", 2, weights=str(tmp_path / "evil.pth"))
    run = RunDir(trained_runs[0])
    checkpoint = torch.load(run.best_checkpoint(), weights_only=True)  # a run's own checkpoints need nothing more
    torch.load(run.last_checkpoint_path, weights_only=True)
    torch.save({**checkpoint, "extra": _Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="weights_only"):
        load_classifier(tmp_path / "evil.ckpt")
