"""Network-dissection counts and the report's dissection / semantic attribution section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attrflow.data.sample_store import SampleSet, write_sample_store
from attrflow.dissection.network_dissection import Dissection
from attrflow.dissection.job import dissection_table
from attrflow.report.dissection import (
    counts_grid,
    counts_markdown,
    detector_counts,
    dissection_section,
    read_tables,
    labels_for,
    unit_labels,
    unit_title,
    write_dissection_reports,
)
from attrflow.report.html import Page
from attrflow.report.schema import write_table
from attrflow.store import write_store


def _dissection(iou: np.ndarray) -> Dissection:
    units, concepts = iou.shape
    names = [f"shape:c{c}" for c in range(concepts)]
    return Dissection(
        concepts=names, categories=["shape"] * concepts, thresholds=np.arange(units, dtype=float), iou=iou,
        intersection=iou * 10, union=np.full(iou.shape, 10.0), images_with=np.ones(concepts), iou_threshold=0.04,
    )


def _tables(root: Path) -> list[Path]:
    # layer A: unit 0 detects c0 (0.3), unit 1 detects c0 too (0.05), unit 2's best (c1, 0.04) is not > 0.04
    layer_a = _dissection(np.array([[0.3, 0.1], [0.05, 0.01], [0.0, 0.04]]))
    # layer B: unit 0 detects c1; unit 1's IoUs are all NaN (no image has the concepts)
    layer_b = _dissection(np.array([[0.01, 0.5], [np.nan, np.nan]]))
    paths = []
    for layer, result in (("a", layer_a), ("b", layer_b)):
        path = root / f"dissection/d/m/{layer}.parquet"
        write_table(dissection_table(result, dataset="d", model="m", layer=layer, module=f"mod.{layer}", quantile=0.005), path)
        paths.append(path)
    return paths


def test_counts_by_hand(tmp_path):
    rows = read_tables(_tables(tmp_path))
    counts = detector_counts(rows).set_index(["layer", "concept"])["detectors"]
    assert counts.to_dict() == {("a", "shape:c0"): 2, ("a", "shape:c1"): 0, ("b", "shape:c0"): 0, ("b", "shape:c1"): 1}
    units = unit_labels(rows)
    assert units[units["layer"] == "a"]["detector"].tolist() == [True, True, False]
    assert units[units["layer"] == "b"]["unit"].tolist() == [0]  # the all-NaN unit has no best concept
    markdown = counts_markdown(detector_counts(rows))
    assert "## m on d" in markdown and "| layer | units | shape:c0 | shape:c1 | detectors |" in markdown
    assert "| a | 3 | 2 | 0 | 2 |" in markdown and "| b | 2 | 0 | 1 | 1 |" in markdown
    grid = counts_grid(detector_counts(rows)).set_index("layer")
    assert grid.loc["a", "detectors"] == 2 and grid.loc["b", "shape:c1"] == 1 and grid.loc["a", "units"] == 3


def test_section_shows_counts_and_named_top_units(tmp_path):
    tables = _tables(tmp_path)
    counts_path, units_path = tmp_path / "reports/dissection_counts.parquet", tmp_path / "reports/dissection_units.parquet"
    write_dissection_reports(tables, counts_path, units_path)
    n, side = 3, 8
    ids = [f"s{i}" for i in range(n)]
    images = np.random.default_rng(0).uniform(size=(n, 3, side, side)).astype(np.float32)
    samples = write_sample_store(tmp_path / "data/d/samples.zarr", SampleSet(images, np.zeros(n), ids), None, {})
    diagnostics = {
        "top_units": np.array([[0, 2]] * n, dtype=np.int64),
        "top_unit_maps": np.random.default_rng(1).normal(size=(n, 2, 2, 2)),
        "unit_contributions": np.array([[3.0, 0.5, 1.0]] * n),
    }
    store = write_store(
        tmp_path / "attributions/d/m/sem/shard-0.zarr",
        {"maps": np.zeros((n, side, side), np.float32), "ids": np.array(ids), "targets": np.zeros(n, np.int64)},
        {"fn": "semantic_attribution", "params": {"layer": "a"}, "applicable": True},
        groups={"diagnostics": diagnostics},
    )
    page = Page(tmp_path / "reports/report.html", tmp_path / "reports/figures")
    dissection_section(page, counts_path, units_path, [str(store)], [str(samples)], max_samples=2)
    html = "\n".join(page.parts)
    assert "Network-dissection counts" in html and "shape:c0" in html
    assert "report-semantic-d-m-sem.png" in html and (tmp_path / "reports/figures/report-semantic-d-m-sem.png").exists()
    assert pd.read_parquet(counts_path)["detectors"].sum() == 3


def test_top_unit_titles_name_detectors_only():
    by_unit = {0: ("shape:c0", 0.3, True), 2: ("shape:c1", 0.04, False)}
    contributions = np.array([3.0, 0.5, 1.0, 0.0])
    assert unit_title(0, by_unit, contributions) == "u0 c0 67%"
    assert unit_title(2, by_unit, contributions) == "u2 - 22%"
    assert unit_title(3, by_unit, contributions) == "u3 - 0%"


def test_top_units_take_their_labels_from_the_same_dataset_or_another_dissected_one(tmp_path):
    units = unit_labels(read_tables(_tables(tmp_path)))
    labels, source = labels_for(units, "d", "m", "a")
    assert source == "d" and labels["unit"].tolist() == [0, 1, 2]
    labels, source = labels_for(units, "imagenet_val", "m", "b")  # dissected on another dataset only
    assert source == "d" and labels["unit"].tolist() == [0]
    assert labels_for(units, "d", "other", "a")[1] is None


def test_layers_without_any_detector_keep_their_row():
    rows = read_tables([])
    assert counts_grid(detector_counts(rows)).empty
    counts = pd.DataFrame({
        "dataset": ["d"] * 2, "model": ["m"] * 2, "layer": ["a", "b"], "module": ["x", "y"],
        "concept": ["shape:c0"] * 2, "category": ["shape"] * 2, "detectors": [0, 0], "units": [4, 8],
        "iou_threshold": [0.04, 0.04],
    })  # fmt: skip
    grid = counts_grid(counts)
    assert grid[["layer", "units", "detectors"]].values.tolist() == [["a", 4, 0], ["b", 8, 0]]
    assert "| a | 4 | 0 |" in counts_markdown(counts)
