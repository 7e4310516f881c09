"""The baseline-bias probe report (UNI (Choi et al., 2024, Sec. 3.2)): scores on clean against corrupted inputs.

UNI argues that each static IG baseline is blind to one kind of change: a black baseline to
colour and brightness (the digital corruptions), a blurred baseline to texture (blur), a noised
baseline to high frequencies (noise); its Figures 3–5 show this on ImageNet-C images, only
qualitatively. This report is the quantitative counterpart. For every selected `corrupted`
dataset whose clean base is selected too, it pairs each sample's score on the clean image with
its score on the corrupted one (same sample id, both with status ok) and reports per (model,
method, metric, corruption, severity):

* the clean and corrupted means over the paired samples and the drop, clean − corrupted;
* the loss: the drop oriented by the metric's direction, so that positive always means the
  method scores worse on corrupted inputs.

The bias table then sets each static-baseline method against each `uni` method on the same
pairs: ``excess_loss = loss(static) − loss(uni)``, which is also how much UNI's lead grows from
clean to corrupted inputs (``corrupted_gap − clean_gap``, gaps oriented so positive = UNI
better). UNI's claim predicts a positive excess on the family the baseline is biased towards
(``matched``); the other families are the control.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from attrflow.data.corruption_catalog import FAMILIES, canonical_corruption, family_of
from attrflow.report.schema import write_table

# Which corruption family a static baseline is biased towards (UNI (Choi et al., 2024, Sec. 3.2)).
IG_BASELINE_FAMILIES = {"black": "digital", "blur": "blur", "gaussian": "noise", "uniform": "noise"}
UNI_FN = "uni"

PROBES = pa.schema(
    [
        ("dataset", pa.string()),  # the corrupted dataset
        ("clean_dataset", pa.string()),
        ("corruption", pa.string()),
        ("family", pa.string()),
        ("severity", pa.int64()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),
        ("direction", pa.string()),
        ("n", pa.int64()),  # samples with an ok score on both
        ("clean_mean", pa.float64()),
        ("corrupted_mean", pa.float64()),
        ("drop", pa.float64()),  # clean − corrupted
        ("loss", pa.float64()),  # drop oriented so that positive = worse on corrupted inputs
    ]
)

BIAS = pa.schema(
    [
        ("method", pa.string()),
        ("baseline_family", pa.string()),  # the family the method's baseline is biased towards
        ("uni_method", pa.string()),
        ("dataset", pa.string()),
        ("corruption", pa.string()),
        ("family", pa.string()),
        ("severity", pa.int64()),
        ("matched", pa.bool_()),  # family == baseline_family
        ("model", pa.string()),
        ("metric", pa.string()),
        ("direction", pa.string()),
        ("method_loss", pa.float64()),
        ("uni_loss", pa.float64()),
        ("clean_gap", pa.float64()),  # UNI − method on clean inputs, positive = UNI better
        ("corrupted_gap", pa.float64()),
        ("excess_loss", pa.float64()),  # method_loss − uni_loss = corrupted_gap − clean_gap
    ]
)

KEYS = ["model", "method", "metric"]


def baseline_family(entry: dict[str, Any]) -> str | None:
    """The corruption family a method entry's static baseline is biased towards, if it has one.

    IG with a black, blurred or noised (Gaussian or uniform) baseline; BlurIG, whose path starts
    at a heavily blurred image, counts as blurred.
    """
    from attrflow.catalog import catalog

    fn = entry["fn"]
    if fn == "integrated_gradients":
        default = catalog("methods")[fn].params["baseline"]["default"]
        return IG_BASELINE_FAMILIES.get(entry.get("baseline", default))
    if fn == "blur_ig":
        return "blur"
    return None


def _orientation(direction: str) -> float:
    """+1 where higher is better, −1 where lower is better: oriented differences read 'better'."""
    return 1.0 if direction == "higher" else -1.0


def clean_vs_corrupted(scores: pd.DataFrame, probes: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per (corrupted dataset, model, method, metric): paired clean/corrupted means, drop and loss."""
    ok = scores[scores["status"] == "ok"]
    rows = []
    for dataset, probe in sorted(probes.items()):
        clean = ok[ok["dataset"] == probe["of"]][[*KEYS, "sample_id", "direction", "value"]]
        corrupted = ok[ok["dataset"] == dataset][[*KEYS, "sample_id", "value"]]
        paired = clean.merge(corrupted, on=[*KEYS, "sample_id"], suffixes=("_clean", "_corrupted"))
        corruption = canonical_corruption(probe["corruption"])
        for (model, method, metric), group in paired.groupby(KEYS, sort=True):
            clean_mean = float(group["value_clean"].mean())
            corrupted_mean = float(group["value_corrupted"].mean())
            direction = str(group["direction"].iloc[0])
            rows.append(
                {
                    "dataset": dataset,
                    "clean_dataset": probe["of"],
                    "corruption": corruption,
                    "family": family_of(corruption),
                    "severity": int(probe["severity"]),
                    "model": model,
                    "method": method,
                    "metric": metric,
                    "direction": direction,
                    "n": len(group),
                    "clean_mean": clean_mean,
                    "corrupted_mean": corrupted_mean,
                    "drop": clean_mean - corrupted_mean,
                    "loss": _orientation(direction) * (clean_mean - corrupted_mean),
                }
            )
    return pd.DataFrame(rows, columns=PROBES.names)


