"""The embedded regression task: severity scenes, regression models and their targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from attrflow.data.adapters import count_eval_samples, prepare_dataset, prepare_eval_range
from attrflow.data.regression import MAX_ZONE_SCORE, generate_severity_scenes, zone_bounds
from attrflow.data.sample_store import read_samples, write_sample_store
from attrflow.jobs.attribute import choose_targets
from attrflow.models import WrappedModel
from attrflow.models.regression import regression_quality

torch.set_num_threads(1)


def test_scenes_carry_their_total_as_label_with_zone_severity_lesion_masks_and_boxes():
    scenes = generate_severity_scenes("train", 24, seed=0, size=64)
    zones = zone_bounds(64)
    assert len(zones) == 6 and scenes.severity.shape == (24, 64, 64) and scenes.masks.shape == (24, 64, 64)
    for i in range(24):
        scores = [scenes.severity[i, top, left] for top, _, left, _ in zones]
        for (top, bottom, left, right), score in zip(zones, scores):
            zone = scenes.severity[i, top:bottom, left:right]
            assert (zone == score).all() and score in range(MAX_ZONE_SCORE + 1)
            # a zone's score is its number of lesions, each a separate component inside it
            assert ndimage.label(scenes.masks[i, top:bottom, left:right], structure=np.ones((3, 3)))[1] == score
        assert scenes.labels[i] == sum(scores)
        assert (scenes.boxes[:, 0] == i).sum() == scenes.labels[i]
    assert len(set(scenes.labels.tolist())) > 3  # the totals vary
    # every box holds its lesion: pixel centres inside it include the lesion's pixels
    row, x0, y0, x1, y1 = scenes.boxes[0]
    cols, rows = np.arange(64) + 0.5, np.arange(64) + 0.5
    inside = (rows[:, None] >= y0) & (rows[:, None] <= y1) & (cols[None] >= x0) & (cols[None] <= x1)
    assert (scenes.masks[int(row)] & inside).sum() > 0


def test_scenes_are_seeded_and_prefix_stable():
    whole = generate_severity_scenes("test", 6, seed=3, size=48)
    tail = generate_severity_scenes("test", 6, seed=3, size=48, start=4)
    np.testing.assert_array_equal(whole.images[4:], tail.images)
    np.testing.assert_array_equal(whole.severity[4:], tail.severity)
    np.testing.assert_array_equal(whole.boxes[whole.boxes[:, 0] >= 4][:, 1:], tail.boxes[:, 1:])
    other = generate_severity_scenes("test", 6, seed=4, size=48)
    assert not np.array_equal(whole.images, other.images)
    with pytest.raises(ValueError, match="size"):
        generate_severity_scenes("test", 2, seed=0, size=16)


def test_the_dataset_kind_is_a_regression_task_and_its_store_keeps_severity(tmp_path):
    spec = {"kind": "synthetic_severity", "n_train": 8, "n_test": 5, "size": 48}
    evaluation, train, attrs = prepare_dataset("severity", spec, seed=0)
    assert attrs["task"] == "regression" and attrs["num_classes"] == 1 and attrs["score_range"] == [0, 18]
    assert count_eval_samples(spec) == 5 and len(train) == 8
    part = prepare_eval_range("severity", spec, 0, 2, 5)
    np.testing.assert_array_equal(part.severity, evaluation.severity[2:])
    store = write_sample_store(tmp_path / "samples.zarr", evaluation, train, attrs)
    back = read_samples(store, "eval", 1, 4)
    np.testing.assert_array_equal(back.severity, evaluation.severity[1:4])
    assert back.fingerprint() != type(back)(back.images, back.labels, back.ids, back.masks, back.boxes).fingerprint()


def test_config_accepts_the_task_and_refuses_a_classifier_on_it():
    from pathlib import Path

    from attrflow.config import ConfigError, validate_config

    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config" / "regression.yaml").read_text())
    validate_config(config, workdir=repo)
    config["models"]["classifier"] = {"kind": "timm", "name": "resnet18", "num_classes": 8, "pretrained": False}
    config["run"]["models"] = ["classifier"]
    with pytest.raises(ConfigError, match="needs exactly 1"):
        validate_config(config, workdir=repo)


def test_regression_models_explain_output_zero_and_score_rounded_predictions():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1))
    model = WrappedModel(net, num_classes=1, task="regression").eval()
    images = torch.rand(3, 3, 4, 4)
    labels = torch.tensor([5, 12, 0])
    for mode in ("predicted", "label"):
        assert choose_targets(model, images, labels, mode, 2).tolist() == [0, 0, 0]
    from attrflow.jobs.score import predictions_of

    with torch.no_grad():
        expected = model(images)[:, 0].round().long().tolist()
    assert predictions_of(model, images, 2).tolist() == expected
    with pytest.raises(ValueError, match="one output"):
        WrappedModel(torch.nn.Linear(2, 3), num_classes=3, task="regression")


def test_regression_quality_by_hand():
    quality = regression_quality(np.array([1.0, 2.0, 4.0]), np.array([1, 3, 3]))
    assert quality["mse"] == pytest.approx(2 / 3) and quality["mae"] == pytest.approx(2 / 3)
    # SST of (1, 3, 3) = 8/3, SSE = 2 → R² = 1 − 2 / (8/3) = 0.25
    assert quality["r2"] == pytest.approx(0.25)
    assert quality["rounded_accuracy"] == pytest.approx(1 / 3)
    assert quality["pearson"] == pytest.approx(np.corrcoef([1.0, 2.0, 4.0], [1, 3, 3])[0, 1])


def test_a_trained_model_of_the_task_is_a_regression_model_end_to_end(tmp_path):
    """Prepare the data, train one epoch, save, load: the card and the model say regression, and
    Regression IBA and the severity correlation run on it."""
    from attrflow.metrics import MetricInputs, call_metric, get_metric
    from attrflow.methods import call_method, get_method
    from attrflow.methods.references import build_feature_statistics
    from attrflow.models.cards import load_model, save_model
    from attrflow.models.preparation import prepare_model
    from tests.unit.test_methods_iba import as_references

    spec = {"kind": "synthetic_severity", "n_train": 48, "n_test": 4, "size": 48}
    evaluation, train, attrs = prepare_dataset("severity", spec, seed=0)
    store = write_sample_store(tmp_path / "samples.zarr", evaluation, train, attrs)
    entry = {"kind": "trained", "arch": "small_cnn", "dataset": "severity", "width": 4, "epochs": 1, "batch_size": 16}
    model, card = prepare_model("sev", entry, dataset_store=store, seed=0, threads=1)
    assert card["task"] == "regression" and card["num_classes"] == 1
    assert set(card["regression_quality"]) == {"mse", "mae", "r2", "pearson"}
    save_model(model, card, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.task == "regression" and loaded.num_classes == 1
    x = torch.from_numpy(evaluation.images)
    torch.testing.assert_close(loaded(x), model(x))
    stats, stats_attrs = build_feature_statistics(loaded, train, seed=0)
    refs = as_references(stats, stats_attrs)
    refs = {k: type(v)(*(t.float() for t in v)) for k, v in refs.items()}
    targets = torch.zeros(4, dtype=torch.long)
    maps = call_method(get_method("regression_iba"), loaded, x, targets, {"steps": 2, "copies": 2},
                       generator=torch.Generator().manual_seed(0), references=refs).maps
    assert maps.shape == (4, 48, 48) and bool((maps >= 0).all())
    inputs = MetricInputs(
        model=loaded, images=x, maps=maps, targets=targets, labels=torch.from_numpy(evaluation.labels),
        ids=evaluation.ids, masks=torch.from_numpy(evaluation.masks),
        severity=torch.from_numpy(evaluation.severity), method="regression_iba",
    )
    out = call_metric(get_metric("severity_correlation"), inputs, {})
    assert all(s in ("ok", "nan") for s in out.status) and np.isfinite(out.values[np.array(out.status) == "ok"]).all()


def test_the_accuracy_report_gives_a_regression_model_no_chance_level(tmp_path):
    import json

    import pandas as pd

    from attrflow.report.model_quality import accuracy_table, card_classes, model_accuracy

    for name, card in {"cls": {"num_classes": 4}, "reg": {"num_classes": 1, "task": "regression"}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text(json.dumps(card))
    classes = card_classes(tmp_path)
    assert classes == {"cls": 4}
    scores = pd.DataFrame(
        {"dataset": "d", "model": ["cls", "cls", "reg", "reg"], "sample_id": ["a", "b", "a", "b"],
         "label": [1, 2, 7, 9], "correct": [True, True, True, False]}
    )
    accuracy = model_accuracy(scores, classes)
    regression = accuracy[accuracy.model == "reg"].iloc[0]
    assert regression.accuracy == 0.5 and np.isnan(regression.chance) and not regression.at_chance
    table = accuracy_table(accuracy)
    assert "| reg |" in table and "n/a (no chance level" in table.split("| reg |")[1]
