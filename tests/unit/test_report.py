"""Aggregation: statistics by hand, ranks by direction, schema, and the Markdown tables."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attrflow.report.aggregate import aggregate, summarise
from attrflow.report.schema import SCORES, write_table
from attrflow.report.tables import render_markdown


def _scores(method: str, metric: str, values, direction="higher", status=None, model="m1"):
    n = len(values)
    status = status or ["ok"] * n
    return pa.table(
        {
            "dataset": ["d"] * n,
            "model": [model] * n,
            "method": [method] * n,
            "metric": [metric] * n,
            "sample_id": [f"s{i}" for i in range(n)],
            "target": list(range(n)),
            "label": list(range(n)),
            "correct": [True] * n,
            "value": [float(v) for v in values],
            "value_retest": [None] * n,
            "curve": [[0.0, float(v)] for v in values],
            "status": status,
            "reason": [None if s == "ok" else "why" for s in status],
            "direction": [direction] * n,
            "method_fn": ["f"] * n,
            "metric_fn": [metric] * n,
            "method_fingerprint": ["a"] * n,
            "metric_fingerprint": ["b"] * n,
            "model_fingerprint": ["c"] * n,
            "dataset_fingerprint": ["d"] * n,
        },
        schema=SCORES,
    )


def test_statistics_by_hand():
    table = _scores("ig", "ins", [1.0, 2.0, 3.0, 4.0, float("nan")], status=["ok"] * 4 + ["nan"])
    row = summarise(table.to_pandas()).iloc[0]
    assert row["n"] == 4 and row["n_nan"] == 1
    assert row["mean"] == pytest.approx(2.5)
    assert row["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std of 1..4
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) · s / √n
    assert row["ci95_low"] == pytest.approx(2.5 - half, rel=1e-6)
    assert row["ci95_high"] == pytest.approx(2.5 + half, rel=1e-6)
    assert row["median"] == pytest.approx(2.5)


@pytest.mark.parametrize(("direction", "best"), [("higher", "b"), ("lower", "a")])
def test_rank_follows_direction(direction, best):
    table = pa.concat_tables([_scores("a", "x", [1, 1], direction), _scores("b", "x", [5, 5], direction)])
    summary = summarise(table.to_pandas())
    assert summary.set_index("method").loc[best, "rank"] == 1


def test_skipped_groups_have_no_rank_and_render():
    table = pa.concat_tables(
        [_scores("a", "x", [1, 2]), _scores("b", "x", [float("nan")] * 2, status=["skipped"] * 2)]
    )
    summary = summarise(table.to_pandas()).set_index("method")
    assert summary.loc["b", "n_skipped"] == 2 and pd.isna(summary.loc["b", "rank"])
    text = render_markdown(summary.reset_index())
    assert "skipped" in text and "| a |" in text and "**" not in text.split("## ", 1)[1]  # no evidence, no bold


def test_bold_only_when_significantly_better_than_runner_up():
    from attrflow.report.evidence import evidence

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(3, 12))
    table = pa.concat_tables(
        [
            _scores("best", "x", 5 + noise[0]),
            _scores("runner", "x", noise[1]),
            _scores("short", "x", list(noise[2][:8] - 0.1) + [float("nan")] * 4, status=["ok"] * 8 + ["nan"] * 4),
        ]
    )
    summary = summarise(table.to_pandas())
    _, ranks = evidence(table.to_pandas())
    text = render_markdown(summary, ranks=ranks)
    # compared on the 8 samples all share: 8 of 8 paired wins over either, exact Wilcoxon p = 0.0078
    # (Holm: ×3, ×2 → < 0.05)
    assert "| best | **5." in text
    assert "n=8 (4 nan)" in text and "(n = 12)" in text
    # the same table where the top two are close: no bold
    close = pa.concat_tables([_scores("best", "x", noise[1] + 0.01 + noise[2]), _scores("runner", "x", noise[1])])
    text = render_markdown(summarise(close.to_pandas()), ranks=evidence(close.to_pandas())[1])
    assert "**" not in text.split("## ", 1)[1]


def test_cells_like_random_are_marked():
    from attrflow.report.evidence import evidence
    from attrflow.report.tables import LIKE_RANDOM

    rng = np.random.default_rng(1)
    random = _scores("random", "x", rng.normal(size=15)).to_pandas().assign(method_fn="random_attribution")
    like = _scores("like", "x", rng.normal(size=15)).to_pandas()
    good = _scores("good", "x", 4 + rng.normal(size=15)).to_pandas()
    table = pd.concat([random, like, good])
    text = render_markdown(summarise(table), ranks=evidence(table)[1])
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert LIKE_RANDOM in rows["like"] and LIKE_RANDOM not in rows["good"] and LIKE_RANDOM not in rows["random"]
    assert LIKE_RANDOM in text.split("## ")[0]  # the legend explains the mark


def test_aggregate_files_open_in_pandas_pyarrow_duckdb(tmp_path):
    paths = []
    for i, method in enumerate(["a", "b"]):
        path = tmp_path / f"{method}.parquet"
        write_table(_scores(method, "x", np.arange(3) + i), path)
        paths.append(path)
    aggregate(paths, tmp_path / "scores.parquet", tmp_path / "summary.parquet")
    assert pq.read_table(tmp_path / "scores.parquet").schema.equals(SCORES)
    df = pd.read_parquet(tmp_path / "summary.parquet")
    assert list(df["method"]) == ["a", "b"] and list(df["rank"]) == [2, 1]
    got = duckdb.sql(f"SELECT method, avg(value) AS v FROM '{tmp_path}/scores.parquet' GROUP BY method ORDER BY method").fetchall()
    assert got == [("a", 1.0), ("b", 2.0)]


def test_wrong_schema_is_refused(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"value": [1.0]}), path)
    with pytest.raises(ValueError, match="bad.parquet"):
        aggregate([path], tmp_path / "s.parquet", tmp_path / "m.parquet")


def test_costs_come_from_store_provenance(tmp_path):
    from attrflow.report.costs import collect_costs
    from attrflow.report.tables import cost_table
    from attrflow.store import write_store

    def shard(k, n, fwd, bwd, wall, applicable=True):
        attrs = {
            "dataset": "d", "model": "m", "method": "ig", "fn": "integrated_gradients",
            "sample_range": [k * 4, k * 4 + n], "wall_time_s": wall, "forward_samples": fwd,
            "backward_samples": bwd, "peak_memory_bytes": (k + 1) * 2**20, "device": "cpu",
            "applicable": applicable, "reason": None if applicable else "no",
        }
        return write_store(tmp_path / f"s{k}.zarr", {"ids": np.array(["a"] * n)}, attrs)

    costs = collect_costs([shard(0, 4, 36, 32, 2.0), shard(1, 2, 18, 16, 1.0)])
    row = costs.iloc[0]
    assert row["n"] == 6 and row["backward_per_image"] == 8 and row["forward_per_image"] == 9
    assert row["wall_ms_per_image"] == pytest.approx(500.0) and row["peak_memory_mb"] == 2
    assert "| d | m | ig | 6 | 8 | 9 |" in cost_table(costs)


def test_model_accuracy_and_the_chance_flag_by_hand():
    from attrflow.report.model_quality import accuracy_table, model_accuracy

    rows = []
    for model, hits in (("weak", 3), ("strong", 9)):
        for i in range(10):
            for metric in ("deletion", "insertion"):  # several rows per sample count once
                rows.append({"dataset": "d", "model": model, "sample_id": f"s{i}", "metric": metric,
                             "label": 0, "correct": i < hits})
    rows.append({"dataset": "axioms/x", "model": "weak", "sample_id": "a", "metric": "m", "label": None, "correct": None})
    table = model_accuracy(pd.DataFrame(rows), {"weak": 4, "strong": 4}).set_index("model")
    assert table.loc["weak", "n"] == 10 and table.loc["weak", "accuracy"] == 0.3
    # P(X >= 3 | n = 10, p = 1/4) = 1 - P(X <= 2) = 0.474407...
    assert table.loc["weak", "p_above_chance"] == pytest.approx(0.4744071960449219)
    assert table.loc["weak", "at_chance"] and not table.loc["strong", "at_chance"]
    # P(X >= 9 | n = 10, p = 1/4) = 10 · 0.75 · 0.25^9 + 0.25^10 = 2.956390380859375e-05
    assert table.loc["strong", "p_above_chance"] == pytest.approx(2.956390380859375e-05)
    assert "at chance level" in accuracy_table(table.reset_index())


def test_filter_correct_marks_misclassified_rows_skipped(tmp_path):
    from attrflow.report.aggregate import MISCLASSIFIED, only_correct

    table = _scores("ig", "ins", [1.0, 2.0, 3.0, 4.0])
    table = table.set_column(table.schema.get_field_index("correct"), "correct", pa.array([True, False, None, False]))
    status = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["ok", "ok", "ok", "nan"]))
    out = only_correct(status).to_pandas()
    assert out.status.tolist() == ["ok", "skipped", "ok", "nan"]  # no label: kept; already nan: kept
    assert out.reason.tolist()[1] == MISCLASSIFIED
    summary = summarise(out)
    assert int(summary.n.iloc[0]) == 2 and summary["mean"].iloc[0] == pytest.approx(2.0)
