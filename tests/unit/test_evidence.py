"""Paired statistics against published and hand-computed cases; bad input never crashes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from attrflow.report.evidence import (
    ALL_TIES,
    FEW_SHARED,
    cd_groups,
    critical_difference,
    evidence,
    holm,
    icc,
    nemenyi_q,
)

# Demšar (2006), JMLR 7, Table 6: AUC of C4.5 with/without curtailing (m) and confidence (cf)
# tuning on 14 data sets (rounded to 3 decimals in print); his average ranks 3.143, 2.000, 2.893, 1.964, χ²_F = 9.28, CD = 1.25.
DEMSAR = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.97501, 0.975],  # printed 0.975 twice; his ranks (4, 1, 2, 3) break the tie
        [0.957, 0.978, 0.946, 0.970],
    ]
)
DEMSAR_METHODS = ["c45", "c45_cf", "c45_m", "c45_m_cf"]  # sorted names: columns 0, 2, 1, 3


def scores_from(matrix, methods, *, metric="x", direction="higher", random=None, model="m", ids=None):
    """A long scores table (the SCORES columns the statistics read) from a samples × methods matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    ids = ids or [f"s{i}" for i in range(matrix.shape[0])]
    rows = []
    for j, method in enumerate(methods):
        for i, sid in enumerate(ids):
            v = matrix[i, j]
            rows.append(
                dict(
                    dataset="d", model=model, method=method, metric=metric, sample_id=sid, target=0,
                    value=v, status="ok" if np.isfinite(v) else "nan", direction=direction,
                    method_fn="random_attribution" if method == random else "f",
                )
            )
    return pd.DataFrame(rows)


def test_wilcoxon_on_darwins_zea_mays():
    # Fisher (1935) / Darwin: cross- minus self-fertilised heights (eighths of an inch), n = 15.
    # Exact two-sided p = 0.041259765625 (scipy.stats.wilcoxon documentation); checked here also
    # by enumerating all 2^15 sign assignments.
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w_minus = ranks[d < 0].sum()
    assert w_minus == 24
    sums = np.array([sum(c) for r in range(16) for c in itertools.combinations(range(1, 16), r)])
    p_enumerated = 2 * np.mean(sums <= w_minus)
    assert p_enumerated == pytest.approx(0.041259765625)

    zero = np.zeros(15)
    comp, _ = evidence(scores_from(np.c_[d, zero], ["a", "b"]))
    row = comp.iloc[0]
    assert row["n_shared"] == 15 and row["wilcoxon_statistic"] == 24
    assert row["p_value"] == pytest.approx(p_enumerated)
    assert row["p_holm"] == pytest.approx(p_enumerated)  # a family of one pair
    assert row["significant"] and row["better"] == "a" and row["verdict"] == "a better"
    assert row["mean_diff"] == pytest.approx(d.mean())
    assert row["diff_ci95_low"] < d.mean() < row["diff_ci95_high"]


