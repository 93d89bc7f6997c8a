"""The built-in model plugin: every architecture builds, adapts and traces."""

from __future__ import annotations

import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn
from torchvision.models._api import WeightsEnum
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from mentor import Params
from mentor_plugins import models
from mentor_plugins.models.torchvision_models import adapt_first_conv


def _collect() -> dict[str, tuple]:
    found: dict[str, tuple] = {}

    def register(name, factory, params=None, description=None, preprocess=None):
        assert name not in found, f"{name} registered twice"
        found[name] = (factory, params, description)

    models.register_models(register=register)
    return found


COMPONENTS = _collect()
# The params each component needs to build (all others build from defaults).
REQUIRED = {"torchvision": {"arch": "resnet18"}}


def build(name: str, num_classes: int, in_channels: int, **params) -> nn.Module:
    factory, params_model, _ = COMPONENTS[name]
    values = params_model.model_validate({**REQUIRED.get(name, {}), **params}).model_dump()
    return factory(num_classes, in_channels, **values)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registers_the_expected_names_with_params_and_descriptions():
    expected = {
        "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
        "wrn_16_2", "wrn_28_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
        "small_cnn", "cnn5", "torchvision",
    }
    assert set(COMPONENTS) == expected
    for name, (factory, params, description) in COMPONENTS.items():
        assert callable(factory), name
        assert isinstance(params, type) and issubclass(params, Params), name
        assert description and "\n" not in description, name


@pytest.mark.parametrize("name", sorted(COMPONENTS))
@pytest.mark.parametrize("num_classes,in_channels,size", [(10, 1, 28), (100, 3, 32)])
def test_builds_and_returns_logits(name, num_classes, in_channels, size):
    torch.manual_seed(0)
    model = build(name, num_classes, in_channels)
    x = torch.randn(2, in_channels, size, size)
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, num_classes)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "small_cnn", "cnn5"])
@pytest.mark.parametrize("size", [8, 20, 33, 48])
def test_other_input_sizes(name, size):
    model = build(name, 5, 2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, size, size)).shape == (2, 5)


# Reference counts at 100 classes (CIFAR-100) from the architecture definitions
# (RepDistiller); they agree with the published figures in the CRD/RepDistiller tables.
PUBLISHED_100 = {
    "resnet20": 0.28e6,
    "resnet32": 0.47e6,
    "resnet56": 0.86e6,
    "resnet110": 1.74e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_1": 0.57e6,
    "wrn_40_2": 2.26e6,
    "vgg8": 3.96e6,
    "vgg13": 9.46e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_100))
def test_parameter_counts_match_published(name):
    count = n_params(build(name, 100, 3))
    assert count == pytest.approx(PUBLISHED_100[name], rel=0.02), f"{name}: {count}"


def test_exact_parameter_counts():
    # Pinned so that an accidental architecture change shows up immediately.
    assert n_params(build("resnet20", 10, 3)) == 272_474  # He et al.: 0.27M
    assert n_params(build("resnet56", 100, 3)) == 861_620
    assert n_params(build("resnet8x4", 100, 3)) == 1_233_540
    assert n_params(build("resnet32x4", 100, 3)) == 7_433_860
    assert n_params(build("wrn_40_2", 100, 3)) == 2_255_156
    assert n_params(build("wrn_16_2", 100, 3)) == 703_284
    assert n_params(build("vgg13", 100, 3)) == 9_462_180


def test_in_channels_only_changes_the_stem():
    rgb, gray = build("resnet20", 10, 3), build("resnet20", 10, 1)
    stem = 16 * 3 * 3  # a 3x3 conv with 16 outputs, per input channel
    assert n_params(rgb) - n_params(gray) == 2 * stem