def bias_table(comparison: pd.DataFrame, methods: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Each static-baseline method against each `uni` method, per corrupted dataset/model/metric."""
    families = {name: baseline_family(entry) for name, entry in methods.items()}
    static = [name for name, family in families.items() if family]
    unis = [name for name, entry in methods.items() if entry["fn"] == UNI_FN]
    cell = ["dataset", "model", "metric"]
    rows = []
    for uni in unis:
        uni_rows = comparison[comparison["method"] == uni].set_index(cell)
        for method in static:
            for _, row in comparison[comparison["method"] == method].iterrows():
                key = (row["dataset"], row["model"], row["metric"])
                if key not in uni_rows.index:
                    continue
                u = uni_rows.loc[key]
                sign = _orientation(row["direction"])
                clean_gap = sign * (u["clean_mean"] - row["clean_mean"])
                corrupted_gap = sign * (u["corrupted_mean"] - row["corrupted_mean"])
                rows.append(
                    {
                        "method": method,
                        "baseline_family": families[method],
                        "uni_method": uni,
                        "dataset": row["dataset"],
                        "corruption": row["corruption"],
                        "family": row["family"],
                        "severity": int(row["severity"]),
                        "matched": row["family"] == families[method],
                        "model": row["model"],
                        "metric": row["metric"],
                        "direction": row["direction"],
                        "method_loss": float(row["loss"]),
                        "uni_loss": float(u["loss"]),
                        "clean_gap": float(clean_gap),
                        "corrupted_gap": float(corrupted_gap),
                        "excess_loss": float(row["loss"] - u["loss"]),
                    }
                )
    return pd.DataFrame(rows, columns=BIAS.names)


def _number(value: float) -> str:
    """4 significant digits; rounding residue (1e-16) shows as 0, a missing value as a dash."""
    if math.isnan(value):
        return "—"
    return f"{round(value, 12) + 0.0:.4g}"


def render_probes_markdown(comparison: pd.DataFrame, bias: pd.DataFrame) -> str:
    lines = [
        "# Baseline-bias probes (UNI (Choi et al., 2024, Sec. 3.2))",
        "",
        "Scores on clean and corrupted copies of the same samples (paired by sample id). "
        "*loss* = clean − corrupted, signed so that positive means worse on corrupted inputs.",
        "",
    ]
    if comparison.empty:
        return "\n".join([*lines, "No corrupted dataset was scored together with its clean base.", ""])
    for (model, metric), part in comparison.groupby(["model", "metric"], sort=True):
        lines += [
            f"## {metric} ({part['direction'].iloc[0]} is better) — {model}",
            "",
            "| method | dataset | corruption | severity | n | clean | corrupted | loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, r in part.sort_values(["method", "family", "corruption", "severity"]).iterrows():
            lines.append(
                f"| {r['method']} | {r['dataset']} | {r['corruption']} | {r['severity']} | {r['n']} | "
                f"{_number(r['clean_mean'])} | {_number(r['corrupted_mean'])} | {_number(r['loss'])} |"
            )
        lines.append("")
    lines += ["## Static baselines against UNI", ""]
    if bias.empty:
        return "\n".join([*lines, "No static-baseline method was run together with a `uni` method.", ""])
    family_list = "; ".join(f"{family}: {', '.join(members)}" for family, members in FAMILIES.items())
    lines += [
        "*excess loss* = loss(method) − loss(UNI): how much more the static baseline loses than UNI. "
        "UNI (Choi et al., 2024, Sec. 3.2) predicts a positive excess on the family the baseline is biased towards "
        f"({family_list}); the other families are the control.",
        "",
        "| method | biased towards | vs | model | metric | corruption | severity | method loss | UNI loss | excess loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    matched = bias[bias["matched"]].sort_values(["method", "uni_method", "model", "metric", "corruption", "severity"])
    for _, r in matched.iterrows():
        lines.append(
            f"| {r['method']} | {r['baseline_family']} | {r['uni_method']} | {r['model']} | {r['metric']} | "
            f"{r['corruption']} | {r['severity']} | {_number(r['method_loss'])} | {_number(r['uni_loss'])} | "
            f"{_number(r['excess_loss'])} |"
        )
    summary = (
        bias.groupby(["method", "uni_method", "model", "metric", "matched"])["excess_loss"].mean().unstack("matched")
    )
    lines += [
        "",
        "Mean excess loss on the biased family against the other families:",
        "",
        "| method | vs | model | metric | biased family | other families |",
        "|---|---|---|---|---|---|",
    ]
    for (method, uni, model, metric), r in summary.iterrows():
        on, off = r.get(True, float("nan")), r.get(False, float("nan"))
        lines.append(f"| {method} | {uni} | {model} | {metric} | {_number(on)} | {_number(off)} |")
    return "\n".join([*lines, ""])


def write_probe_report(
    scores_path: str | Path,
    probes: dict[str, dict[str, Any]],
    methods: dict[str, dict[str, Any]],
    markdown_out: str | Path,
    table_out: str | Path,
    bias_out: str | Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read scores.parquet; write probes.md, probes.parquet (clean vs corrupted) and the bias table."""
    scores = pd.read_parquet(scores_path, columns=["dataset", *KEYS, "sample_id", "value", "status", "direction"])
    comparison = clean_vs_corrupted(scores, probes)
    bias = bias_table(comparison, methods)
    write_table(pa.Table.from_pandas(comparison, schema=PROBES, preserve_index=False), table_out)
    write_table(pa.Table.from_pandas(bias, schema=BIAS, preserve_index=False), bias_out)
    Path(markdown_out).parent.mkdir(parents=True, exist_ok=True)
    Path(markdown_out).write_text(render_probes_markdown(comparison, bias))
    return comparison, bias
