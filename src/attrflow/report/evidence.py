"""Paired evidence over the long scores table: which differences between methods are real.

Methods are scored on the same samples, so every comparison here is paired and made only on the
samples the compared methods were all scored on (a method limited to 8 samples is compared with
the others on those 8):

* every pair of methods (`comparisons`): the mean paired difference with a bootstrap 95 % CI, the
  Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``), Holm-corrected within the (dataset,
  model, metric) family (``statsmodels``), and a verdict;
* all methods together (`ranks`): the Friedman test on the samples every method covers
  (``scipy.stats.friedmanchisquare``), average ranks with bootstrap CIs, and the Nemenyi critical
  difference and its groups (Demšar, JMLR 2006), with each method's verdict against the random
  control (the entry whose fn is ``random_attribution``).

A family with fewer than three shared samples, all-NaN scores or ties everywhere gets a row that
says why no test was run (`reason`), never a p-value it cannot support.

Everything is a function of the scores table (`attrflow.report.schema.SCORES`; pandas or
pyarrow), so it runs the same on a workflow's `scores.parquet` and in a notebook.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

FAMILY = ["dataset", "model", "metric"]
RANDOM_FN = "random_attribution"
ALPHA = 0.05
BOOTSTRAP = 1000
MIN_SHARED = 3
# Read only what the statistics need: the `curve` lists would dominate memory on large tables.
COLUMNS = ["dataset", "model", "method", "metric", "sample_id", "target", "value", "status", "direction", "method_fn"]

NOT_SCORED = "not scored on any sample (skipped, not applicable or all NaN)"
NO_SHARED = "no sample has a finite score from both methods"
FEW_SHARED = "fewer than 3 shared samples with finite scores; no test run"
ALL_TIES = "every paired difference is zero (ties everywhere); no test run"


class Family:
    """One (dataset, model, metric): a samples × methods matrix of scores (NaN = not scored/ok)."""

    def __init__(self, key: tuple[str, str, str], direction: str, methods: list[str], values: np.ndarray, random: str | None):
        self.key = key
        self.direction = direction
        self.methods = methods
        self.values = values  # (n_samples, n_methods) float64
        self.random = random

    @property
    def oriented(self) -> np.ndarray:
        """Scores with larger = better, whatever the metric's direction."""
        return -self.values if self.direction == "lower" else self.values

    def rng(self, salt: str = "") -> np.random.Generator:
        """A generator fixed by the family's name: same scores → same bootstrap intervals."""
        return np.random.default_rng([0, zlib.crc32("\x1f".join((*self.key, salt)).encode())])


def _frame(scores: pd.DataFrame | pa.Table) -> pd.DataFrame:
    if isinstance(scores, pa.Table):
        keep = [c for c in COLUMNS if c in scores.column_names]
        return scores.select(keep).to_pandas()
    return scores


def families(scores: pd.DataFrame | pa.Table, value: str = "value") -> Iterator[Family]:
    """The (dataset, model, metric) families of a scores table as sample × method matrices.

    A sample is (sample_id, target); only rows with status ``ok`` and a finite `value` enter.
    """
    df = _frame(scores)
    missing = {"dataset", "model", "metric", "method", "sample_id", "value", "status"} - set(df.columns)
    if missing:
        raise ValueError(f"scores table lacks columns {sorted(missing)} (see attrflow.report.schema.SCORES)")
    values = df[value].to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.where(df["status"].to_numpy() == "ok", values, np.nan)
    # Sorted codes: a sample's row does not depend on the order of the table's rows.
    sample = pd.factorize(df["sample_id"], sort=True)[0].astype(np.int64)
    if "target" in df.columns:
        target = pd.factorize(df["target"], sort=True, use_na_sentinel=False)[0].astype(np.int64)
        sample = sample * (int(target.max(initial=0)) + 1) + target
    method_codes, method_names = pd.factorize(df["method"])
    random_methods = set()
    if "method_fn" in df.columns:
        random_methods = set(df.loc[df["method_fn"] == RANDOM_FN, "method"].unique())
    directions = df["direction"] if "direction" in df.columns else pd.Series("higher", index=df.index)
    for key, index in sorted(df.groupby(FAMILY, sort=False).indices.items()):
        rows, row_of = np.unique(sample[index], return_inverse=True)
        present, col_of = np.unique(method_codes[index], return_inverse=True)
        names = [str(method_names[c]) for c in present]
        order = np.argsort(names, kind="stable")
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(order.size)
        matrix = np.full((rows.size, present.size), np.nan)
        matrix[row_of, rank_of[col_of]] = values[index]
        names = [names[i] for i in order]
        random = next((m for m in names if m in random_methods), None)
        yield Family(tuple(map(str, key)), str(directions.iloc[index[0]]), names, matrix, random)