def test_holm_on_a_known_vector():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06) = 0.06
    got = holm(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(got[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[4])


def test_holm_agrees_with_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(7)
    for m in (1, 2, 7, 40):
        p = rng.uniform(0, 0.2, size=m) ** 2
        p[rng.integers(m)] = p[0]  # a tie
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_nemenyi_q_matches_demsar_table_5a():
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    np.testing.assert_allclose([nemenyi_q(k) for k in range(2, 11)], table, atol=1.5e-3)


def test_friedman_and_nemenyi_on_demsars_example():
    table = scores_from(DEMSAR, ["c45", "c45_m", "c45_cf", "c45_m_cf"])
    _, ranks = evidence(table)
    ranks = ranks.set_index("method")
    np.testing.assert_allclose(ranks.loc[DEMSAR_METHODS, "avg_rank"], [3.143, 2.893, 2.000, 1.964], atol=1e-3)
    row = ranks.iloc[0]
    assert row["n_common"] == 14 and row["k_methods"] == 4
    # Demšar's χ²_F = 12N/(k(k+1)) [Σ R_j² − k(k+1)²/4] = 9.28 has no tie correction; scipy divides
    # by C = 1 − Σ(t³ − t)/(N k (k² − 1)), ties: one row of 4 (60) and three pairs (3 · 6) → 78/840.
    r = ranks["avg_rank"].to_numpy()
    chi2_demsar = 12 * 14 / 20 * ((r**2).sum() - 4 * 25 / 4)
    assert chi2_demsar == pytest.approx(9.28, abs=0.01)
    assert row["friedman_statistic"] == pytest.approx(chi2_demsar / (1 - 78 / 840))
    assert row["friedman_p"] < 0.05
    assert row["critical_difference"] == pytest.approx(1.25, abs=0.005)
    assert critical_difference(4, 14) == pytest.approx(2.569 * math.sqrt(20 / 84), rel=1e-3)
    # Demšar: at α = 0.05 the Nemenyi test separates nothing (3.143 − 1.964 = 1.18 < 1.25); at
    # α = 0.10 (CD = 1.12) C4.5+m+cf is better than C4.5, and the rest stay connected.
    assert set(ranks["cd_group"]) == {"a"}
    cd10 = critical_difference(4, 14, alpha=0.10)
    assert cd10 == pytest.approx(1.12, abs=0.005)
    groups = dict(zip(ranks.index, cd_groups(r, cd10)))
    assert groups == {"c45": "b", "c45_cf": "ab", "c45_m": "a", "c45_m_cf": "a"}
    lo, hi = ranks.loc["c45", ["avg_rank_ci95_low", "avg_rank_ci95_high"]]
    assert lo <= 3.143 <= hi


def test_cd_groups_by_hand():
    # ranks 1, 1.5, 3, 3.2 with CD 1: {1, 1.5} and {3, 3.2} connected, nothing across
    assert cd_groups(np.array([3.2, 1.0, 3.0, 1.5]), 1.0) == ["b", "a", "b", "a"]
    assert cd_groups(np.array([1.0, 1.8, 2.6]), 1.0) == ["a", "ab", "b"]


def test_icc_on_shrout_and_fleiss_table_2():
    # Shrout & Fleiss (1979), Psychological Bulletin 86(2), Table 2: 6 targets × 4 judges;
    # their Table 4 gives ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc(ratings, "1,1") == pytest.approx(0.17, abs=0.005)
    assert icc(ratings, "2,1") == pytest.approx(0.29, abs=0.005)
    assert icc(ratings, "3,1") == pytest.approx(0.71, abs=0.005)
    with pytest.raises(ValueError, match="unknown ICC"):
        icc(ratings, "4,1")


def test_lower_is_better_flips_the_verdict():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    comp, ranks = evidence(scores_from(np.c_[a, a + 1.0], ["a", "b"], direction="lower"))
    assert comp.iloc[0]["better"] == "a"
    assert ranks.set_index("method").loc["a", "avg_rank"] == 1.0


def test_comparisons_use_only_shared_samples():
    # b is scored on the first 8 samples only, where it beats a; a wins on the 12 others.
    a = np.r_[np.zeros(8), np.full(12, 10.0)]
    b = np.r_[np.ones(8), np.full(12, np.nan)]
    c = np.arange(20.0)
    comp, ranks = evidence(scores_from(np.c_[a, b, c], ["a", "b", "c"]))
    ab = comp[(comp["method_a"] == "a") & (comp["method_b"] == "b")].iloc[0]
    assert ab["n_shared"] == 8 and ab["n_a"] == 20 and ab["n_b"] == 8
    assert ab["mean_diff"] == -1.0 and ab["better"] == "b"
    ranks = ranks.set_index("method")
    assert (ranks["n_common"] == 8).all() and ranks.loc["a", "n_own"] == 20
    assert ranks.loc["b", "avg_rank"] < ranks.loc["a", "avg_rank"]


def test_versus_random_and_best_mark():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(40, 3))
    matrix = noise + np.array([3.0, 0.0, 0.0])  # good is clearly better; random and dull alike
    comp, ranks = evidence(scores_from(matrix, ["good", "rand", "dull"], random="rand"))
    ranks = ranks.set_index("method")
    assert ranks.loc["rand", "vs_random"] == "control"
    assert ranks.loc["good", "vs_random"] == "better"
    assert ranks.loc["dull", "vs_random"] == "not distinguishable"
    assert ranks.loc["good", "best_vs_runner_up"] == "significant"
    assert ranks.loc["good", "position"] == 1


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (np.array([[1.0, 2.0], [3.0, 1.0], [np.nan, np.nan]]), FEW_SHARED),
        (np.full((6, 2), 0.5), ALL_TIES),
        (np.full((6, 2), np.nan), "no sample has a finite score from both methods"),
    ],
)
def test_bad_input_gives_a_reason_not_a_crash(matrix, reason):
    comp, ranks = evidence(scores_from(matrix, ["a", "b"]))
    row = comp.iloc[0]
    assert row["reason"] == reason and row["verdict"] == "no test"
    assert math.isnan(row["p_value"]) and math.isnan(row["p_holm"]) and not row["significant"]
    assert ranks["reason"].notna().all() and ranks["friedman_p"].isna().all()


