"""ROAR / DiffROAR: masked datasets, deterministic retraining, divergence, report rows, config."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from attrflow.config import ConfigError, load_schema, validate_config
from attrflow.data.sample_store import SampleSet, write_sample_store
from attrflow.models.architectures import TRAINED_ARCHS, build_architecture, default_cam_layer
from attrflow.models.layers import resolve_layer
from attrflow.models.preact_resnet import PreActResNet18
from attrflow.plan import Plan, fraction_label
from attrflow.roar.masking import channel_means, removal_masks, remove_pixels, removed_count
from attrflow.roar.report import NO_REMOVAL, roar_rows, write_roar_report
from attrflow.roar.retrain import Recipe, RetrainDiverged, retrain
from attrflow.store import write_store

REPO = Path(__file__).resolve().parents[2]
TINY_ROAR = yaml.safe_load((REPO / "config" / "roar_tiny.yaml").read_text())


# ------------------------------------------------------------------------------------ masking
def test_removed_count_rounds_half_up():
    assert removed_count(0.125, 4) == 1  # 0.5 → 1 (round() would give 0)
    assert removed_count(0.1, 1024) == 102  # 102.4
    assert removed_count(0.9, 1024) == 922  # 921.6


def test_most_and_least_remove_the_hand_ranked_pixels():
    scores = np.array([[[9.0, 1.0], [5.0, -3.0]]])  # ranks: 9 > 5 > 1 > -3
    assert removal_masks(scores, 0.5, "most").tolist() == [[[True, False], [True, False]]]
    assert removal_masks(scores, 0.5, "least").tolist() == [[[False, True], [False, True]]]
    # magnitude ranking puts -7 above 5
    scores[0, 1, 1] = -7.0
    assert removal_masks(scores, 0.5, "most", order="absolute").tolist() == [[[True, False], [False, True]]]
    assert removal_masks(scores, 0.5, "most").tolist() == [[[True, False], [True, False]]]


def test_ties_are_broken_in_row_major_order_for_both_arms():
    flat = np.zeros((1, 3, 3))
    for arm in ("most", "least"):
        mask = removal_masks(flat, 0.4, arm)  # round(3.6) = 4 pixels
        assert mask.reshape(-1).tolist() == [True] * 4 + [False] * 5


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95])
def test_each_image_loses_exactly_the_requested_fraction(fraction):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(7, 3, 12, 10))  # with channels: summed per pixel
    maps[2] = 0.0  # a constant map still loses exactly k pixels
    k = removed_count(fraction, 120)
    most, least = removal_masks(maps, fraction, "most"), removal_masks(maps, fraction, "least")
    assert (most.reshape(7, -1).sum(1) == k).all() and (least.reshape(7, -1).sum(1) == k).all()
    summed = maps.sum(1).reshape(7, -1)
    for i in (0, 1, 3):  # distinct scores: every kept pixel ranks below every removed one
        kept, gone = summed[i][~most[i].reshape(-1)], summed[i][most[i].reshape(-1)]
        assert kept.max() < gone.min()
        kept, gone = summed[i][~least[i].reshape(-1)], summed[i][least[i].reshape(-1)]
        assert kept.min() > gone.max()
        if 2 * k <= 120:
            assert not (most[i] & least[i]).any()


def test_non_finite_maps_are_refused_naming_the_sample():
    maps = np.zeros((2, 4, 4))
    maps[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="img-b"):
        removal_masks(maps, 0.5, "most", ids=["img-a", "img-b"])


def test_removed_pixels_take_the_train_channel_mean_and_the_rest_is_untouched():
    rng = np.random.default_rng(2)
    images = rng.random((3, 3, 4, 4), dtype=np.float32)
    samples = SampleSet(images, [0, 1, 0], ["a", "b", "c"])
    fill = channel_means(images)
    np.testing.assert_allclose(fill, images.mean(axis=(0, 2, 3)), rtol=1e-6)
    masks = removal_masks(rng.normal(size=(3, 4, 4)), 0.25, "most")
    out = remove_pixels(samples, masks, fill).images
    for c in range(3):
        assert np.all(out[:, c][masks] == fill[c])
        assert np.array_equal(out[:, c][~masks], images[:, c][~masks])
    assert np.array_equal(samples.images, images)  # the input is not modified


# ------------------------------------------------------------------------------------ networks
def test_preact_resnet18_is_registered_and_shaped_like_he_et_al():
    assert "preact_resnet18" in TRAINED_ARCHS
    net = build_architecture({"library": "attrflow", "name": "preact_resnet18", "kwargs": {"num_classes": 10, "width": 4}})
    assert isinstance(net, PreActResNet18)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert default_cam_layer(net) == "layer4"
    assert resolve_layer(net, "stage2")[0] == "layer2"
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert net.layer1[0].shortcut is None and net.layer2[0].shortcut is not None  # identity unless reshaped
    assert net.layer4[1].conv2.out_channels == 32 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 17


def test_schema_arch_enums_list_exactly_the_trainable_architectures():
    schema = load_schema()
    assert tuple(schema["properties"]["roar"]["properties"]["arch"]["enum"]) == TRAINED_ARCHS
    trained = next(b["then"] for b in schema["$defs"]["model"]["allOf"] if b["if"]["properties"]["kind"]["const"] == "trained")
    assert tuple(trained["properties"]["arch"]["enum"]) == TRAINED_ARCHS


# ------------------------------------------------------------------------------------ retraining
def _toy_split(seed: int, n: int, prefix: str) -> SampleSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.random((n, 3, 16, 16), dtype=np.float32) * 0.5
    images[np.arange(n), labels] += 0.5  # the class is the brightest channel: learnable
    return SampleSet(images, labels, [f"{prefix}{i}" for i in range(n)])


def test_retraining_is_deterministic_for_a_fixed_seed_on_cpu():
    train, test = _toy_split(0, 48, "t"), _toy_split(1, 16, "e")
    recipe = Recipe(arch="small_cnn", width=4, epochs=2, lr=0.003, batch_size=16, optimiser="adamw", seed=3)
    runs = [retrain(train, test, recipe, num_classes=3, run_name="toy", threads=1, log=io.StringIO()) for _ in range(2)]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]
    other = retrain(train, test, Recipe(**{**recipe.__dict__, "seed": 4}), num_classes=3, run_name="toy", threads=1, log=io.StringIO())
    assert other["history"][0]["loss"] != runs[0]["history"][0]["loss"]  # the seed matters


def test_a_nan_loss_fails_the_retrain_naming_it():
    train, test = _toy_split(0, 32, "t"), _toy_split(1, 8, "e")
    recipe = Recipe(arch="small_cnn", width=4, epochs=1, lr=1e30, batch_size=16, optimiser="sgd", seed=0)
    with pytest.raises(RetrainDiverged, match=r"shapes/cnn/ig.*diverged.*loss nan.*no accuracy"):
        retrain(train, test, recipe, num_classes=3, run_name="shapes/cnn/ig", threads=1, log=io.StringIO())


def _toy_store(tmp_path: Path) -> tuple[Path, SampleSet, SampleSet]:
    train, test = _toy_split(0, 32, "t"), _toy_split(1, 12, "e")
    store = write_sample_store(tmp_path / "samples.zarr", test, train, {"num_classes": 3, "fingerprint": "ds"})
    return store, train, test


def _maps_store(path: Path, ids: list[str], maps: np.ndarray | None, reason: str | None = None) -> Path:
    arrays = {"ids": np.asarray(ids, dtype=str)}
    if maps is not None:
        arrays["maps"] = maps.astype(np.float32)
    return write_store(path, arrays, {"applicable": maps is not None, "reason": reason, "model_fingerprint": "mf"})


def _retrain_kwargs(store: Path, out: Path, **extra):
    return dict(
        samples_path=store, out_path=out, dataset="toy", model="cnn", method="ig", fraction=0.25, arm="most",
        repeat=0, recipe={"arch": "small_cnn", "width": 4, "epochs": 1, "lr": 0.003, "batch_size": 16,
                          "optimiser": "adamw", "seed": 0},
        order="signed", code="c0", device="cpu", threads=1, method_entry={"fn": "integrated_gradients"},
        method_code="m0", **extra,
    )


def test_retrain_job_writes_an_accuracy_or_a_skip_and_nothing_when_it_diverges(tmp_path):
    from attrflow.jobs.roar import retrain_job

    store, train, test = _toy_store(tmp_path)
    rng = np.random.default_rng(5)
    train_maps = _maps_store(tmp_path / "train.zarr", train.ids, rng.normal(size=(32, 16, 16)))
    shards = [_maps_store(tmp_path / "s0.zarr", test.ids[:8], rng.normal(size=(8, 16, 16))),
              _maps_store(tmp_path / "s1.zarr", test.ids[8:], rng.normal(size=(4, 16, 16)))]
    out = tmp_path / "r.json"
    result = retrain_job(**_retrain_kwargs(store, out, train_maps_path=train_maps, test_maps_paths=shards))
    saved = json.loads(out.read_text())
    assert saved["status"] == "ok" and 0.0 <= saved["accuracy"] <= 1.0 and saved == json.loads(json.dumps(result))
    assert saved["removed_pixels_per_image"] == 64 and saved["n_test"] == 12 and saved["model_fingerprint"] == "mf"

    na = _maps_store(tmp_path / "na.zarr", train.ids, None, reason="needs an X-DNN")
    skipped = retrain_job(**_retrain_kwargs(store, tmp_path / "s.json", train_maps_path=na, test_maps_paths=shards))
    assert skipped["status"] == "skipped" and skipped["accuracy"] is None and "X-DNN" in skipped["reason"]

    kwargs = _retrain_kwargs(store, tmp_path / "nan.json", train_maps_path=train_maps, test_maps_paths=shards)
    kwargs["recipe"] = {**kwargs["recipe"], "lr": 1e30, "optimiser": "sgd"}
    with pytest.raises(RetrainDiverged):
        retrain_job(**kwargs)
    assert not (tmp_path / "nan.json").exists()


# ------------------------------------------------------------------------------------ report
def _result(method, fraction, arm, accuracy, repeat=0, status="ok"):
    return {"dataset": "d", "model": "m", "method": method, "method_fn": method, "fraction": fraction, "arm": arm,
            "repeat": repeat, "accuracy": accuracy, "status": status, "reason": None if status == "ok" else "n/a"}


def test_rows_hold_roar_diffroar_and_the_no_removal_accuracy(tmp_path):
    results = [
        _result("ig", 0.5, "most", 0.4), _result("ig", 0.5, "least", 0.9),
        _result("random", 0.5, "most", 0.7), _result("random", 0.5, "least", 0.65),
        _result("xg", 0.5, "most", None, status="skipped"), _result("xg", 0.5, "least", None, status="skipped"),
        {**_result(None, 0.0, None, 0.95), "model": None},
    ]
    rows = roar_rows(results).set_index(["method", "metric"])
    assert rows.loc[("ig", "roar"), "value"] == 0.4
    assert rows.loc[("ig", "diffroar"), "value"] == pytest.approx(0.5)
    assert rows.loc[("random", "diffroar"), "value"] == pytest.approx(-0.05)
    assert rows.loc[(NO_REMOVAL, "roar"), "value"] == 0.95 and rows.loc[(NO_REMOVAL, "roar"), "fraction"] == 0.0
    assert rows.loc[("xg", "diffroar"), "status"] == "skipped" and np.isnan(rows.loc[("xg", "diffroar"), "value"])
    assert set(rows["direction"]) == {"lower", "higher"}

    paths = []
    for i, r in enumerate(results):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    write_roar_report(paths, tmp_path / "roar.parquet", tmp_path / "roar.md", {"d": tmp_path / "fig" / "roar-d.png"})
    table = pd.read_parquet(tmp_path / "roar.parquet")
    assert len(table) == 7 and table["repeat"].dtype == "int64" and table["fraction"].dtype == "float64"
    text = (tmp_path / "roar.md").read_text()
    assert "| method | 0% | 50% |" in text  # the no-removal accuracy is the fraction-0 column
    assert "| no_removal | 0.950 |  |" in text and "| ig |  | 0.400 |" in text
    assert (tmp_path / "fig" / "roar-d.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------ plan and config
def _checked(config: dict) -> dict:
    return validate_config(copy.deepcopy(config), workdir=REPO)


def test_plan_lists_every_retrain_and_its_params_exclude_report_settings():
    plan = Plan(_checked(TINY_ROAR))
    files = plan.roar_result_files("r")
    assert len(files) == 1 + 2 * 2 * 2  # no-removal + methods × fractions × arms (1 repeat)
    assert "r/roar/tiny/cnn/gradient/fraction-0.75/least-repeat-0.json" in files
    fewer = copy.deepcopy(TINY_ROAR)
    fewer["roar"]["fractions"] = [0.25]
    setting = plan.roar_retrain_setting("tiny", "cnn", "gradient", "0.25", "most", 0)
    assert Plan(_checked(fewer)).roar_retrain_setting("tiny", "cnn", "gradient", "0.25", "most", 0) == setting
    assert setting["fraction"] == 0.25 and setting["recipe"]["epochs"] == 1 and "fractions" not in str(setting)
    assert "method" not in plan.roar_retrain_setting("tiny", None, None, None, None, 0)
    assert plan.roar_recipe(1)["seed"] == plan.roar_recipe(0)["seed"] + 1
    assert Plan(_checked({k: v for k, v in TINY_ROAR.items() if k != "roar"})).roar_outputs() == []
    assert fraction_label(0.1) == "0.1" and fraction_label(0.25) == "0.25" and fraction_label(1e-5) == "0.00001"


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["roar"].update(fractions=[0.5, 1.0]), "roar.fractions.1"),
        (lambda c: c["roar"].update(fractions=[0.0]), "roar.fractions.0"),
        (lambda c: c["roar"].update(fractions=[-0.2]), "roar.fractions.0"),
        (lambda c: c["roar"].update(arch="resnet9"), "roar.arch"),
        (lambda c: c["roar"].update(methods=["gradient"]), "roar.methods"),
        (lambda c: c["roar"].update(methods=["random", "nope"]), "roar.methods[1]"),
        (lambda c: c["roar"].update(models=["xcnn"]), "roar.models[0]"),
        (lambda c: c["roar"].update(fractions=[0.1, 0.1000000001]), "roar.fractions[1]"),
        (lambda c: c["roar"].update(epochs=0), "roar.epochs"),
    ],
)
def test_bad_roar_settings_are_config_errors_naming_the_key(edit, key):
    config = copy.deepcopy(TINY_ROAR)
    edit(config)
    with pytest.raises(ConfigError) as err:
        _checked(config)
    assert err.value.key_path == key


def test_roar_cifar_config_is_valid_once_its_folder_exists(tmp_path):
    config = yaml.safe_load((REPO / "config" / "roar_cifar.yaml").read_text())
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    checked = validate_config(config, workdir=tmp_path)
    roar = checked["roar"]
    assert roar["arch"] == "preact_resnet18" and roar["epochs"] == 10 and roar["lr"] == 0.01
    assert roar["fractions"] == [round(0.1 * k, 1) for k in range(1, 10)]
    assert checked["models"]["preact_cifar10"]["arch"] == "preact_resnet18"
