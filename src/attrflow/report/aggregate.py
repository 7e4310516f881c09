"""Concatenate per-job score files and summarise them per (dataset, model, method, metric).

The score files form a hive-partitioned dataset
(``results/scores/dataset=…/model=…/method=…/shard-k.parquet``) that DuckDB and
``pyarrow.dataset`` read directly. `aggregate` streams over it one partition at a time — one
(dataset, model, method), all its shards — so its memory is bounded by the largest partition,
not by the study: at 50,000 images × 22 metrics a partition is ≈ 1.1 M rows, while the whole long
table of a LATEC-sized study has hundreds of millions. `scores.parquet` is written in the same
pass (one row group per (dataset, model, method, metric), so readers that filter on a metric
skip the rest by row-group statistics) and `summary.parquet` from the per-group statistics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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


@functools.lru_cache(maxsize=4096)
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
        rows.append(_group_row(key, str(group["direction"].iloc[0]), group["value"].to_numpy(dtype=np.float64), group["status"].to_numpy()))
    summary = pd.DataFrame(rows, columns=[f.name for f in SUMMARY if f.name != "rank"])
    summary["rank"] = _ranks(summary)
    return summary


def _group_row(key: tuple, direction: str, values: np.ndarray, status: np.ndarray) -> dict:
    """One summary row from a group's values and statuses (in the group's row order)."""
    ok = values[status == "ok"]
    n = int(ok.size)
    mean = float(ok.mean()) if n else math.nan
    std = float(ok.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
    half = _t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return dict(
        zip(GROUP, key),
        direction=direction,
        n=n,
        n_nan=int((status == "nan").sum()),
        n_skipped=int((status == "skipped").sum()),
        mean=mean,
        std=std,
        ci95_low=mean - half,
        ci95_high=mean + half,
        median=float(np.median(ok)) if n else math.nan,
    )


def _summarise_sorted(table: pa.Table) -> tuple[pd.DataFrame, list[int]]:
    """`summarise` without rank of a table sorted by the group columns (numpy per group slice),
    and the row bounds of its groups."""
    keys = [table[name].to_numpy(zero_copy_only=False) for name in GROUP]
    change = np.zeros(table.num_rows, dtype=bool)
    change[0] = True
    for column in keys:
        change[1:] |= column[1:] != column[:-1]
    bounds = [*np.flatnonzero(change), table.num_rows]
    values = table["value"].to_numpy(zero_copy_only=False).astype(np.float64)
    status = table["status"].to_numpy(zero_copy_only=False)
    direction = table["direction"].to_numpy(zero_copy_only=False)
    rows = [
        _group_row(tuple(str(c[a]) for c in keys), str(direction[a]), values[a:b], status[a:b])
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return pd.DataFrame(rows, columns=[f.name for f in SUMMARY if f.name != "rank"]), bounds


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


def partitions(paths: Iterable[str | Path]) -> list[list[Path]]:
    """Score files grouped by their folder (one hive partition: dataset, model, method), in the
    order the folders first appear, each folder's files in the order given (shard order)."""
    groups: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        groups.setdefault(path.parent, []).append(path)
    return list(groups.values())


def _read_partition(files: list[Path], sample_filter: str) -> pa.Table:
    table = concat_scores(files)
    if sample_filter == "correct":
        table = only_correct(table)
    if not table.num_rows:
        return table
    # Stable: within a metric the rows keep the shards' order, so every statistic sees its values
    # in the order a whole-table group-by would.
    order = pc.sort_indices(table, sort_keys=[("dataset", "ascending"), ("model", "ascending"), ("method", "ascending"), ("metric", "ascending")])
    return table.take(order)


def aggregate(
    score_paths: Iterable[str | Path],
    scores_out: str | Path,
    summary_out: str | Path,
    sample_filter: str = "all",
) -> pd.DataFrame:
    """scores.parquet and summary.parquet from the score files, one partition in memory at a time.

    Gives the same summary as `summarise` over the concatenated table (same values in the same
    order per group); a group may not span two folders (each score file's folder is its
    (dataset, model, method) partition; an axiom score file is a partition of its own).
    """
    import os

    scores_out = Path(scores_out)
    tmp = scores_out.with_name(scores_out.name + f".tmp-{os.getpid()}")
    parts, seen = [], {}
    try:
        with pq.ParquetWriter(tmp, SCORES) as writer:
            for files in partitions(score_paths):
                table = _read_partition(files, sample_filter)
                if not table.num_rows:
                    continue
                part, bounds = _summarise_sorted(table)
                for key in part[GROUP].itertuples(index=False, name=None):
                    if key in seen:
                        raise ValueError(f"scores of {key} are in {seen[key]} and {files[0].parent}: one group per folder")
                    seen[key] = files[0].parent
                parts.append(part)
                # One row group per (dataset, model, method, metric).
                for start, stop in zip(bounds[:-1], bounds[1:]):
                    writer.write_table(table.slice(start, stop - start), row_group_size=int(stop - start))
        os.replace(tmp, scores_out)
    finally:
        tmp.unlink(missing_ok=True)
    columns = [f.name for f in SUMMARY if f.name != "rank"]
    summary = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    summary = summary.sort_values(GROUP, kind="stable", ignore_index=True)
    summary["rank"] = _ranks(summary)
    write_table(pa.Table.from_pandas(summary, schema=SUMMARY, preserve_index=False), summary_out)
    return summary