def test_dropout_is_validated_and_applied():
    _, params_model, _ = COMPONENTS["resnet20"]
    with pytest.raises(ValidationError):
        params_model.model_validate({"dropout": 1.5})
    with pytest.raises(ValidationError):
        params_model.model_validate({"dropout": -0.1})
    for name in ("wrn_16_2", "vgg8", "small_cnn", "cnn5"):
        with pytest.raises(ValidationError):
            COMPONENTS[name][1].model_validate({"dropout": 1.5})
    model = build("wrn_16_2", 10, 3, dropout=0.3)
    assert {m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout) and n.startswith("layer")} == {0.3}
    assert model.head_dropout.p == 0.0  # the classifier's dropout is its own parameter


def test_unknown_params_are_rejected():
    with pytest.raises(ValidationError):
        COMPONENTS["resnet20"][1].model_validate({"width": 2})


def test_small_cnn_params():
    model = build("small_cnn", 10, 1, channels=[4, 8, 12], hidden=32, dropout=0.1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 12]
    assert model.hidden.fc.out_features == 32
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # deep stacks on small images pool down to 1x1 and still work
    deep = build("small_cnn", 10, 1, channels=[4] * 7)
    assert deep(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    params_model = COMPONENTS["small_cnn"][1]
    for bad in ({"channels": []}, {"channels": [8, 0]}, {"hidden": -1}):
        with pytest.raises(ValidationError):
            params_model.model_validate(bad)


def test_cnn5_params():
    model = build("cnn5", 10, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128]
    narrow = build("cnn5", 10, 1, channels=[8, 8, 16, 16, 32])
    assert [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)][-1] == 32
    with pytest.raises(ValidationError):
        COMPONENTS["cnn5"][1].model_validate({"channels": [8, 8, 16]})


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "small_cnn", "cnn5"])
def test_fx_traceable(name):
    model = build(name, 10, 3)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    assert train_nodes[0] == "x" and train_nodes[-1] == "fc"
    # take an intermediate feature and the logits out by node name
    inner = {
        "resnet8x4": "layer3.0.add", "wrn_16_2": "layer2", "vgg8": "layer4",
        "small_cnn": "features.block2", "cnn5": "layer3",
    }[name]
    assert inner in train_nodes or any(n.startswith(inner + ".") for n in train_nodes)
    extractor = create_feature_extractor(model.eval(), {inner: "feat", "fc": "logits"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = extractor(x)
        expected = model(x)
    assert out["feat"].dim() == 4 and out["feat"].shape[0] == 2
    torch.testing.assert_close(out["logits"], expected)


def test_resnet_preactivation_feature_is_not_clobbered():
    # No in-place ReLU: a block's pre-ReLU sum must keep its negative values.
    model = build("resnet8x4", 10, 3).eval()
    extractor = create_feature_extractor(model, ["layer1.0.add", "layer1.0.relu2"])
    with torch.no_grad():
        out = extractor(torch.randn(2, 3, 32, 32))
    assert (out["layer1.0.add"] < 0).any()
    torch.testing.assert_close(out["layer1.0.relu2"], out["layer1.0.add"].relu())


# --- torchvision ----------------------------------------------------------------


def test_torchvision_resnet18_gray_28():
    model = build("torchvision", 10, 1, arch="resnet18")
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64 and model.conv1.kernel_size == (7, 7)
    assert model.conv1.stride == (2, 2) and model.conv1.padding == (3, 3)
    assert model.fc.out_features == 10
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_unknown_arch_suggests():
    params_model = COMPONENTS["torchvision"][1]
    with pytest.raises(ValidationError) as info:
        params_model.model_validate({"arch": "resnt18"})
    assert "did you mean 'resnet18'" in str(info.value)


def test_torchvision_unknown_weights_suggests():
    params_model = COMPONENTS["torchvision"][1]
    with pytest.raises(ValidationError) as info:
        params_model.model_validate({"arch": "resnet18", "weights": "IMAGENET1K_V2"})
    assert "did you mean 'IMAGENET1K_V1'" in str(info.value)
    ok = params_model.model_validate({"arch": "resnet18", "weights": "ResNet18_Weights.DEFAULT"})
    assert ok.weights == "DEFAULT"


def test_torchvision_rejects_reserved_kwargs():
    params_model = COMPONENTS["torchvision"][1]
    for kwargs in ({"num_classes": 5}, {"aux_logits": True}, {"weights": "DEFAULT"}):
        with pytest.raises(ValidationError):
            params_model.model_validate({"arch": "googlenet", "kwargs": kwargs})


def test_torchvision_kwargs_reach_the_builder():
    model = build("torchvision", 10, 3, arch="mobilenet_v3_small", kwargs={"dropout": 0.5})
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.5}


@pytest.mark.parametrize("arch,kwargs", [
    ("googlenet", {"init_weights": False}),  # auxiliary heads must not leak out
    ("squeezenet1_1", {}),  # a 1x1-conv head
])
def test_torchvision_other_heads_and_aux_logits(arch, kwargs):
    model = build("torchvision", 10, 1, arch=arch, kwargs=kwargs)
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_torchvision_pretrained_head_and_channels(monkeypatch):
    # Stand in for the download: the "pretrained" weights are a seeded random resnet18.
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: reference)
    model = build("torchvision", 7, 1, arch="resnet18", weights="DEFAULT")
    assert model.fc.out_features == 7 and model.fc.in_features == 512
    rgb = reference["conv1.weight"]
    expected = rgb.sum(dim=1, keepdim=True)  # mean over RGB x 3 / in_channels
    torch.testing.assert_close(model.conv1.weight.detach(), expected)
    torch.testing.assert_close(model.layer1[0].conv1.weight.detach(),
                               reference["layer1.0.conv1.weight"])
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    # same class count as the weights: the pretrained head stays
    same = build("torchvision", 1000, 3, arch="resnet18", weights="DEFAULT")
    torch.testing.assert_close(same.fc.weight.detach(), reference["fc.weight"])