# ----------------------------------------------------------------------------------------------
# Building blocks (each tested on a published or hand-computed case)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: the i-th smallest of m is multiplied by m − i + 1,
    made monotone by a running maximum and capped at 1. NaN entries stay NaN and do not count.

    Written here (and tested against statsmodels' ``multipletests(method="holm")``) because
    statsmodels runs a full garbage collection on every call, which costs seconds per family on a
    large scores table.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size:
        order = finite[np.argsort(p[finite], kind="stable")]
        m = order.size
        scaled = p[order] * (m - np.arange(m))
        out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's q_α: the studentized range quantile for k groups and infinite dof, over √2."""
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks, CD = q_α √(k(k+1) / 6N) (Demšar 2006)."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def average_ranks(oriented: np.ndarray) -> np.ndarray:
    """(n, k) per-sample ranks, 1 = best (largest oriented score), ties sharing the average rank."""
    from scipy.stats import rankdata

    return rankdata(-oriented, axis=1, method="average")


def cd_groups(avg_ranks: np.ndarray, cd: float) -> list[str]:
    """Letters for the maximal runs of methods (by average rank) that lie within CD of each other.

    Methods that share a letter are not significantly different (Nemenyi); this is the bar under
    a critical-difference diagram.
    """
    order = np.argsort(avg_ranks, kind="stable")
    r = avg_ranks[order]
    runs: list[tuple[int, int]] = []
    for i in range(r.size):
        j = i
        while j + 1 < r.size and r[j + 1] - r[i] <= cd:
            j += 1
        if not runs or j > runs[-1][1]:
            runs.append((i, j))
    letters = [""] * r.size
    for g, (i, j) in enumerate(runs):
        for pos in range(i, j + 1):
            letters[pos] += _letter(g)
    out = [""] * r.size
    for pos, idx in enumerate(order):
        out[idx] = letters[pos]
    return out


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else f"g{i}"


def icc(ratings: np.ndarray, kind: str = "2,1") -> float:
    """Shrout & Fleiss (1979) intraclass correlation of an (n targets × k raters) table.

    ``"2,1"``: two-way random effects, absolute agreement of single ratings (the one used for
    test–retest here: a metric whose second seed shifts every score is not reliable);
    ``"3,1"``: two-way mixed, consistency; ``"1,1"``: one-way random.
    """
    x = np.asarray(ratings, dtype=np.float64)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((x - grand) ** 2).sum()
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))
    wms = (ss_total - ss_rows) / (n * (k - 1))
    if kind == "1,1":
        return float((bms - wms) / (bms + (k - 1) * wms))
    if kind == "2,1":
        return float((bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n))
    if kind == "3,1":
        return float((bms - ems) / (bms + (k - 1) * ems))
    raise ValueError(f"unknown ICC kind {kind!r}; use '1,1', '2,1' or '3,1'")


def _bootstrap_counts(n: int, rng: np.random.Generator, draws: int = BOOTSTRAP) -> np.ndarray:
    """(draws, n) float64: how often each of n samples is drawn in each bootstrap resample."""
    picks = rng.integers(0, n, size=(draws, n)) + n * np.arange(draws)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float64)


