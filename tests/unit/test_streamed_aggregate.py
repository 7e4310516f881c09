"""Streamed aggregation (one partition / one family in memory) gives exactly the whole-table
statistics, and the partitioned score files open in DuckDB and pyarrow.dataset."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from attrflow.report.aggregate import aggregate, concat_scores, only_correct, summarise
from attrflow.report.evidence import evidence, metric_agreement, metric_quality, write_evidence
from attrflow.report.schema import SCORES, write_table

METRICS = {"deletion": "lower", "insertion": "higher", "mufidelity": "higher"}


def _shard(dataset, model, method, shard, size, rng):
    rows = []
    for metric, direction in METRICS.items():
        for i in range(shard * size, (shard + 1) * size):
            value = float(rng.normal(loc=0.1 * len(method)))
            status = "ok"
            if rng.random() < 0.08:
                value, status = float("nan"), "nan"
            elif rng.random() < 0.05:
                status = "skipped"
            rows.append(
                dict(
                    dataset=dataset, model=model, method=method, metric=metric, sample_id=f"{dataset}-{i:05d}",
                    target=i % 3, label=i % 3, correct=bool(rng.random() < 0.8), value=value,
                    value_retest=value + float(rng.normal(scale=0.1)) if metric == "mufidelity" else None,
                    curve=[0.0, value, 1.0], status=status, reason=None if status == "ok" else "why",
                    direction=direction, method_fn="random_attribution" if method == "random" else method,
                    metric_fn=metric, method_fingerprint="a", metric_fingerprint="b", model_fingerprint="c",
                    dataset_fingerprint="d",
                )
            )
    return pa.Table.from_pylist(rows, schema=SCORES)


def _hive_scores(root, rng, shards=3, size=7):
    paths = []
    for dataset in ["shapes", "folder"]:
        for model in ["cnn", "resnet"]:
            for method in ["random", "ig", "gradient", "smoothgrad"]:
                for shard in range(shards):
                    path = root / f"dataset={dataset}" / f"model={model}" / f"method={method}" / f"shard-{shard}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_table(_shard(dataset, model, method, shard, size, rng), path)
                    paths.append(path)
    return paths


@pytest.mark.parametrize("sample_filter", ["all", "correct"])
def test_streamed_aggregate_equals_whole_table(tmp_path, sample_filter):
    paths = _hive_scores(tmp_path / "scores", np.random.default_rng(0))
    summary = aggregate(paths, tmp_path / "scores.parquet", tmp_path / "summary.parquet", sample_filter=sample_filter)

    whole = concat_scores(paths)
    if sample_filter == "correct":
        whole = only_correct(whole)
    expected = summarise(whole.to_pandas())
    pd.testing.assert_frame_equal(summary, expected, check_exact=True)

    # scores.parquet holds the same rows (grouped by (dataset, model, method, metric), one row group each)
    written = pq.read_table(tmp_path / "scores.parquet")
    assert written.schema.equals(SCORES)
    key = ["dataset", "model", "method", "metric", "sample_id"]
    got = written.to_pandas().sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(got, whole.to_pandas().sort_values(key, ignore_index=True))
    assert pq.ParquetFile(tmp_path / "scores.parquet").metadata.num_row_groups == 2 * 2 * 4 * len(METRICS)

    # the evidence, streamed one family at a time, equals the whole-table evidence
    outs = [tmp_path / f"{name}.parquet" for name in ["comparisons", "ranks", "quality", "agreement"]]
    write_evidence(tmp_path / "scores.parquet", *outs, draws=50)
    frame = whole.to_pandas()
    comparisons, ranks = evidence(frame, draws=50)
    agreement = metric_agreement(ranks)
    quality = metric_quality(frame, comparisons, ranks, agreement)
    for out, exp in zip(outs, [comparisons, ranks, quality, agreement]):
        got = pd.read_parquet(out)
        assert len(got) == len(exp) > 0
        for column in exp.columns:
            a, b = got[column].to_numpy(), exp[column].to_numpy()
            if a.dtype.kind == "f" or b.dtype.kind == "f":
                np.testing.assert_array_equal(a.astype(float), b.astype(float), err_msg=f"{out.name}: {column}")
            else:
                assert [None if pd.isna(x) else x for x in a] == [None if pd.isna(x) else x for x in b], f"{out.name}: {column}"


def test_partitioned_scores_open_in_duckdb_and_pyarrow(tmp_path):
    paths = _hive_scores(tmp_path / "scores", np.random.default_rng(1), shards=2, size=4)
    data = ds.dataset(tmp_path / "scores", format="parquet", partitioning="hive")
    assert data.count_rows() == len(paths) * 4 * len(METRICS)
    # the README's one-liner: mean per (model, method, metric) straight from the partitioned set
    got = duckdb.sql(
        f"SELECT model, method, metric, avg(value) AS mean FROM read_parquet('{tmp_path}/scores/**/*.parquet') "
        "WHERE status = 'ok' GROUP BY ALL ORDER BY ALL"
    ).df()
    whole = concat_scores(paths).to_pandas()
    expected = whole[whole["status"] == "ok"].groupby(["model", "method", "metric"])["value"].mean()
    assert len(got) == len(expected)
    np.testing.assert_allclose(got["mean"].to_numpy(), expected.to_numpy(), rtol=1e-12)


def test_a_group_split_over_two_folders_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    table = _shard("d", "m", "ig", 0, 3, rng)
    for folder in ["a", "b"]:
        (tmp_path / folder).mkdir()
        write_table(table, tmp_path / folder / "shard-0.parquet")
    with pytest.raises(ValueError, match="one group per folder"):
        aggregate([tmp_path / "a" / "shard-0.parquet", tmp_path / "b" / "shard-0.parquet"], tmp_path / "s.parquet", tmp_path / "m.parquet")