def test_three_methods_all_tied_have_no_friedman_p():
    _, ranks = evidence(scores_from(np.ones((10, 3)), ["a", "b", "c"]))
    assert (ranks["reason"] == ALL_TIES).all() and ranks["friedman_p"].isna().all()


def test_same_scores_same_numbers():
    rng = np.random.default_rng(2)
    table = scores_from(rng.normal(size=(25, 4)), list("abcd"))
    first, second = evidence(table), evidence(table.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


def _quality(table):
    from attrflow.report.evidence import metric_quality

    comp, ranks = evidence(table)
    return metric_quality(table, comp, ranks).set_index("metric")


def test_uninformative_metric_is_flagged_and_perfect_one_is_not():
    rng = np.random.default_rng(4)
    n, methods = 30, ["a", "b", "c", "rand"]
    quality = np.array([3.0, 2.0, 1.0, 0.0])  # the truth: a > b > c > random
    perfect = quality + 0.1 * rng.normal(size=(n, 4))
    # a metric that rewards whatever the random map does (e.g. through the subset size)
    inverted = -quality + 0.1 * rng.normal(size=(n, 4))
    table = pd.concat(
        [
            scores_from(perfect, methods, metric="perfect", random="rand"),
            scores_from(inverted, methods, metric="inverted", random="rand"),
        ]
    )
    q = _quality(table)
    assert q.loc["inverted", "flag"] == "uninformative here"
    assert q.loc["inverted", "random_position"] == 1 and q.loc["inverted", "n_worse_than_random"] == 3
    assert "random control ranks 1 of 4" in q.loc["inverted", "separation_note"]
    assert pd.isna(q.loc["perfect", "flag"]) and q.loc["perfect", "n_better_than_random"] == 3
    assert q.loc["perfect", "random_position"] == 4
    # the two metrics rank the methods in opposite orders
    assert q.loc["perfect", "mean_kendall_tau"] == pytest.approx(-1.0)
    assert q.loc["perfect", "retest_reason"].startswith("no value_retest column")


def test_retest_reliability():
    rng = np.random.default_rng(5)
    base = np.array([3.0, 2.0, 1.0, 0.0]) + rng.normal(size=(20, 4))
    table = scores_from(base, list("abcd"))
    table["value_retest"] = table["value"] + 0.01 * rng.normal(size=len(table))
    q = _quality(table).iloc[0]
    assert q["retest_spearman"] == pytest.approx(1.0) and q["retest_icc"] > 0.99 and q["retest_n"] == 80
    assert q["retest_icc_kind"] == "ICC(2,1)"
    table["value_retest"] = np.nan  # a deterministic metric: nothing to retest
    q = _quality(table).iloc[0]
    assert math.isnan(q["retest_icc"]) and "deterministic" in q["retest_reason"]


def test_sample_size_for_a_half_sd_gap():
    # paired differences with mean 0.5 and sd 1 exactly: d_z = 0.5 needs n = 34 at 80 % power
    # (two-sided α = 0.05; Cohen 1988's tables, G*Power)
    z = np.array([-1.0, 1.0] * 10)
    z = z / z.std(ddof=1)
    a = np.zeros(20)
    table = scores_from(np.c_[a + 0.5 + z, a, a - 5.0], ["a", "b", "c"])
    q = _quality(table).iloc[0]
    assert q["top_two"] == "a vs b"
    assert q["top_gap"] == pytest.approx(0.5) and q["top_gap_sd"] == pytest.approx(1.0)
    assert q["n_for_80_power"] == 34


def test_files_have_their_schemas_with_and_without_retest(tmp_path):
    import pyarrow.parquet as pq

    from attrflow.report.evidence import write_evidence
    from attrflow.report.schema import COMPARISONS, METRIC_AGREEMENT, METRIC_QUALITY, RANKS

    rng = np.random.default_rng(6)
    table = pd.concat(
        [scores_from(rng.normal(size=(10, 3)), ["a", "b", "rand"], metric=m, random="rand") for m in ("x", "y")]
    )
    for retest in (False, True):
        if retest:
            table["value_retest"] = table["value"] + rng.normal(size=len(table))
        table.to_parquet(tmp_path / "scores.parquet")
        outs = [tmp_path / f"{name}.parquet" for name in ("c", "r", "q", "g")]
        write_evidence(tmp_path / "scores.parquet", *outs)
        for out, schema in zip(outs, [COMPARISONS, RANKS, METRIC_QUALITY, METRIC_AGREEMENT]):
            assert pq.read_schema(out).equals(schema, check_metadata=False)
        q = pd.read_parquet(outs[2])
        assert len(q) == 2 and q["retest_icc"].notna().all() == retest


def test_vectorised_wilcoxon_equals_one_call_per_pair():
    """Non-shared samples written as zero differences give the p-value of the shared ones alone."""
    from scipy.stats import wilcoxon

    from attrflow.report.evidence import wilcoxon_columns

    rng = np.random.default_rng(8)
    for n in (20, 120):  # exact and normal-approximation regimes
        diffs = rng.normal(0.2, 1.0, size=(n, 6))
        diffs[rng.random(size=diffs.shape) < 0.3] = 0.0  # not shared
        diffs[:, 5] = np.round(diffs[:, 5], 1)  # ties: the approximation even for small n
        statistic, p, reasons = wilcoxon_columns(diffs)
        for col in range(6):
            d = diffs[diffs[:, col] != 0, col]
            method = "exact" if d.size <= 50 and np.unique(np.abs(d)).size == d.size else "asymptotic"
            ref = wilcoxon(d, method=method)
            assert statistic[col] == ref.statistic and p[col] == pytest.approx(ref.pvalue, rel=1e-12)
            assert reasons[col] is None
            if method == "exact":
                assert p[col] == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)  # scipy's own choice agrees


