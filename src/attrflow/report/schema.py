"""The Arrow schemas of the Parquet files users read (DESIGN.md, Contracts → Scores).

Written explicitly, so every file has the same types whatever pandas would infer, and so
pandas, pyarrow and DuckDB open them without help.
"""

from __future__ import annotations

import pyarrow as pa

SCORES = pa.schema(
    [
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),
        ("sample_id", pa.string()),
        ("target", pa.int64()),
        ("label", pa.int64()),  # the sample's ground-truth class
        ("correct", pa.bool_()),  # whether the model predicts `label` for the sample
        ("value", pa.float64()),
        # Metrics that draw random subsets, noise or attacks: the same metric with an independent
        # seed (test-retest reliability); null for deterministic metrics.
        ("value_retest", pa.float64()),
        ("curve", pa.list_(pa.float64())),
        ("status", pa.string()),  # ok | nan | skipped
        ("reason", pa.string()),  # why a value is nan or skipped; null when ok
        ("direction", pa.string()),  # higher | lower: which is better for this metric
        ("method_fn", pa.string()),
        ("metric_fn", pa.string()),
        ("method_fingerprint", pa.string()),
        ("metric_fingerprint", pa.string()),
        ("model_fingerprint", pa.string()),
        ("dataset_fingerprint", pa.string()),
    ]
)

SUMMARY = pa.schema(
    [
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),
        ("direction", pa.string()),
        ("n", pa.int64()),  # samples with status ok
        ("n_nan", pa.int64()),
        ("n_skipped", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("ci95_low", pa.float64()),
        ("ci95_high", pa.float64()),
        ("median", pa.float64()),
        ("rank", pa.int64()),  # 1 = best method for this dataset/model/metric; null if no value
    ]
)


def write_table(table: pa.Table, path) -> None:
    """Write a Parquet file atomically (temporary name, then rename)."""
    import os
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)

COSTS = pa.schema(
    [
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("method_fn", pa.string()),
        ("applicable", pa.bool_()),
        ("reason", pa.string()),
        ("n", pa.int64()),
        ("wall_s", pa.float64()),  # attribution wall time, all shards
        ("wall_ms_per_image", pa.float64()),
        ("forward_per_image", pa.float64()),  # model forward samples per explained image
        ("backward_per_image", pa.float64()),  # backward samples (gradient evaluations) per image
        ("peak_memory_mb", pa.float64()),  # the largest of the shards' peaks
        ("device", pa.string()),
    ]
)
