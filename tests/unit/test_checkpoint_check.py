"""Checking a checkpoint against its model entry's architecture before any job runs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attrflow.models.checkpoint_check import (
    CheckpointError,
    check_model_checkpoint,
    check_model_checkpoint_cached,
    checkpoint_header,
    compare_state_dict,
    expected_shapes,
)
from attrflow.models.checkpoints import ModelLoadError
from attrflow.models.preparation import prepare_model

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

CLASSES = 3


@pytest.fixture(scope="module")
def resnet18_state():
    """A real timm ResNet-18 with 3 classes (random weights, no download)."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=CLASSES)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def files(resnet18_state, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    out = {
        "safetensors": root / "r18.safetensors",
        "pt": root / "r18.pt",
        "prefixed": root / "r18_prefixed.safetensors",
    }
    save_file(resnet18_state, out["safetensors"])
    torch.save(resnet18_state, out["pt"])
    save_file({f"model.{k}": v for k, v in resnet18_state.items()}, out["prefixed"])
    for path in out.values():  # dated long ago, so content digests are trusted at once (no racy window)
        os.utime(path, ns=(1_600_000_000 * 10**9,) * 2)
    return out


def timm_spec(path: Path, **extra) -> dict:
    return {"kind": "timm", "name": "resnet18", "checkpoint": str(path), **extra}


def loader_accepts(spec: dict) -> bool:
    """What the real `prepare_model` job does with the entry: the reference the check mirrors."""
    try:
        prepare_model("m", spec, dataset_store=None)
    except ModelLoadError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Headers


def test_safetensors_header_is_read_without_torch(files):
    """Planning parses the workflow without torch: the header is read by hand."""
    code = (
        "import sys, attrflow.models.checkpoint_check as c\n"
        f"h = c.checkpoint_header({str(files['safetensors'])!r})\n"
        "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules, sorted(sys.modules)\n"
        "print(h['fc.weight'], h['bn1.num_batches_tracked'], len(h))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split("\n")[0] == f"(({CLASSES}, 512), 'float32') ((), 'int64') 122"


def test_headers_of_both_formats_agree_with_the_tensors(files, resnet18_state):
    truth = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in resnet18_state.items()}
    for path in (files["safetensors"], files["pt"]):
        header = checkpoint_header(path)
        assert dict(header) == truth
        assert header.wrapper is None and header.stripped_prefix is None


