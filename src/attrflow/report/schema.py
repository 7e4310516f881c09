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
        # The method's parameters (canonical JSON) and the image side it ran at: what its passes
        # per image depend on, so `attrflow.price` can tell a cost measured at a study's settings.
        ("params", pa.string()),
        ("image_size", pa.int64()),
    ]
)

_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()

# Paired comparisons: one row per method pair per (dataset, model, metric) (attrflow.report.evidence).
COMPARISONS = pa.schema(
    [("dataset", _S), ("model", _S), ("metric", _S), ("direction", _S), ("method_a", _S), ("method_b", _S),
     ("n_a", _I), ("n_b", _I), ("n_shared", _I), ("mean_a", _F), ("mean_b", _F),
     ("mean_diff", _F),  # mean of (a − b) over the shared samples
     ("diff_ci95_low", _F), ("diff_ci95_high", _F),  # percentile bootstrap, 1000 resamples
     ("wilcoxon_statistic", _F), ("p_value", _F), ("p_holm", _F), ("significant", _B),
     ("better", _S), ("verdict", _S), ("involves_random", _B), ("reason", _S)]  # reason: why no test
)  # fmt: skip

# Ranks on the samples every method covers, Friedman + Nemenyi (Demšar 2006), verdict vs random.
RANKS = pa.schema(
    [("dataset", _S), ("model", _S), ("metric", _S), ("direction", _S), ("method", _S), ("is_random", _B),
     ("n_own", _I), ("n_common", _I), ("k_methods", _I), ("mean_own", _F), ("mean_common", _F),
     ("avg_rank", _F), ("avg_rank_ci95_low", _F), ("avg_rank_ci95_high", _F), ("position", _F),
     ("friedman_statistic", _F), ("friedman_p", _F), ("critical_difference", _F), ("cd_group", _S),
     ("vs_random", _S), ("best_vs_runner_up", _S), ("reason", _S)]
)  # fmt: skip

METRIC_QUALITY = pa.schema(
    [("dataset", _S), ("model", _S), ("metric", _S), ("direction", _S), ("k_methods", _I), ("n_common", _I),
     ("random_method", _S), ("random_position", _F), ("random_avg_rank", _F), ("n_better_than_random", _I),
     ("n_worse_than_random", _I), ("n_indistinguishable_from_random", _I), ("flag", _S),
     ("separation_note", _S), ("retest_n", _I), ("retest_spearman", _F), ("retest_icc", _F),
     ("retest_icc_kind", _S), ("retest_reason", _S), ("mean_kendall_tau", _F), ("top_two", _S),
     ("top_gap", _F), ("top_gap_sd", _F), ("n_for_80_power", _F), ("sample_size_reason", _S)]
)  # fmt: skip

METRIC_AGREEMENT = pa.schema(
    [("dataset", _S), ("model", _S), ("metric_a", _S), ("metric_b", _S), ("n_methods", _I),
     ("kendall_tau", _F), ("p_value", _F), ("reason", _S)]
)  # fmt: skip
