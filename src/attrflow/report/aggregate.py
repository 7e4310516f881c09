"""Concatenate per-job score files and summarise them per (dataset, model, method, metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attrflow.report.schema import SCORES, SUMMARY, write_table

GROUP = ["dataset", "model", "method", "metric"]


def concat_scores(paths: Iterable[str | Path]) -> pa.Table:
    tables = []
    for path in paths:
        table = pq.read_table(path)
        if not table.schema.equals(SCORES):
            raise ValueError(f"{path} does not have the scores schema; re-run its score job")
        tables.append(table)
    return pa.concat_tables(tables) if tables else SCORES.empty_table()


def _t_quantile_975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile (scipy is optional here, so fall back to a table)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover - scipy is installed with the dev extra
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042}
        best = max(k for k in table if k <= dof) if dof >= 1 else 1
        return table[best] if dof < 60 else 1.96


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """n, mean, std, 95 % CI of the mean (Student t), median, direction and rank per group.

    Only rows with status ``ok`` enter the statistics; ``n_nan`` and ``n_skipped`` count the rest.
    Rank 1 is the best method for its (dataset, model, metric), following the metric's direction.
    """
    rows = []
    for key, group in scores.groupby(GROUP, sort=True):
        ok = group.loc[group["status"] == "ok", "value"].to_numpy(dtype=np.float64)
        n = int(ok.size)
        mean = float(ok.mean()) if n else math.nan
        std = float(ok.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
        half = _t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
        rows.append(
            dict(
                zip(GROUP, key),
                direction=str(group["direction"].iloc[0]),
                n=n,
                n_nan=int((group["status"] == "nan").sum()),
                n_skipped=int((group["status"] == "skipped").sum()),
                mean=mean,
                std=std,
                ci95_low=mean - half,
                ci95_high=mean + half,
                median=float(np.median(ok)) if n else math.nan,
            )
        )
    summary = pd.DataFrame(rows, columns=[f.name for f in SUMMARY if f.name != "rank"])
    summary["rank"] = _ranks(summary)
    return summary


def _ranks(summary: pd.DataFrame) -> pd.Series:
    ranks = pd.Series(pd.NA, index=summary.index, dtype="Int64")
    for _, group in summary.groupby(["dataset", "model", "metric"]):
        valid = group[group["n"] > 0]
        if valid.empty:
            continue
        ascending = valid["direction"].iloc[0] == "lower"
        ranks.loc[valid.index] = valid["mean"].rank(ascending=ascending, method="min").astype("Int64")
    return ranks


MISCLASSIFIED = "misclassified: run.filter is 'correct'"


def only_correct(table: pa.Table) -> pa.Table:
    """Rows of misclassified samples marked skipped (with why), so every statistic downstream
    reads correctly classified samples only; generated inputs (no label) are left as they are."""
    import pyarrow.compute as pc

    wrong = pc.fill_null(pc.invert(table["correct"]), False)
    wrong = pc.and_(wrong, pc.equal(table["status"], "ok"))
    status = pc.if_else(wrong, "skipped", table["status"])
    reason = pc.if_else(wrong, MISCLASSIFIED, table["reason"])
    table = table.set_column(table.schema.get_field_index("status"), "status", status)
    return table.set_column(table.schema.get_field_index("reason"), "reason", reason)


def aggregate(
    score_paths: Iterable[str | Path], scores_out: str | Path, summary_out: str | Path, sample_filter: str = "all"
) -> pd.DataFrame:
    table = concat_scores(score_paths)
    if sample_filter == "correct":
        table = only_correct(table)
    write_table(table, scores_out)
    summary = summarise(table.to_pandas())
    write_table(pa.Table.from_pandas(summary, schema=SUMMARY, preserve_index=False), summary_out)
    return summary