def test_an_unscored_method_does_not_empty_the_common_set():
    # "skipped" (e.g. X-Gradient refused on a network with biases): no score at all
    rng = np.random.default_rng(9)
    matrix = np.c_[rng.normal(size=15) + 5, rng.normal(size=15), rng.normal(size=15), np.full(15, np.nan)]
    comp, ranks = evidence(scores_from(matrix, ["good", "rand", "dull", "skipped"], random="rand"))
    ranks = ranks.set_index("method")
    assert (ranks["n_common"] == 15).all() and (ranks["k_methods"] == 3).all()
    assert ranks.loc["skipped", "reason"].startswith("not scored") and np.isnan(ranks.loc["skipped", "avg_rank"])
    assert ranks.loc["good", "avg_rank"] == 1.0 and ranks.loc["good", "vs_random"] == "better"
    assert ranks.loc["dull", "vs_random"] == "not distinguishable"
    assert ranks.loc["skipped", "vs_random"] == "no test" and pd.isna(ranks.loc["good", "reason"])


def test_verdicts_survive_a_tied_pair_in_the_family():
    # one pair with identical scores (a reason) must not turn the others' verdicts into "no test"
    rng = np.random.default_rng(10)
    base = rng.normal(size=12)
    matrix = np.c_[base + 2, base + 2, base]
    comp, ranks = evidence(scores_from(matrix, ["a", "b", "rand"], random="rand"))
    assert comp.set_index(["method_a", "method_b"]).loc[("a", "b"), "reason"] == ALL_TIES
    ranks = ranks.set_index("method")
    assert ranks.loc["a", "vs_random"] == "better" and ranks.loc["b", "vs_random"] == "better"