def test_legacy_torch_format_is_read_too(tmp_path, resnet18_state):
    path = tmp_path / "legacy.pth"
    small = {k: resnet18_state[k] for k in ("fc.weight", "fc.bias")}
    torch.save(small, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    expected = {"fc.weight": ((CLASSES, 512), "float32"), "fc.bias": ((CLASSES,), "float32")}
    assert dict(checkpoint_header(path)) == expected


def test_truncated_safetensors_is_reported(tmp_path, files):
    data = files["safetensors"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is not a readable safetensors file.*truncated"):
        checkpoint_header(path)


def test_text_file_named_safetensors_is_reported(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint_header(path)


class WritesAFile:
    """Unpickling this would create `marker`: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": WritesAFile(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*evil\.pt"):
        checkpoint_header(path)
    assert not marker.exists()
    message = check_model_checkpoint("r18", timm_spec(path))
    assert message.startswith("model 'r18': refusing checkpoint") and not marker.exists()
    # The payload is real: plain unpickling does run it, which is what the check must avoid.
    pickle.loads(pickle.dumps(WritesAFile(str(marker))))
    assert marker.exists()


def test_nested_wrappers_the_loader_unwraps_are_accepted(tmp_path, resnet18_state):
    for key in ("state_dict", "model", "model_state_dict"):
        path = tmp_path / f"{key}.pt"
        torch.save({key: resnet18_state, "epoch": 7}, path)
        header = checkpoint_header(path)
        assert header.wrapper == key and len(header) == len(resnet18_state)
        assert check_model_checkpoint("r18", timm_spec(path)) is None


def test_a_wrapper_the_loader_does_not_unwrap_is_named(tmp_path, resnet18_state):
    path = tmp_path / "ema.pt"
    torch.save({"ema": resnet18_state, "epoch": 7}, path)
    message = check_model_checkpoint("r18", timm_spec(path))
    assert "the tensors are nested under 'ema', which attrflow does not unwrap" in message
    assert "save_file(ckpt['ema']" in message
    assert not loader_accepts(timm_spec(path))


def test_data_parallel_prefix_is_stripped_like_the_loader(tmp_path, resnet18_state):
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in resnet18_state.items()}, path)
    assert checkpoint_header(path).stripped_prefix == "module."
    assert check_model_checkpoint("r18", timm_spec(path)) is None
    assert loader_accepts(timm_spec(path))


# --------------------------------------------------------------------------------------------
# Comparison against the architecture


def test_expected_shapes_are_those_the_loader_builds(files, resnet18_state):
    header = checkpoint_header(files["safetensors"])
    # num_classes comes from the checkpoint's classifier when the entry does not give it
    assert expected_shapes(timm_spec(files["safetensors"]), header) == {
        k: tuple(v.shape) for k, v in resnet18_state.items()
    }
    assert expected_shapes({"kind": "timm", "name": "resnet18", "num_classes": 7})["fc.weight"] == (7, 512)
    tv = torchvision.models.resnet18(num_classes=5).state_dict()
    assert expected_shapes({"kind": "torchvision", "name": "resnet18", "num_classes": 5}) == {
        k: tuple(v.shape) for k, v in tv.items()
    }
    # An X-DNN drops every bias (VGG: no BatchNorm, so it has one); built on meta, VGG-11's 133M
    # parameters cost nothing.
    x_dnn = expected_shapes({"kind": "torchvision", "name": "vgg11", "num_classes": 5, "x_dnn": True})
    assert x_dnn["classifier.6.weight"] == (5, 4096)
    assert not [k for k in x_dnn if k.endswith(".bias")]


def test_matching_checkpoints_pass_in_both_formats(files):
    for key in ("safetensors", "pt"):
        spec = timm_spec(files[key])
        assert check_model_checkpoint("r18", spec) is None
        assert check_model_checkpoint("r18", {**spec, "num_classes": CLASSES}) is None
        assert loader_accepts(spec)


def test_prefixed_keys_name_the_prefix_and_the_fix(files, resnet18_state):
    spec = timm_spec(files["prefixed"])
    message = check_model_checkpoint("r18", spec)
    lines = message.splitlines()
    assert lines[0] == (
        f"model 'r18': checkpoint {files['prefixed']} does not fit the timm resnet18 architecture "
        f"({len(resnet18_state)} tensors in the file, {len(resnet18_state)} expected):"
    )
    assert lines[1] == (
        f"  - all {len(resnet18_state)} keys start with 'model.': strip it, e.g. "
        "`sd = {k.removeprefix('model.'): v for k, v in sd.items()}` and save with "
        "`safetensors.torch.save_file(sd, 'model.safetensors')`"
    )
    assert len(lines) == 2  # nothing else is wrong once the prefix is gone (3 classes read through it)
    assert not loader_accepts(spec)


def test_wrong_num_classes_names_the_shape_mismatches(files):
    spec = timm_spec(files["safetensors"], num_classes=10)
    message = check_model_checkpoint("r18", spec)
    assert "(num_classes=10)" in message.splitlines()[0]
    assert message.splitlines()[1] == (
        f"  - 2 shape mismatch(es): fc.weight (checkpoint ({CLASSES}, 512), model (10, 512)), "
        f"fc.bias (checkpoint ({CLASSES},), model (10,))"
    )
    assert not loader_accepts(spec)


def test_missing_and_unexpected_keys_are_listed(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer1.0.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "holes.safetensors"
    save_file(state, path)
    message = check_model_checkpoint("r18", timm_spec(path))
    assert "  - 1 missing key(s): 'layer1.0.bn1.running_mean'" in message.splitlines()
    assert "  - 1 unexpected key(s): 'extra.weight'" in message.splitlines()
    assert not loader_accepts(timm_spec(path))


def test_long_lists_are_cut_with_a_count():
    expected = {f"w{i}": (1,) for i in range(12)}
    problems = compare_state_dict({}, expected, limit=3)
    assert problems == ["12 missing key(s): 'w0', 'w1', 'w2', … (9 more)"]


def test_prefix_that_does_not_fix_the_names_is_said_so():
    header = {"net.a.weight": ((1,), "float32"), "net.b.weight": ((1,), "float32")}
    problems = compare_state_dict(header, {"a.weight": (1,), "c.weight": (1,)})
    assert problems[-1] == "all checkpoint keys start with 'net.', but removing it does not make them match"
    same_prefix = compare_state_dict({"net.a.weight": (1,)}, {"net.b.weight": (1,)})
    assert same_prefix == ["1 missing key(s): 'net.b.weight'", "1 unexpected key(s): 'net.a.weight'"]


def test_nested_prefix_is_found():
    header = {"model.backbone.a.weight": (2,), "model.backbone.b.bias": ((3,), "float32")}  # both forms
    problems = compare_state_dict(header, {"a.weight": (2,), "b.bias": (4,)})
    assert problems[0].startswith("all 2 keys start with 'model.backbone.': strip it")
    assert problems[1] == "1 shape mismatch(es): b.bias (checkpoint (3,), model (4,))"


def test_entries_without_a_checkpoint_pass_and_bad_entries_are_named(tmp_path, files):
    assert check_model_checkpoint("cnn", {"kind": "trained"}) is None
    assert check_model_checkpoint("r18", {"kind": "timm", "name": "resnet18", "pretrained": True}) is None
    assert check_model_checkpoint("r18", timm_spec(tmp_path / "absent.pt")) == (
        f"model 'r18': checkpoint {tmp_path / 'absent.pt'} does not exist"
    )
    assert "timm has no model 'resnet1800'" in check_model_checkpoint(
        "r18", {**timm_spec(files["safetensors"]), "name": "resnet1800"}
    )
    both = check_model_checkpoint("r18", timm_spec(files["safetensors"], pretrained=True))
    assert both == "model 'r18': give either checkpoint or pretrained: true, not both"
    relative = check_model_checkpoint(
        "r18", timm_spec(Path(files["safetensors"].name)), base_dir=files["safetensors"].parent
    )
    assert relative is None


def test_torchvision_checkpoint_is_checked(tmp_path):
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    path = tmp_path / "tv.pt"
    torch.save(state, path)
    spec = {"kind": "torchvision", "name": "resnet18", "checkpoint": str(path)}
    assert check_model_checkpoint("tv", spec) is None
    wrong = check_model_checkpoint("tv", {**spec, "num_classes": 1000})
    assert "fc.weight (checkpoint (4, 512), model (1000, 512))" in wrong


def test_header_json_is_what_the_file_says(tmp_path):
    """The hand-parsed header against the file format: 8-byte little-endian length + JSON."""
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros((), dtype=torch.bool)}, path)
    raw = path.read_bytes()
    table = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert table["a"]["dtype"] == "F16" and table["a"]["shape"] == [2, 3]
    assert dict(checkpoint_header(path)) == {"a": ((2, 3), "float16"), "b": ((), "bool")}


def test_cached_verdicts_are_reused_without_importing_torch(tmp_path, files):
    from attrflow.content import FileIndex

    cache = tmp_path / "cache" / "content.sqlite"
    good, bad = timm_spec(files["safetensors"]), timm_spec(files["prefixed"])
    with FileIndex(cache) as index:
        assert check_model_checkpoint_cached("r18", good, index=index) is None
        message = check_model_checkpoint_cached("r18", bad, index=index)
        assert message == check_model_checkpoint("r18", bad)
    # A later parse: both verdicts come from the cache, and torch is never imported.
    code = (
        "import sys\n"
        "from attrflow.content import FileIndex\n"
        "from attrflow.models.checkpoint_check import check_model_checkpoint_cached as check\n"
        f"index = FileIndex({str(cache)!r})\n"
        f"assert check('r18', {good!r}, index=index) is None\n"
        f"print(check('r18', {bad!r}, index=index))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert index.hashed == 0, index.hashed\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == message
    # Another entry for the same file is another verdict.
    with FileIndex(cache) as index:
        wrong = check_model_checkpoint_cached("r18", {**good, "num_classes": 10}, index=index)
        assert "fc.weight (checkpoint (3, 512), model (10, 512))" in wrong


def test_bias_free_x_variant_with_a_convolution_head(tmp_path):
    """SqueezeNet's classifier is a 1×1 convolution: the class count is read from it, as the
    loader does, and an X-variant's checkpoint has no biases to expect."""
    from attrflow.models.xdnn import to_x_dnn

    net = to_x_dnn(torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=2))
    path = tmp_path / "xsqueeze.safetensors"
    save_file(dict(net.state_dict()), path)
    spec = {"kind": "torchvision", "name": "squeezenet1_1", "checkpoint": str(path), "x_dnn": True}
    assert check_model_checkpoint("xs", spec) is None
    with_biases = check_model_checkpoint("xs", {**spec, "x_dnn": False})
    assert "26 missing key(s): 'features.0.bias'" in with_biases
