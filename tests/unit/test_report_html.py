"""report.html from stores written with the project's own writers, opened in real headless Chromium."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headless import chromium_binary, inspect_page  # noqa: E402

from attrflow.data.sample_store import SampleSet, write_sample_store
from attrflow.report.aggregate import aggregate
from attrflow.report.costs import write_costs
from attrflow.report.evidence import write_evidence
from attrflow.report.html import write_report
from attrflow.report.schema import SCORES, write_table
from attrflow.store import write_store

METHODS = {"random": "random_attribution", "gradient": "gradient", "ig": "integrated_gradients"}
METRICS = {"insertion": "higher", "deletion": "lower", "mufidelity": "higher", "pointing_game": "higher"}
N, SIDE = 12, 16


def _results(root: Path) -> dict:
    """A tiny results tree: one dataset, one model, three methods, four metrics, one axiom entry."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    masks = np.stack([(abs(yy - 4 - i % 6) < 3) & (abs(xx - 8) < 4) for i in range(N)])
    images = np.repeat(masks[:, None].astype(np.float32) * 0.8 + 0.1, 3, axis=1)
    ids = [f"img{i:02d}" for i in range(N)]
    samples = write_sample_store(
        root / "data/shapes/samples.zarr", SampleSet(images, np.zeros(N), ids, masks), None, {"dataset": "shapes"}
    )
    stores, tables = [], []
    for skill, (method, fn) in enumerate(METHODS.items()):
        maps = masks * skill + rng.normal(size=masks.shape)
        attrs = {
            "dataset": "shapes", "model": "cnn", "method": method, "fn": fn, "sample_range": [0, N],
            "wall_time_s": 0.01 * (skill + 1), "forward_samples": N, "backward_samples": N * skill,
            "peak_memory_bytes": 2**20, "device": "cpu", "applicable": True,
        }  # fmt: skip
        stores.append(
            str(write_store(root / f"attributions/shapes/cnn/{method}/shard-0.zarr", {"maps": maps.astype(np.float32), "targets": np.zeros(N, dtype=np.int64), "ids": np.array(ids)}, attrs))
        )
        for metric, direction in METRICS.items():
            sign = 1 if direction == "higher" else -1
            values = sign * skill + rng.normal(size=N)
            curves = [list(np.clip(np.linspace(1, 0, 8) + 0.1 * skill * sign + 0.05 * rng.normal(size=8), 0, 1)) for _ in range(N)] if metric in ("insertion", "deletion") else [None] * N
            tables.append(
                pa.table(
                    {
                        "dataset": ["shapes"] * N, "model": ["cnn"] * N, "method": [method] * N, "metric": [metric] * N,
                        "sample_id": ids, "target": [0] * N, "label": [0] * N, "correct": [True] * N,
                        "value_retest": [None] * N, "value": values, "curve": curves, "status": ["ok"] * N,
                        "reason": [None] * N, "direction": [direction] * N, "method_fn": [fn] * N, "metric_fn": [metric] * N,
                        "method_fingerprint": ["m"] * N, "metric_fingerprint": ["s"] * N, "model_fingerprint": ["c"] * N,
                        "dataset_fingerprint": ["d"] * N,
                    },
                    schema=SCORES,
                )
            )  # fmt: skip
    # one axiom entry: two patches per input, maps for both targets from each method
    boxes = np.zeros((2, 2, SIDE, SIDE), dtype=bool)
    boxes[:, 0, 2:7, 2:7] = boxes[:, 1, 9:14, 9:14] = True
    axiom_inputs = write_store(
        root / "axioms/cnn/class_sensitivity_double/inputs.zarr",
        {"ids": np.array(["a0", "a1"]), "inputs": rng.uniform(size=(2, 3, SIDE, SIDE)).astype(np.float32), "masks": boxes, "accepted": np.array([True, True]),
         "targets": np.array([[1, 2], [3, 0]]), "robust_pass_fraction": np.array([1.0, 0.75])},
        {"kind": "axiom_inputs", "patch_names": ["f_a", "f_b"]},
    )
    axiom_maps = [
        str(write_store(root / f"axioms/cnn/maps/{method}.zarr", {}, {"kind": "axiom_attribution"},
                        groups={"class_sensitivity_double": {"ids": np.array(["a0", "a1"]), "maps_a": rng.normal(size=(2, SIDE, SIDE)), "maps_b": rng.normal(size=(2, SIDE, SIDE))}}))
        for method in METHODS
    ]  # fmt: skip
    reports = root / "reports"
    paths = []
    for i, table in enumerate(tables):
        paths.append(reports / f"part-{i}.parquet")
        write_table(table, paths[-1])
    aggregate(paths, reports / "scores.parquet", reports / "summary.parquet")
    write_costs(stores, reports / "costs.parquet")
    write_evidence(reports / "scores.parquet", *(reports / f"{n}.parquet" for n in ("comparisons", "ranks", "metric_quality", "metric_agreement")))
    # the baseline-bias probe table (attrflow.report.probes) of a clean/corrupted pair of datasets
    from attrflow.report.probes import PROBES

    probe_rows = [
        {"dataset": f"shapes_{c}", "clean_dataset": "shapes", "corruption": c, "family": family, "severity": sev,
         "model": "cnn", "method": method, "metric": "insertion", "direction": "higher", "n": N,
         "clean_mean": 0.5, "corrupted_mean": 0.5 - 0.1 * sev, "drop": 0.1 * sev, "loss": 0.1 * sev}
        for c, family in (("gaussian_blur", "blur"), ("brightness", "digital")) for sev in (1, 3) for method in METHODS
    ]  # fmt: skip
    write_table(pa.Table.from_pylist(probe_rows, schema=PROBES), reports / "probes.parquet")
    return {
        "samples": [str(samples)], "maps": stores, "axioms": [str(axiom_inputs), *axiom_maps], "reports": reports,
        "probes": [str(reports / "probes.parquet")],
    }  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    made = _results(root)
    out = write_report(
        reports=made["reports"], out_html=made["reports"] / "report.html", sample_stores=made["samples"],
        attribution_stores=made["maps"], axiom_stores=made["axioms"], probe_outputs=made["probes"],
    )  # fmt: skip
    return out