def _bootstrap_ci(counts: np.ndarray, values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95 % intervals of the mean of each column of `values` over its `present` rows.

    One resample of the family's samples serves every column: a column's resampled mean is over
    the resampled rows it is present in (a ratio of two matrix products), which is the bootstrap
    of "the mean over the shared samples" with sample units drawn with replacement.
    """
    if not counts.size:
        return np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    # float32 products: counts and 0/1 are exact, and 1e-7 relative error is far below a CI's width
    counts = counts.astype(np.float32)
    sums = counts @ np.where(present, values, 0.0).astype(np.float32)
    sizes = np.full((counts.shape[0], values.shape[1]), np.float32(values.shape[0]))
    gaps = ~present.all(axis=0)
    if gaps.any():
        sizes[:, gaps] = counts @ present[:, gaps].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (sums / sizes).astype(np.float64)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    empty = np.isnan(boot).any(axis=0)  # a resample that drew none of a column's rows
    if empty.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low[empty], high[empty] = np.nanpercentile(boot[:, empty], [2.5, 97.5], axis=0)
    return low, high


def wilcoxon_columns(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) of every column of (n, P)
    differences, where a 0 is an excluded sample (Wilcoxon's zero handling drops zero differences,
    so a column's non-shared rows are written as 0).

    The exact null distribution is used when a column has at most 50 non-zero differences and
    no tied |differences|; otherwise the normal approximation with tie correction (scipy's
    ``asymptotic``). Columns are tested together, grouped by method, so the test is vectorised.
    Returns statistic, p-value and, for a column not tested, why.
    """
    from scipy.stats import wilcoxon

    n, p = diffs.shape
    statistic, p_value = np.full(p, np.nan), np.full(p, np.nan)
    reasons: list[str | None] = [None] * p
    nonzero = (diffs != 0).sum(axis=0)
    exact = nonzero <= 50
    if exact.any():  # the exact distribution assumes no tied |differences|
        small = diffs[:, exact]
        magnitudes = np.sort(np.where(small != 0, np.abs(small), np.nan), axis=0)
        exact[exact] = ~(np.diff(magnitudes, axis=0) == 0).any(axis=0)
    testable = nonzero >= MIN_SHARED
    for method, chosen in (("exact", exact & testable), ("asymptotic", ~exact & testable)):
        if chosen.any():
            res = wilcoxon(diffs[:, chosen], axis=0, method=method)
            statistic[chosen], p_value[chosen] = res.statistic, res.pvalue
    for col in np.flatnonzero(~testable):
        reasons[col] = ALL_TIES if nonzero[col] == 0 else "fewer than 3 non-zero paired differences; no test run"
    return statistic, p_value, reasons


# ----------------------------------------------------------------------------------------------
# The tables

COMPARISON_COLUMNS = [
    "dataset", "model", "metric", "direction", "method_a", "method_b", "n_a", "n_b", "n_shared",
    "mean_a", "mean_b", "mean_diff", "diff_ci95_low", "diff_ci95_high", "wilcoxon_statistic",
    "p_value", "p_holm", "significant", "better", "verdict", "involves_random", "reason",
]  # fmt: skip


def compare_family(family: Family, draws: int = BOOTSTRAP) -> pd.DataFrame:
    """One row per method pair (a < b by name): mean(a − b) on their shared samples, its bootstrap
    95 % CI, Wilcoxon p, Holm-adjusted p within the family, and which method is better."""
    x = family.values
    finite = np.isfinite(x)
    k = len(family.methods)
    ia, ib = np.triu_indices(k, 1)
    shared = finite[:, ia] & finite[:, ib]  # (n, pairs)
    diffs = np.where(shared, x[:, ia] - x[:, ib], 0.0)
    n_shared = shared.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_diff = diffs.sum(axis=0) / n_shared
        mean_a = np.where(shared, x[:, ia], 0.0).sum(axis=0) / n_shared
        mean_b = np.where(shared, x[:, ib], 0.0).sum(axis=0) / n_shared
    counts = _bootstrap_counts(x.shape[0], family.rng("pairs"), draws) if x.shape[0] else np.zeros((0, 0))
    low, high = _bootstrap_ci(counts, diffs, shared)
    too_few = n_shared < MIN_SHARED
    low[too_few], high[too_few] = np.nan, np.nan
    statistic, p_value, reasons = wilcoxon_columns(diffs)
    for p in np.flatnonzero(too_few):
        reasons[p] = NO_SHARED if n_shared[p] == 0 else FEW_SHARED
        statistic[p] = p_value[p] = np.nan
    p_holm = holm(p_value)
    significant = np.isfinite(p_holm) & (p_holm < ALPHA)
    sign = 1.0 if family.direction != "lower" else -1.0
    names = np.array(family.methods, dtype=object)
    a_better = sign * mean_diff > 0
    better = np.where(significant, np.where(a_better, names[ia], names[ib]), None)
    verdict = [
        "no test" if reasons[p] else f"{better[p]} better" if significant[p] else "not distinguishable"
        for p in range(ia.size)
    ]
    dataset, model, metric = family.key
    return pd.DataFrame(
        {
            "dataset": dataset, "model": model, "metric": metric, "direction": family.direction,
            "method_a": names[ia], "method_b": names[ib], "n_a": finite.sum(axis=0)[ia], "n_b": finite.sum(axis=0)[ib],
            "n_shared": n_shared, "mean_a": mean_a, "mean_b": mean_b, "mean_diff": mean_diff,
            "diff_ci95_low": low, "diff_ci95_high": high, "wilcoxon_statistic": statistic,
            "p_value": p_value, "p_holm": p_holm, "significant": significant, "better": better,
            "verdict": verdict, "involves_random": [family.random in (a, b) for a, b in zip(names[ia], names[ib])],
            "reason": reasons,
        },
        columns=COMPARISON_COLUMNS,
    )  # fmt: skip


RANK_COLUMNS = [
    "dataset", "model", "metric", "direction", "method", "is_random", "n_own", "n_common", "k_methods",
    "mean_own", "mean_common", "avg_rank", "avg_rank_ci95_low", "avg_rank_ci95_high", "position",
    "friedman_statistic", "friedman_p", "critical_difference", "cd_group", "vs_random",
    "best_vs_runner_up", "reason",
]  # fmt: skip


def rank_family(family: Family, comparisons: pd.DataFrame, draws: int = BOOTSTRAP) -> pd.DataFrame:
    """Friedman, average ranks (bootstrap CI), Nemenyi CD groups and the verdict against random,
    on the samples every method of the family was scored on."""
    from scipy.stats import friedmanchisquare

    x = family.values
    finite = np.isfinite(x)
    # Methods with no score at all (skipped, not applicable, all NaN) do not shrink the common set.
    scored = finite.any(axis=0)
    xs, k = x[:, scored], int(scored.sum())
    common = np.isfinite(xs).all(axis=1) if k else np.zeros(x.shape[0], dtype=bool)
    n_common = int(common.sum())
    nan = np.full(k, np.nan)
    avg, low, high = nan.copy(), nan.copy(), nan.copy()
    stat = p = cd = math.nan
    groups: list[str | None] = [None] * k
    reason = None
    if k < 2:
        reason = "fewer than 2 methods scored; nothing to rank"
    elif n_common == 0:
        reason = "no sample was scored by every method"
    elif n_common < MIN_SHARED:
        reason = "fewer than 3 samples scored by every method; no test run"
    if k >= 2 and n_common:
        oriented = -xs[common] if family.direction == "lower" else xs[common]
        ranks = average_ranks(oriented)
        avg = ranks.mean(axis=0)
        if n_common >= MIN_SHARED:
            counts = _bootstrap_counts(n_common, family.rng("ranks"), draws)
            low, high = np.percentile(counts @ ranks / n_common, [2.5, 97.5], axis=0)
    if reason is None:
        if np.all(xs[common] == xs[common][:, :1]):
            reason = ALL_TIES
        elif k < 3:
            reason = "the Friedman test needs at least 3 methods; see the pairwise comparison"
        else:
            res = friedmanchisquare(*xs[common].T)
            stat, p = float(res.statistic), float(res.pvalue)
            cd = critical_difference(k, n_common)
            if p < ALPHA:
                groups = cd_groups(avg, cd)
            else:
                groups = ["a"] * k  # Friedman does not reject: no post-hoc separation (Demšar)
    avg, low, high = (_spread(v, scored) for v in (avg, low, high))
    groups = list(_spread(np.array(groups, dtype=object), scored, None))
    reasons = [reason if s else NOT_SCORED for s in scored]
    position = pd.Series(avg).rank(method="min").to_numpy()
    vs_random = _versus_random(family, comparisons)
    best = _best_vs_runner_up(family, avg, comparisons)
    dataset, model, metric = family.key
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_own = np.where(finite, x, 0.0).sum(axis=0) / finite.sum(axis=0)
    return pd.DataFrame(
        {
            "dataset": dataset, "model": model, "metric": metric, "direction": family.direction,
            "method": family.methods, "is_random": [m == family.random for m in family.methods],
            "n_own": finite.sum(axis=0), "n_common": n_common, "k_methods": k, "mean_own": mean_own,
            "mean_common": x[common].mean(axis=0) if n_common else np.full(x.shape[1], np.nan), "avg_rank": avg,
            "avg_rank_ci95_low": low, "avg_rank_ci95_high": high, "position": position,
            "friedman_statistic": stat, "friedman_p": p, "critical_difference": cd, "cd_group": groups,
            "vs_random": [vs_random.get(m) for m in family.methods],
            "best_vs_runner_up": [best.get(m) for m in family.methods], "reason": reasons,
        },
        columns=RANK_COLUMNS,
    )  # fmt: skip


def _spread(values: np.ndarray, scored: np.ndarray, fill=np.nan) -> np.ndarray:
    """Values of the scored methods back in the family's method order, `fill` for the rest."""
    out = np.full(scored.size, fill, dtype=values.dtype if values.dtype == object else np.float64)
    out[scored] = values
    return out


def _versus_random(family: Family, comparisons: pd.DataFrame) -> dict[str, str]:
    """better / worse / not distinguishable (Holm-corrected) per method against the random control."""
    if family.random is None:
        return {}
    out = {family.random: "control"}
    rows = comparisons[comparisons["involves_random"]]
    for row in rows.itertuples():
        other = row.method_b if row.method_a == family.random else row.method_a
        if isinstance(row.reason, str):
            out[other] = "no test"
        elif not row.significant:
            out[other] = "not distinguishable"
        else:
            out[other] = "better" if row.better == other else "worse"
    return out


def _best_vs_runner_up(family: Family, avg: np.ndarray, comparisons: pd.DataFrame) -> dict[str, str]:
    """For the method ranked first on the common samples: is it significantly better than the
    second (paired, Holm-corrected)? ``significant`` / ``not significant`` / the no-test reason."""
    valid = np.flatnonzero(np.isfinite(avg))
    if valid.size < 2:
        return {}
    first, second = (family.methods[i] for i in valid[np.argsort(avg[valid], kind="stable")[:2]])
    pair = comparisons[
        ((comparisons["method_a"] == first) & (comparisons["method_b"] == second))
        | ((comparisons["method_a"] == second) & (comparisons["method_b"] == first))
    ].iloc[0]
    if isinstance(pair["reason"], str):
        return {first: "no test"}
    return {first: "significant" if pair["significant"] and pair["better"] == first else "not significant"}


def evidence(scores: pd.DataFrame | pa.Table, draws: int = BOOTSTRAP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparisons, ranks) for every (dataset, model, metric) of a scores table."""
    comparisons, ranks = [], []
    for family in families(scores):
        pairs = compare_family(family, draws)
        comparisons.append(pairs)
        ranks.append(rank_family(family, pairs, draws))
    comp = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame(columns=COMPARISON_COLUMNS)
    rank = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame(columns=RANK_COLUMNS)
    return comp, rank


# ----------------------------------------------------------------------------------------------
# Metric meta-evaluation: is this metric informative, reliable, and how does it agree with others?

QUALITY_COLUMNS = [
    "dataset", "model", "metric", "direction", "k_methods", "n_common", "random_method", "random_position",
    "random_avg_rank", "n_better_than_random", "n_worse_than_random", "n_indistinguishable_from_random",
    "flag", "separation_note", "retest_n", "retest_spearman", "retest_icc", "retest_icc_kind",
    "retest_reason", "mean_kendall_tau", "top_two", "top_gap", "top_gap_sd", "n_for_80_power",
    "sample_size_reason",
]  # fmt: skip
AGREEMENT_COLUMNS = ["dataset", "model", "metric_a", "metric_b", "n_methods", "kendall_tau", "p_value", "reason"]
UNINFORMATIVE = "uninformative here"
NO_RETEST = "no value_retest column: the scores were not recomputed with a second seed"
DETERMINISTIC = "no retest values (a deterministic metric, or not recomputed)"


def metric_agreement(ranks: pd.DataFrame) -> pd.DataFrame:
    """Kendall τ between the method rankings (average ranks on each metric's common samples) of
    every pair of metrics on the same (dataset, model), over the methods both ranked."""
    from scipy.stats import kendalltau

    rows = []
    for (dataset, model), part in ranks.groupby(["dataset", "model"], sort=True):
        by_metric = {m: g.set_index("method")["avg_rank"].dropna() for m, g in part.groupby("metric", sort=True)}
        for a, b in itertools.combinations(sorted(by_metric), 2):
            shared = by_metric[a].index.intersection(by_metric[b].index)
            tau = p = math.nan
            reason = None
            if len(shared) < 3:
                reason = f"only {len(shared)} methods ranked by both metrics; need 3"
            elif by_metric[a][shared].nunique() < 2 or by_metric[b][shared].nunique() < 2:
                reason = "one metric ranks every shared method the same"
            else:
                res = kendalltau(by_metric[a][shared], by_metric[b][shared])
                tau, p = float(res.statistic), float(res.pvalue)
            rows.append(dict(dataset=dataset, model=model, metric_a=a, metric_b=b, n_methods=len(shared), kendall_tau=tau, p_value=p, reason=reason))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _retest(family: Family, retest: Family | None) -> dict:
    """Spearman of the two method rankings and ICC(2,1) of per-sample scores, value vs retest."""
    from scipy.stats import spearmanr

    out = dict(retest_n=0, retest_spearman=math.nan, retest_icc=math.nan, retest_icc_kind="ICC(2,1)", retest_reason=None)
    if retest is None:
        out["retest_reason"] = NO_RETEST
        return out
    both = np.isfinite(family.values) & np.isfinite(retest.values)
    out["retest_n"] = int(both.sum())
    if not both.any():
        out["retest_reason"] = DETERMINISTIC
        return out
    reasons = []
    methods = both.any(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        first = np.where(both, family.values, 0.0).sum(axis=0)[methods] / both.sum(axis=0)[methods]
        second = np.where(both, retest.values, 0.0).sum(axis=0)[methods] / both.sum(axis=0)[methods]
    if methods.sum() < 3:
        reasons.append("fewer than 3 methods have retest values; no ranking correlation")
    elif np.ptp(first) == 0 or np.ptp(second) == 0:
        reasons.append("a seed ranks every method the same; no ranking correlation")
    else:
        out["retest_spearman"] = float(spearmanr(first, second).statistic)
    pairs = np.c_[family.values[both], retest.values[both]]
    if pairs.shape[0] < MIN_SHARED:
        reasons.append("fewer than 3 (method, sample) scores have a retest; no ICC")
    elif np.ptp(pairs) == 0:
        reasons.append("every score and retest is equal; ICC undefined")
    else:
        out["retest_icc"] = icc(pairs, "2,1")
    out["retest_reason"] = "; ".join(reasons) or None
    return out


def _sample_size(family: Family, ranks: pd.DataFrame) -> dict:
    """n resolving the gap between the two best methods (by average rank, else mean) at 80 % power
    (two-sided paired t-test at α = 0.05, statsmodels), from their paired differences' spread."""
    from statsmodels.stats.power import TTestPower

    out = dict(top_two=None, top_gap=math.nan, top_gap_sd=math.nan, n_for_80_power=math.nan, sample_size_reason=None)
    order = ranks["avg_rank"] if ranks["avg_rank"].notna().sum() >= 2 else -ranks["mean_own"] * (-1 if family.direction == "lower" else 1)
    order = order.dropna().sort_values(kind="stable")
    if len(order) < 2:
        out["sample_size_reason"] = "fewer than 2 methods ranked"
        return out
    a, b = (ranks.loc[i, "method"] for i in order.index[:2])
    out["top_two"] = f"{a} vs {b}"
    x = family.values[:, [family.methods.index(a), family.methods.index(b)]]
    d = np.diff(x[np.isfinite(x).all(axis=1)], axis=1)[:, 0]
    if d.size < MIN_SHARED:
        out["sample_size_reason"] = FEW_SHARED
        return out
    gap, sd = float(abs(d.mean())), float(d.std(ddof=1))
    out["top_gap"], out["top_gap_sd"] = gap, sd
    if gap == 0:
        out["sample_size_reason"] = "the two best methods do not differ on average; no n resolves a zero gap"
    elif sd == 0:
        out["sample_size_reason"] = "the paired differences do not vary; any n ≥ 2 resolves the gap"
    else:
        # Small n by direct search (statsmodels' root finder fails for very large effects), the
        # root finder beyond.
        power, effect = TTestPower(), gap / sd
        small = np.arange(2, 101)
        reached = np.flatnonzero(power.power(effect_size=effect, nobs=small, alpha=ALPHA) >= 0.8)
        if reached.size:
            out["n_for_80_power"] = float(small[reached[0]])
            return out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = power.solve_power(effect_size=effect, alpha=ALPHA, power=0.8, alternative="two-sided")
        if np.isfinite(n):
            out["n_for_80_power"] = float(math.ceil(n))
        else:
            out["sample_size_reason"] = f"the power solver did not converge (effect size {gap / sd:.3g})"
    return out


def metric_quality(scores: pd.DataFrame | pa.Table, comparisons: pd.DataFrame, ranks: pd.DataFrame, agreement: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (dataset, model, metric): separation from the random control (flagged
    ``uninformative here`` when the control ranks in the top half), test–retest reliability from
    the ``value_retest`` column, mean Kendall τ with the other metrics, and the n needed to
    resolve the top two methods."""
    df = _frame(scores) if not isinstance(scores, pa.Table) else scores.select([c for c in [*COLUMNS, "value_retest"] if c in scores.column_names]).to_pandas()
    has_retest = "value_retest" in df.columns
    retests = {f.key: f for f in families(df, value="value_retest")} if has_retest else {}
    if agreement is None:
        agreement = metric_agreement(ranks)
    rank_groups = dict(tuple(ranks.groupby(FAMILY, sort=False)))
    rows = [_quality_row(family, retests.get(family.key), rank_groups[family.key], has_retest) for family in families(df)]
    quality = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    return _with_kendall(quality, agreement)


def _quality_row(family: Family, retest: Family | None, family_ranks: pd.DataFrame, has_retest: bool = True) -> dict:
    """A family's metric-quality row, all but ``mean_kendall_tau`` (which needs every metric)."""
    fr = family_ranks.reset_index(drop=True)
    row = dict(zip(FAMILY, family.key), direction=family.direction, k_methods=int(fr["k_methods"].iloc[0]), n_common=int(fr["n_common"].iloc[0]))
    row.update(_separation(family, fr))
    row.update(_retest(family, retest if has_retest else None))
    row["mean_kendall_tau"] = math.nan
    row.update(_sample_size(family, fr))
    return row


def _with_kendall(quality: pd.DataFrame, agreement: pd.DataFrame) -> pd.DataFrame:
    """Fill ``mean_kendall_tau``: the mean τ of a metric with every other on its (dataset, model)."""
    taus = []
    for row in quality.itertuples(index=False):
        sel = agreement[(agreement["dataset"] == row.dataset) & (agreement["model"] == row.model) & ((agreement["metric_a"] == row.metric) | (agreement["metric_b"] == row.metric))]["kendall_tau"]
        taus.append(float(sel.mean()) if sel.notna().any() else math.nan)
    quality["mean_kendall_tau"] = taus
    return quality


def _separation(family: Family, fr: pd.DataFrame) -> dict:
    out = dict(random_method=family.random, random_position=math.nan, random_avg_rank=math.nan, n_better_than_random=0, n_worse_than_random=0, n_indistinguishable_from_random=0, flag=None, separation_note=None)
    if family.random is None:
        out["separation_note"] = "no random control (fn random_attribution) was scored here"
        return out
    verdicts = fr.set_index("method")["vs_random"]
    out["n_better_than_random"] = int((verdicts == "better").sum())
    out["n_worse_than_random"] = int((verdicts == "worse").sum())
    out["n_indistinguishable_from_random"] = int((verdicts == "not distinguishable").sum())
    control = fr[fr["method"] == family.random].iloc[0]
    others = int(control["k_methods"]) - 1
    differ = out["n_better_than_random"] + out["n_worse_than_random"]
    if not np.isfinite(control["avg_rank"]):
        out["separation_note"] = f"{differ} of {others} methods differ significantly from random; no common samples to rank it"
        return out
    position, k = int(control["position"]), int(control["k_methods"])
    out["random_position"], out["random_avg_rank"] = position, float(control["avg_rank"])
    top_half = position <= k / 2
    out["flag"] = UNINFORMATIVE if top_half else None
    out["separation_note"] = (
        f"random control ranks {position} of {k} (average rank {control['avg_rank']:.2f} on {int(control['n_common'])} samples); "
        f"{out['n_better_than_random']} methods better, {out['n_worse_than_random']} worse, "
        f"{out['n_indistinguishable_from_random']} not distinguishable (Wilcoxon, Holm-corrected)"
    )
    return out


def read_scores(path) -> pa.Table:
    """The columns of a scores file the statistics read (no curves), `value_retest` if present."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    return pq.read_table(path, columns=[c for c in [*COLUMNS, "value_retest"] if c in names])


class FamilyIndex:
    """Which row groups of a scores file hold which (dataset, model, metric), from the row-group
    statistics: `aggregate` writes one row group per (dataset, model, method, metric), so one
    family's rows are read without touching the others. A row group holding several families
    (a file written otherwise) is read with every family it may hold and filtered."""

    KEY = ("dataset", "model", "metric")

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(path)
        names = self.file.schema_arrow.names
        self.columns = [c for c in [*COLUMNS, "value_retest"] if c in names]
        meta = self.file.metadata
        position = {name: meta.schema.to_arrow_schema().get_field_index(name) for name in self.KEY}
        self.groups: dict[tuple[str, str, str], list[int]] = {}
        self.mixed: list[int] = []
        for i in range(meta.num_row_groups):
            key = []
            for name in self.KEY:
                stats = meta.row_group(i).column(position[name]).statistics
                if stats is None or not stats.has_min_max or stats.min != stats.max:
                    break
                key.append(str(stats.min))
            if len(key) == len(self.KEY) and meta.row_group(i).num_rows:
                self.groups.setdefault(tuple(key), []).append(i)
            elif meta.row_group(i).num_rows:
                self.mixed.append(i)
        for i in self.mixed:
            keys = self.file.read_row_group(i, columns=list(self.KEY)).group_by(list(self.KEY)).aggregate([])
            for key in zip(*(keys[name].to_pylist() for name in self.KEY)):
                self.groups.setdefault(tuple(map(str, key)), [])

    def keys(self) -> list[tuple[str, str, str]]:
        return sorted(self.groups)

    def read(self, key: tuple[str, str, str]) -> pd.DataFrame:
        import pyarrow.compute as pc

        mixed = [i for i in self.mixed]
        table = self.file.read_row_groups(sorted(self.groups[key] + mixed), columns=self.columns)
        if mixed:
            keep = None
            for name, value in zip(self.KEY, key):
                cond = pc.equal(table[name], value)
                keep = cond if keep is None else pc.and_(keep, cond)
            table = table.filter(keep)
        return table.to_pandas()


def stream_evidence(scores_path, draws: int = BOOTSTRAP) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(comparisons, ranks, metric_quality, metric_agreement) of a scores file, one family in
    memory at a time. The same tables as `evidence` + `metric_agreement` + `metric_quality` on the
    whole table: each family's statistics read only that family's rows (samples and methods are
    ordered by name, bootstrap generators seeded by the family's name)."""
    comparisons, ranks, quality = [], [], []
    index = FamilyIndex(scores_path)
    for key in index.keys():
        df = index.read(key)
        has_retest = "value_retest" in df.columns
        retests = {f.key: f for f in families(df, value="value_retest")} if has_retest else {}
        for family in families(df):
            pairs = compare_family(family, draws)
            fr = rank_family(family, pairs, draws)
            comparisons.append(pairs)
            ranks.append(fr)
            quality.append(_quality_row(family, retests.get(family.key), fr, has_retest))
    comp = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame(columns=COMPARISON_COLUMNS)
    rank = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame(columns=RANK_COLUMNS)
    agreement = metric_agreement(rank)
    qual = _with_kendall(pd.DataFrame(quality, columns=QUALITY_COLUMNS), agreement)
    return comp, rank, qual, agreement


def write_evidence(scores_path, comparisons_out, ranks_out, quality_out, agreement_out, draws: int = BOOTSTRAP) -> None:
    """comparisons, ranks, metric_quality and metric_agreement Parquet files from a scores file,
    streamed one (dataset, model, metric) at a time (`stream_evidence`)."""
    from attrflow.report.schema import COMPARISONS, METRIC_AGREEMENT, METRIC_QUALITY, RANKS, write_table

    comparisons, ranks, quality, agreement = stream_evidence(scores_path, draws)
    for frame, schema, out in [
        (comparisons, COMPARISONS, comparisons_out),
        (ranks, RANKS, ranks_out),
        (quality, METRIC_QUALITY, quality_out),
        (agreement, METRIC_AGREEMENT, agreement_out),
    ]:
        write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), out)
