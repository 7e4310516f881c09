"""The baseline-bias probe report on a hand-made scores table with hand-computed numbers."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from attrflow.report.probes import BIAS, PROBES, baseline_family, bias_table, clean_vs_corrupted, write_probe_report

METHODS = {
    "ig_black": {"fn": "integrated_gradients", "baseline": "black", "steps": 8},
    "ig_noise": {"fn": "integrated_gradients", "baseline": "gaussian", "steps": 8},
    "uni": {"fn": "uni"},
    "grad": {"fn": "gradient"},
}
PROBE_SETS = {
    "sh_b3": {"of": "sh", "corruption": "brightness", "severity": 3},
    "sh_n2": {"of": "sh", "corruption": "gaussian_noise", "severity": 2},
}
# (dataset, method, metric) -> values of samples s0, s1[, s2]; None = a nan-status row.
VALUES = {
    ("sh", "ig_black", "ins"): [0.8, 0.6, 0.1],  # s2 is only scored clean: unpaired, left out
    ("sh", "ig_noise", "ins"): [0.5, 0.7],
    ("sh", "uni", "ins"): [0.9, 0.7],
    ("sh", "grad", "ins"): [0.4, 0.4],
    ("sh", "ig_black", "del"): [0.2, 0.4],
    ("sh", "uni", "del"): [0.1, 0.1],
    ("sh_b3", "ig_black", "ins"): [0.3, 0.1],
    ("sh_b3", "ig_noise", "ins"): [0.5, 0.5],
    ("sh_b3", "uni", "ins"): [0.8, 0.6],
    ("sh_b3", "grad", "ins"): [0.3, None],  # s1 failed on the corrupted image: pair dropped
    ("sh_b3", "ig_black", "del"): [0.6, 0.6],
    ("sh_b3", "uni", "del"): [0.2, 0.2],
    ("sh_n2", "ig_black", "ins"): [0.6, 0.6],
    ("sh_n2", "ig_noise", "ins"): [0.2, 0.2],
    ("sh_n2", "uni", "ins"): [0.75, 0.65],
    ("other", "uni", "ins"): [0.0, 0.0],  # a dataset no probe names
}
DIRECTIONS = {"ins": "higher", "del": "lower"}


def _scores() -> pd.DataFrame:
    rows = []
    for (dataset, method, metric), values in VALUES.items():
        for i, value in enumerate(values):
            rows.append(
                {
                    "dataset": dataset,
                    "model": "m",
                    "method": method,
                    "metric": metric,
                    "sample_id": f"s{i}",
                    "value": math.nan if value is None else value,
                    "status": "nan" if value is None else "ok",
                    "direction": DIRECTIONS[metric],
                }
            )
    return pd.DataFrame(rows)


def _rows(frame: pd.DataFrame, columns: list[str]) -> dict[tuple, tuple]:
    return {tuple(r[:3]): tuple(r[3:]) for r in frame[columns].itertuples(index=False)}


def test_clean_vs_corrupted_pairs_samples_and_orients_the_loss():
    comparison = clean_vs_corrupted(_scores(), PROBE_SETS)
    got = _rows(comparison, ["dataset", "method", "metric", "n", "clean_mean", "corrupted_mean", "drop", "loss"])
    expected = {
        ("sh_b3", "grad", "ins"): (1, 0.4, 0.3, 0.1, 0.1),
        ("sh_b3", "ig_black", "del"): (2, 0.3, 0.6, -0.3, 0.3),  # lower is better: a rise is a loss
        ("sh_b3", "ig_black", "ins"): (2, 0.7, 0.2, 0.5, 0.5),
        ("sh_b3", "ig_noise", "ins"): (2, 0.6, 0.5, 0.1, 0.1),
        ("sh_b3", "uni", "del"): (2, 0.1, 0.2, -0.1, 0.1),
        ("sh_b3", "uni", "ins"): (2, 0.8, 0.7, 0.1, 0.1),
        ("sh_n2", "ig_black", "ins"): (2, 0.7, 0.6, 0.1, 0.1),
        ("sh_n2", "ig_noise", "ins"): (2, 0.6, 0.2, 0.4, 0.4),
        ("sh_n2", "uni", "ins"): (2, 0.8, 0.7, 0.1, 0.1),
    }
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key][0] == values[0], key
        assert got[key][1:] == pytest.approx(values[1:], abs=1e-12), key
    b3 = comparison[comparison["dataset"] == "sh_b3"].iloc[0]
    assert (b3["clean_dataset"], b3["corruption"], b3["family"], b3["severity"]) == ("sh", "brightness", "digital", 3)
    assert set(comparison.loc[comparison["dataset"] == "sh_n2", "family"]) == {"noise"}


def test_bias_table_sets_each_static_baseline_against_uni():
    bias = bias_table(clean_vs_corrupted(_scores(), PROBE_SETS), METHODS)
    got = _rows(
        bias.assign(key=bias["dataset"] + "/" + bias["metric"]),
        ["method", "uni_method", "key", "matched", "method_loss", "uni_loss", "clean_gap", "corrupted_gap", "excess_loss"],
    )
    expected = {
        ("ig_black", "uni", "sh_b3/ins"): (True, 0.5, 0.1, 0.1, 0.5, 0.4),
        ("ig_black", "uni", "sh_b3/del"): (True, 0.3, 0.1, 0.2, 0.4, 0.2),
        ("ig_black", "uni", "sh_n2/ins"): (False, 0.1, 0.1, 0.1, 0.1, 0.0),
        ("ig_noise", "uni", "sh_b3/ins"): (False, 0.1, 0.1, 0.2, 0.2, 0.0),
        ("ig_noise", "uni", "sh_n2/ins"): (True, 0.4, 0.1, 0.2, 0.5, 0.3),
    }
    assert got.keys() == expected.keys()  # grad has no static baseline; uni is not set against itself
    for key, (matched, *numbers) in expected.items():
        assert got[key][0] is matched or got[key][0] == matched, key
        assert got[key][1:] == pytest.approx(numbers, abs=1e-12), key
    assert set(bias.loc[bias["method"] == "ig_black", "baseline_family"]) == {"digital"}
    assert set(bias.loc[bias["method"] == "ig_noise", "baseline_family"]) == {"noise"}


def test_without_uni_or_pairs_the_tables_are_empty_but_typed():
    no_uni = {k: v for k, v in METHODS.items() if k != "uni"}
    assert bias_table(clean_vs_corrupted(_scores(), PROBE_SETS), no_uni).empty
    unpaired = {"x_b1": {"of": "absent", "corruption": "saturation", "severity": 1}}
    assert list(clean_vs_corrupted(_scores(), unpaired).columns) == PROBES.names


@pytest.mark.parametrize(
    ("entry", "family"),
    [
        ({"fn": "integrated_gradients"}, "digital"),  # the registered default baseline is black
        ({"fn": "integrated_gradients", "baseline": "blur"}, "blur"),
        ({"fn": "integrated_gradients", "baseline": "uniform"}, "noise"),
        ({"fn": "integrated_gradients", "baseline": "white"}, None),
        ({"fn": "blur_ig"}, "blur"),
        ({"fn": "uni"}, None),
        ({"fn": "gradient"}, None),
    ],
)
def test_baseline_family_of_method_entries(entry, family):
    assert baseline_family(entry) == family


def test_write_probe_report_files(tmp_path):
    scores_path = tmp_path / "scores.parquet"
    _scores().to_parquet(scores_path)
    paths = {name: tmp_path / "reports" / name for name in ("probes.md", "probes.parquet", "probes_bias.parquet")}
    write_probe_report(scores_path, PROBE_SETS, METHODS, *paths.values())
    assert pq.read_schema(paths["probes.parquet"]).names == PROBES.names
    assert pq.read_table(paths["probes_bias.parquet"]).schema.equals(BIAS, check_metadata=False)
    assert pq.read_table(paths["probes.parquet"]).num_rows == 9
    markdown = paths["probes.md"].read_text()
    assert "| ig_black | sh_b3 | brightness | 3 | 2 | 0.7 | 0.2 | 0.5 |" in markdown
    assert "| ig_noise | noise | uni | m | ins | gaussian_noise | 2 | 0.4 | 0.1 | 0.3 |" in markdown
    assert "| ig_black | uni | m | ins | 0.4 | 0 |" in markdown  # matched vs control means