def test_report_has_every_section_and_relative_figures(report):
    text = report.read_text()
    for heading in ("What was run", "Critical-difference diagrams", "Methods × metrics", "Metric quality",
                    "Agreement between metrics", "MuFidelity", "Map galleries", "Curves", "Quality against cost",
                    "Axiom scenarios", "Baseline-bias probes"):  # fmt: skip
        assert heading in text, heading
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 8  # cd, ranks, agreement, gallery, curves, cost, axioms, probes
    for src in sources:
        assert not src.startswith(("/", "http")) and (report.parent / src).is_file()
    assert "http://" not in text and "https://" not in text  # nothing to fetch


def test_axiom_gallery_names_both_targets_the_patches_and_how_robust_each_sample_is(report):
    text = report.read_text()
    assert "patches f_a (green), f_b (orange)" in text
    assert "a0: class a = 1, class b = 2, property held on 100% of fresh draws" in text
    assert "a1: class a = 3, class b = 0, property held on 75% of fresh draws" in text


def test_report_opens_in_headless_chromium(report):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); .ci/run installs it")
    seen = inspect_page(binary, report)
    assert seen["errors"] == []
    assert seen["images"] and all(complete and width > 0 for _, complete, width in seen["images"]), seen["images"]
    assert seen["text_length"] > 500
    import matplotlib.pyplot as plt

    pixels = plt.imread(io.BytesIO(seen["screenshot"]), format="png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.02  # not a blank page


def test_chromium_reports_a_broken_image(tmp_path):
    """The check above can fail: a page whose image is missing shows up as such."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); .ci/run installs it")
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="figures/missing.png"></body></html>')
    seen = inspect_page(binary, page)
    assert seen["images"][0][2] == 0 and seen["errors"]


def test_samples_per_cell_counts_unscored_methods_apart():
    import pandas as pd

    from attrflow.report.html import samples_per_cell

    # completeness applies to path methods only: gradient has no value, so it must not pull
    # n_own_min to 0 nor count among the methods whose common samples are ranked
    ranks = pd.DataFrame({
        "dataset": ["d"] * 4, "model": ["m"] * 4, "metric": ["completeness"] * 3 + ["deletion"],
        "method": ["ig", "random", "gradient", "ig"],
        "n_own": [8, 6, 0, 32], "n_common": [6, 6, 6, 32],
    })
    cells = samples_per_cell(ranks).set_index("metric")
    assert cells.loc["completeness", ["methods", "not_scored", "n_own_min", "n_own_max", "n_common"]].tolist() == [2, 1, 6, 8, 6]
    assert cells.loc["deletion", ["methods", "not_scored", "n_own_min", "n_own_max"]].tolist() == [1, 0, 32, 32]