def test_adapt_first_conv_random_keeps_hyperparameters():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    first = model.features[0][0]
    adapt_first_conv(model, 2, pretrained=False)
    new = model.features[0][0]
    assert new is not first and new.in_channels == 2
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(new, attr) == getattr(first, attr)
    assert (new.bias is None) == (first.bias is None)


def test_stochastic_depth_drops_residual_branches_in_training_only():
    import torch

    from mentor.plugins import load_plugins

    registry = load_plugins().registry
    for name in ("resnet20", "wrn_16_2"):
        component = registry.get("model", name)
        plain = component.build(10, 3)
        noisy = component.build(10, 3, stochastic_depth=0.5)
        rates = [m.p for m in noisy.modules() if type(m).__name__ == "StochasticDepth"]
        assert rates[-1] == 0.5 and rates[0] == 0.5 / len(rates)  # linear decay rule
        assert all(m.p == 0 for m in plain.modules() if type(m).__name__ == "StochasticDepth")
        noisy.load_state_dict(plain.state_dict())  # no new parameters
        x = torch.randn(4, 3, 32, 32)
        plain.eval()
        noisy.eval()
        assert torch.allclose(plain(x), noisy(x), atol=1e-6)  # identity at inference
        noisy.train()
        torch.manual_seed(0)
        outs = [noisy(x) for _ in range(2)]
        assert not torch.allclose(outs[0], outs[1])  # different blocks dropped on each pass


def test_wrn_head_dropout_drops_before_the_classifier_only():
    """The MPL/UDA WRN-28-2: dropout on the pooled features, none inside the blocks."""
    import torch
    from torch import nn

    from mentor_plugins.models.wrn import wrn_28_2

    torch.manual_seed(0)
    model = wrn_28_2(10, 3, head_dropout=0.5)
    inside = [m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout) and name.startswith("layer")]
    assert inside and set(inside) == {0.0} and model.head_dropout.p == 0.5
    plain = wrn_28_2(10, 3)
    plain.load_state_dict(model.state_dict())  # no new parameters: the same weights load either way
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    model.train()
    seen = {}
    model.fc.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model(x)
    assert ((seen["x"] == 0).float().mean() > 0.3)  # about half the pooled features dropped
