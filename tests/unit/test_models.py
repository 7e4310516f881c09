"""Models: the small CNN and its X-variant, X-DNN checks, training, loading and the on-disk format."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.data.sample_store import SampleSet, write_sample_store
from attrflow.models.cards import load_model, save_model
from attrflow.models.checkpoints import ModelLoadError, read_state_dict
from attrflow.models.preparation import prepare_model
from attrflow.models.small_cnn import SmallCNN
from attrflow.models.training import evaluate_accuracy, train_classifier
from attrflow.models.wrapper import WrappedModel
from attrflow.models.xdnn import check_x_dnn, homogeneity_residual, to_x_dnn

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _randomise_affine_terms(net: nn.Module) -> None:
    """Give every bias and BatchNorm statistic a nonzero value, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def _halves_dataset(n: int, size: int, seed: int) -> SampleSet:
    """Two classes a small CNN learns in seconds: which half (left/right) holds a bright square."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    labels = np.arange(n) % 2
    for i, label in enumerate(labels):
        top = rng.integers(0, size - size // 4)
        left = rng.integers(0, size // 2 - size // 4) + label * (size // 2)
        images[i, :, top : top + size // 4, left : left + size // 4] = rng.uniform(0.7, 1.0, size=(3, 1, 1))
    return SampleSet(images, labels, [f"s{i}" for i in range(n)])


@pytest.fixture(scope="module")
def halves_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "samples.zarr"
    write_sample_store(
        path,
        _halves_dataset(64, 32, seed=1),
        _halves_dataset(256, 32, seed=0),
        {"dataset": "halves", "num_classes": 2, "fingerprint": "halves-v1"},
    )
    return path


# --------------------------------------------------------------------------------------------
# SmallCNN


@pytest.mark.parametrize("x_dnn", [False, True])
@pytest.mark.parametrize("size,cam_side", [(64, 8), (32, 4)])
def test_small_cnn_shapes_and_cam_layer(x_dnn, size, cam_side):
    net = SmallCNN(8, width=8, x_dnn=x_dnn).eval()
    seen = {}
    net.get_submodule(SmallCNN.default_cam_layer).register_forward_hook(lambda m, i, o: seen.update(out=o))
    logits = net(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 8)
    assert seen["out"].shape == (2, 32, cam_side, cam_side)


def test_first_layer_filters_start_blind_to_flat_colour():
    net = SmallCNN(4, width=8, x_dnn=True)
    first = net.features[0][0].weight
    torch.testing.assert_close(first.sum(dim=(2, 3)), torch.zeros(8, 3), atol=1e-6, rtol=0)
    assert first.std() > 0.1  # rescaled to the He scale, not shrunk


def test_x_variant_has_no_bias_and_no_batchnorm():
    x_net = SmallCNN(8, width=8, x_dnn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in x_net.modules())
    assert all("bias" not in name for name, _ in x_net.named_parameters())
    regular = SmallCNN(8, width=8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in regular.modules()) == 4


def test_x_variant_is_exactly_homogeneous_and_regular_is_not():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    x_net = SmallCNN(5, width=8, x_dnn=True).eval()
    for alpha in (0.0, 0.3, 1.0, 2.5):
        torch.testing.assert_close(x_net(alpha * x), alpha * x_net(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(x_net(torch.zeros(1, 3, 32, 32)), torch.zeros(1, 5))
    assert homogeneity_residual(x_net, x, 3.0) < 1e-5

    regular = SmallCNN(5, width=8).eval()
    _randomise_affine_terms(regular)
    assert homogeneity_residual(regular, x, 3.0) > 0.05
    assert regular(torch.zeros(1, 3, 32, 32)).abs().max() > 1e-3


def test_homogeneity_residual_uses_the_wrapper_origin():
    """A raw-pixel X-net standardised by a grey mean is homogeneous about that grey, not black."""
    torch.manual_seed(0)
    net = SmallCNN(3, width=8, x_dnn=True)
    # A generic first layer: the default zero-sum init is blind to flat colour offsets.
    nn.init.normal_(net.features[0][0].weight, std=0.3)
    wrapped = WrappedModel(net, num_classes=3, mean=[0.5] * 3, std=[0.25] * 3, is_x_dnn=True).eval()
    x = torch.rand(3, 3, 32, 32)
    assert homogeneity_residual(wrapped, x, 2.0) < 1e-5
    not_declared = WrappedModel(net, num_classes=3, mean=[0.5] * 3, std=[0.25] * 3, is_x_dnn=False).eval()
    assert homogeneity_residual(not_declared, x, 2.0) > 0.05
    with pytest.raises(ValueError, match="nonnegative"):
        homogeneity_residual(wrapped, x, -1.0)


# --------------------------------------------------------------------------------------------
# X-DNN checks and conversion


def test_check_x_dnn_flags_bias_and_batchnorm_of_the_regular_net():
    offenders = check_x_dnn(SmallCNN(8, width=8))
    assert offenders == [
        "features.0.0", "features.0.1", "features.1.0", "features.1.1",
        "features.2.0", "features.2.1", "features.3.0", "features.3.1", "classifier",
    ]  # fmt: skip
    assert check_x_dnn(SmallCNN(8, width=8, x_dnn=True)) == []


def test_check_x_dnn_flags_a_timm_resnet_and_to_x_dnn_refuses_it():
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=8)
    offenders = check_x_dnn(net)
    assert {"bn1", "layer1.0.bn1", "fc"} <= set(offenders)
    with pytest.raises(ValueError) as err:
        to_x_dnn(net)
    message = str(err.value)
    assert "layer4.0.bn2: BatchNorm2d" in message and "bn1: BatchNorm2d" in message
    assert "fc" not in message.split("because", 1)[1].replace("BatchNorm2d", "")  # biases are removable
    assert net.fc.bias is not None  # the input is never modified


@pytest.mark.parametrize(
    "layer,offender",
    [
        (nn.GELU(), "1"),
        (nn.SiLU(), "1"),
        (nn.Sigmoid(), "1"),
        (nn.Tanh(), "1"),
        (nn.Softmax(dim=1), "1"),
        (nn.ReLU6(), "1"),
        (nn.LayerNorm(4), "1"),
        (nn.GroupNorm(2, 4), "1"),
        (nn.Embedding(3, 4), "1"),  # an unknown leaf cannot be verified, so it is reported
    ],
)
def test_check_x_dnn_flags_non_homogeneous_layers(layer, offender):
    net = nn.Sequential(nn.Linear(4, 4, bias=False), layer)
    assert check_x_dnn(net) == [offender]
    with pytest.raises(ValueError, match=f"{offender}: {type(layer).__name__}"):
        to_x_dnn(net)


def test_check_x_dnn_flags_attention_and_custom_bias_parameters():
    class ScalarBias(nn.Module):  # Fixup-style scalar bias added in forward()
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, bias=False)
            self.bias1a = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.conv(x + self.bias1a)

    net = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2, bias=False), "block": ScalarBias()})
    assert check_x_dnn(net) == ["attn", "block"]
    with pytest.raises(ValueError, match=r"block: ScalarBias adds its own bias parameter\(s\) \['bias1a'\]"):
        to_x_dnn(net)


def test_check_x_dnn_accepts_homogeneous_building_blocks():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.LeakyReLU(0.1), nn.PReLU(), nn.MaxPool2d(2), nn.AvgPool2d(1),
        nn.Dropout(0.2), nn.AdaptiveMaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Identity(),
        nn.Linear(4, 2, bias=False),
    )  # fmt: skip
    assert check_x_dnn(net) == []


def test_to_x_dnn_removes_every_bias_of_an_mlp_and_makes_it_homogeneous():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 3))
    assert check_x_dnn(mlp) == ["0", "2", "4"]
    x_mlp = to_x_dnn(mlp)
    assert check_x_dnn(x_mlp) == []
    assert all(m.bias is not None for m in mlp if isinstance(m, nn.Linear))  # original untouched
    x = torch.randn(5, 6)
    assert homogeneity_residual(x_mlp, x, 4.0) < 1e-6
    assert homogeneity_residual(mlp, x, 4.0) > 0.01
    # Removing a bias is the same as setting it to zero: the weights are kept.
    zeroed = nn.Sequential(*[m for m in mlp])
    with torch.no_grad():
        for m in zeroed:
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    torch.testing.assert_close(x_mlp(x), zeroed(x))


# --------------------------------------------------------------------------------------------
# Training


def test_quick_training_learns_a_toy_problem_deterministically():
    train, test = _halves_dataset(256, 32, seed=0), _halves_dataset(64, 32, seed=1)

    def run() -> tuple[dict, WrappedModel]:
        torch.manual_seed(0)
        model = WrappedModel(SmallCNN(2, width=8, x_dnn=True), num_classes=2, is_x_dnn=True)
        log = io.StringIO()
        metrics = train_classifier(
            model, train, test, epochs=4, batch_size=32, lr=3e-3, seed=0, threads=2, log=log
        )
        assert "epoch 4/4" in log.getvalue() and "test accuracy" in log.getvalue()
        return metrics, model

    metrics, model = run()
    assert metrics["test_accuracy"] >= 0.9, metrics
    assert metrics["epochs"] == 4 and metrics["steps"] == 32 and len(metrics["history"]) == 4
    assert evaluate_accuracy(model, test) == metrics["test_accuracy"]
    assert not model.training
    again, model_again = run()
    for a, b in zip(model.state_dict().values(), model_again.state_dict().values()):
        assert torch.equal(a, b)
    assert again["test_accuracy"] == metrics["test_accuracy"]


def test_training_rejects_bad_settings():
    data = _halves_dataset(8, 16, seed=0)
    model = WrappedModel(SmallCNN(2, width=4), num_classes=2)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(
            model, data, data, epochs=0, batch_size=4, lr=1e-3, seed=0, threads=1, log=io.StringIO()
        )
    with pytest.raises(ValueError, match="lr"):
        train_classifier(
            model, data, data, epochs=1, batch_size=4, lr=-1.0, seed=0, threads=1, log=io.StringIO()
        )
    one_output = WrappedModel(SmallCNN(1, width=4), num_classes=1)
    with pytest.raises(ValueError, match="labels go up to 1 but the network has only 1 outputs"):
        train_classifier(
            one_output, data, data, epochs=1, batch_size=4, lr=1e-3, seed=0, threads=1, log=io.StringIO()
        )


# --------------------------------------------------------------------------------------------
# prepare_model (trained), save_model and load_model


@pytest.fixture(scope="module")
def trained_x_model(halves_store, tmp_path_factory):
    spec = {"kind": "trained", "arch": "small_cnn", "dataset": "halves", "epochs": 4, "batch_size": 32,
            "lr": 3e-3, "width": 8, "x_dnn": True}  # fmt: skip
    model, card = prepare_model(
        "toy_x", spec, dataset_store=halves_store, seed=0, threads=2, log=io.StringIO()
    )
    out = tmp_path_factory.mktemp("models") / "toy_x"
    save_model(model, card, out)
    return model, card, out


def test_prepare_trained_model_card(trained_x_model):
    model, card, out = trained_x_model
    assert model.is_x_dnn and model.cam_layer == "features.3" and model.num_classes == 2
    assert model.homogeneity_origin is not None and float(model.homogeneity_origin.abs().max()) == 0.0
    saved = json.loads((out / "card.json").read_text())
    assert saved["test_accuracy"] >= 0.9
    assert saved["is_x_dnn"] is True and saved["mean"] == [0.0] * 3 and saved["std"] == [1.0] * 3
    assert saved["homogeneity_residual"] < 1e-5
    assert saved["dataset_fingerprint"] == "halves-v1"
    assert saved["parameter_count"] == sum(p.numel() for p in model.net.parameters())
    assert saved["architecture"] == {
        "library": "attrflow", "name": "small_cnn", "x_dnn": True,
        "kwargs": {"num_classes": 2, "in_channels": 3, "width": 8, "x_dnn": True},
    }  # fmt: skip
    assert saved["training"]["epochs"] == 4 and saved["versions"]["torch"] == torch.__version__
    assert len(saved["fingerprint"]) == 64
    assert sorted(p.name for p in out.iterdir()) == [
        "card.json",
        "model.safetensors",
    ]  # no temporary leftovers


def test_regular_trained_model_is_standardised_with_training_statistics(halves_store):
    spec = {"kind": "trained", "dataset": "halves", "epochs": 1, "width": 4}
    model, card = prepare_model("toy", spec, dataset_store=halves_store, seed=0, threads=2, log=io.StringIO())
    from attrflow.data.sample_store import read_samples

    train = read_samples(halves_store, "train")
    np.testing.assert_allclose(card["mean"], train.images.mean(axis=(0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(card["std"], train.images.std(axis=(0, 2, 3)), atol=1e-5)
    assert not model.is_x_dnn and model.homogeneity_origin is None and card["homogeneity_residual"] is None


def test_save_load_roundtrip_gives_identical_logits(trained_x_model):
    model, card, out = trained_x_model
    loaded = load_model(out, "cpu")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert (loaded.num_classes, loaded.cam_layer, loaded.is_x_dnn, loaded.name) == (
        2,
        "features.3",
        True,
        "toy_x",
    )
    torch.testing.assert_close(loaded.mean, model.mean)


def test_wrapped_convolutions_run_channels_last_with_the_same_function():
    torch.manual_seed(0)
    net = SmallCNN(3, in_channels=3, width=4)
    plain = SmallCNN(3, in_channels=3, width=4)
    plain.load_state_dict(net.state_dict())
    model = WrappedModel(net, num_classes=3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]).eval()
    assert model.channels_last
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last) for m in net.modules() if isinstance(m, nn.Conv2d)
    )
    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    logits = model(x)
    expected = plain.eval()((x.detach() - model.mean) / model.std)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.shape == x.shape and grad.is_contiguous()  # the input's own layout
    assert (model.forward_samples, model.backward_samples) == (5, 5)
    # only the layout changed: every weight holds the same values (saving and loading a wrapped
    # channels-last model: test_save_load_roundtrip_gives_identical_logits)
    plain_state = plain.state_dict()
    assert all(torch.equal(value, plain_state[key]) for key, value in net.state_dict().items())


def test_a_network_without_convolutions_is_left_as_it_is():
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))  # lazy parameters must stay untouched
    model = WrappedModel(net, num_classes=2)
    assert not model.channels_last
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 2)


def test_a_flipped_byte_in_the_weights_is_detected(trained_x_model, tmp_path):
    _, _, out = trained_x_model
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("card.json", "model.safetensors"):
        (damaged / name).write_bytes((out / name).read_bytes())
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[len(data) - 10] ^= 0x01  # inside the last tensor's data: the file still parses
    (damaged / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"damaged/model\.safetensors is corrupted or was replaced"):
        load_model(damaged)
    (damaged / "card.json").unlink()
    with pytest.raises(ModelLoadError, match=r"card\.json does not exist"):
        load_model(damaged)


def test_prepare_model_rejects_bad_specs(halves_store):
    kwargs = {"dataset_store": halves_store, "seed": 0, "threads": 1, "log": io.StringIO()}
    with pytest.raises(ValueError, match=r"model 'm': unknown key\(s\) \['epoch'\]"):
        prepare_model("m", {"kind": "trained", "dataset": "halves", "epoch": 3}, **kwargs)
    with pytest.raises(ValueError, match="unknown kind 'keras'"):
        prepare_model("m", {"kind": "keras"}, **kwargs)
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        prepare_model("m", {"kind": "trained", "dataset": "halves", "arch": "vgg"}, **kwargs)
    with pytest.raises(ValueError, match="cam_layer 'features.9' is not a module"):
        prepare_model("m", {"kind": "timm", "name": "resnet10t", "pretrained": False, "num_classes": 2,
                            "cam_layer": "features.9"}, **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match="needs a dataset"):
        prepare_model("m", {"kind": "trained"}, dataset_store=None, seed=0, threads=1, log=io.StringIO())


# --------------------------------------------------------------------------------------------
# timm and torchvision checkpoints


@pytest.fixture(scope="module")
def resnet10t_reference():
    import timm

    torch.manual_seed(3)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=8).eval()
    _randomise_affine_terms(net)
    return net


def _reference_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-nested"])
def test_timm_checkpoint_loading(resnet10t_reference, tmp_path, fmt):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in resnet10t_reference.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    elif fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "epoch": 7}, path)
    spec = {"kind": "timm", "name": "resnet10t", "checkpoint": str(path)}  # num_classes read from the file
    model, card = prepare_model("r10", spec, dataset_store=None, seed=0, threads=2, log=io.StringIO())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), _reference_logits(resnet10t_reference, x))
    assert card["num_classes"] == 8 and model.cam_layer == "layer4" and not model.is_x_dnn
    assert card["test_accuracy"] is None and card["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert str(path) in card["weights_source"]

    save_model(model, card, tmp_path / "saved")
    torch.testing.assert_close(load_model(tmp_path / "saved")(x), model(x), rtol=0, atol=0)


def test_timm_checkpoint_that_does_not_fit_names_the_file_and_keys(resnet10t_reference, tmp_path):
    state = dict(resnet10t_reference.state_dict())
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    spec = {"kind": "timm", "name": "resnet10t", "checkpoint": str(path), "num_classes": 10}
    with pytest.raises(ModelLoadError) as err:
        prepare_model("r10", spec, dataset_store=None, seed=0, threads=1, log=io.StringIO())
    message = str(err.value)
    assert str(path) in message
    assert "missing keys [layer2.0.conv1.weight]" in message
    assert "unexpected keys [extra.weight]" in message
    assert "fc.weight (file (8, 512), model (10, 512))" in message


def test_unreadable_or_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere.safetensors does not exist"):
        read_state_dict(tmp_path / "nowhere.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="garbage.safetensors is not a readable safetensors file"):
        read_state_dict(garbage)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ModelLoadError, match="truncated.pt is unreadable"):
        read_state_dict(truncated)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ModelLoadError, match="holds a list, not a state dict"):
        read_state_dict(not_a_state_dict)


class _Payload:
    """Pickles to a call of os.system: loading it unsafely would create the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_a_checkpoint_with_pickled_code_is_refused_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "trap": _Payload(sentinel)}, path)
    with pytest.raises(ModelLoadError, match=r"refusing checkpoint .*evil\.pt") as refused:
        read_state_dict(path)
    # the culprit is named in plain text: no terminal colour codes, no cut-off library sentence
    message = str(refused.value)
    assert "\x1b" not in message and "GLOBAL posix.system" in message.replace("GLOBAL nt.", "GLOBAL posix.")
    assert "weights_only` set to `False`" not in message
    spec = {"kind": "timm", "name": "resnet10t", "checkpoint": str(path)}
    with pytest.raises(ModelLoadError, match="refusing checkpoint"):
        prepare_model("evil", spec, dataset_store=None, seed=0, threads=1, log=io.StringIO())
    assert not sentinel.exists()
    # Control: the payload is real — an unsafe load does run it.
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_missing_pretrained_weights_name_the_model(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    previous_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    try:
        started = time.perf_counter()
        with pytest.raises(ModelLoadError, match=r"model 'big'.*timm model 'resnet10t'.*checkpoint:"):
            prepare_model("big", {"kind": "timm", "name": "resnet10t"}, dataset_store=None, seed=0, threads=1)
        assert time.perf_counter() - started < 10  # fails at once instead of retrying downloads
        with pytest.raises(ModelLoadError, match=r"model 'tv'.*resnet18\.IMAGENET1K_V1.*checkpoint:"):
            prepare_model("tv", {"kind": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"},
                          dataset_store=None, seed=0, threads=1)  # fmt: skip
    finally:
        torch.hub.set_dir(previous_hub)


def test_cached_pretrained_timm_weights_are_used_offline(tmp_path, monkeypatch):
    """A file in the Hugging Face cache layout is found and loaded without any download."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    torch.manual_seed(4)
    reference = timm.create_model("resnet10t", pretrained=False).eval()  # 1000 classes, as published
    _randomise_affine_terms(reference)

    cache = tmp_path / "hf"
    repo = cache / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(dict(reference.state_dict()), repo / "snapshots" / "abc123" / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model, card = prepare_model("cached", {"kind": "timm", "name": "resnet10t"}, dataset_store=None, seed=0,
                                threads=2, log=io.StringIO())  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), _reference_logits(reference, x))
    assert card["num_classes"] == 1000
    assert "snapshots/abc123/model.safetensors" in card["weights_source"]


def test_torchvision_x_variant_from_a_bias_free_checkpoint(tmp_path, halves_store):
    import torchvision

    torch.manual_seed(0)
    net = to_x_dnn(torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=2))
    path = tmp_path / "xsqueeze.safetensors"
    from safetensors.torch import save_file

    save_file(dict(net.state_dict()), path)
    spec = {"kind": "torchvision", "name": "squeezenet1_1", "checkpoint": str(path), "x_dnn": True,
            "dataset": "halves", "mean": [0.5, 0.5, 0.5]}  # fmt: skip
    model, card = prepare_model(
        "xsqueeze", spec, dataset_store=halves_store, seed=0, threads=2, log=io.StringIO()
    )
    assert model.is_x_dnn and card["architecture"]["x_dnn"] is True and card["num_classes"] == 2
    assert model.cam_layer == "classifier.1"  # the last convolution
    assert card["mean"] == [0.5, 0.5, 0.5] and torch.equal(
        model.homogeneity_origin.flatten(), torch.full((3,), 0.5)
    )
    assert card["test_accuracy"] is not None and card["homogeneity_residual"] < 1e-4
    save_model(model, card, tmp_path / "saved")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(load_model(tmp_path / "saved")(x), model.eval()(x))


@pytest.mark.parametrize("x_dnn", [False, True])
def test_cached_torchvision_weights_are_used_offline(tmp_path, x_dnn):
    """Weights in the torch hub cache load as published; an X-variant then drops their biases."""
    import torchvision

    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    torch.manual_seed(5)
    reference = torchvision.models.squeezenet1_1(weights=None).eval()
    _randomise_affine_terms(reference)
    previous_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / Path(weights.url).name)
        spec = {"kind": "torchvision", "name": "squeezenet1_1", "weights": "IMAGENET1K_V1", "x_dnn": x_dnn}
        model, card = prepare_model("sq", spec, dataset_store=None, seed=0, threads=2, log=io.StringIO())
    finally:
        torch.hub.set_dir(previous_hub)
    assert card["num_classes"] == 1000 and card["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(2, 3, 64, 64)
    expected = to_x_dnn(reference) if x_dnn else reference
    mean, std = torch.tensor(card["mean"]).view(1, 3, 1, 1), torch.tensor(card["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected((x - mean) / std))
    assert model.is_x_dnn == x_dnn
    assert (card["homogeneity_residual"] < 1e-4) if x_dnn else card["homogeneity_residual"] is None


# --------------------------------------------------------------------------------------------
# The embedded dataset: the accuracy the workflow's default models must reach


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["shapes_cnn", "shapes_xcnn"])
def test_embedded_default_models_reach_90_percent(model_name, tmp_path, capsys):
    """The models of config.yaml, trained as `make run` trains them (2 threads), reach >= 90 %."""
    import yaml

    from attrflow.config import validate_config
    from attrflow.data.adapters import prepare_dataset
    from attrflow.data.sample_store import write_sample_store

    repo = Path(__file__).resolve().parents[2]
    config = validate_config(yaml.safe_load((repo / "config.yaml").read_text()), workdir=repo)
    spec = config["models"][model_name]
    dataset_spec = {**config["datasets"][spec["dataset"]], "seed": config["seed"]}
    evaluation, train, attrs = prepare_dataset(spec["dataset"], dataset_spec, config["seed"])
    store = write_sample_store(tmp_path / "samples.zarr", evaluation, train, attrs)
    _, card = prepare_model(model_name, spec, dataset_store=store, seed=config["seed"], threads=2, log=io.StringIO())
    with capsys.disabled():
        print(f"\n{model_name}: test accuracy {card['test_accuracy']:.3f} in {card['training']['seconds']:.0f} s")
    assert card["test_accuracy"] >= 0.9
