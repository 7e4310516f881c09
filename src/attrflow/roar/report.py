"""ROAR and DiffROAR results as Parquet rows, a markdown table and a figure per dataset.

Rows (long format, like `scores.parquet`): metric ``roar`` is the test accuracy of the network
retrained with the k % *most* salient pixels removed (lower is better); metric ``diffroar`` is
accuracy(least removed) − accuracy(most removed) of the same repeat (higher is better;
Shah et al., 2021). The accuracy without removal is a ``roar`` row at fraction 0 under method
``no_removal``, listed for every model so each (dataset, model) curve starts from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from attrflow.report.schema import write_table

NO_REMOVAL = "no_removal"
DIRECTIONS = {"roar": "lower", "diffroar": "higher"}

ROAR_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),  # roar | diffroar
        ("fraction", pa.float64()),
        ("repeat", pa.int64()),
        ("value", pa.float64()),
        ("status", pa.string()),  # ok | skipped
        ("reason", pa.string()),
        ("direction", pa.string()),
        ("method_fn", pa.string()),
        ("method_fingerprint", pa.string()),
        ("model_fingerprint", pa.string()),
        ("dataset_fingerprint", pa.string()),
        ("retrain_fingerprint", pa.string()),
    ]
)


def roar_rows(results: Iterable[dict]) -> pd.DataFrame:
    """The Parquet rows of a set of retrain results (the JSON files `retrain_job` writes)."""
    results = list(results)
    masked = {(r["dataset"], r["model"], r["method"], r["fraction"], r["repeat"], r["arm"]): r for r in results if r["method"]}
    rows = []
    for (dataset, model, method, fraction, repeat, arm), most in sorted(masked.items(), key=_sort_key):
        if arm != "most":
            continue
        least = masked.get((dataset, model, method, fraction, repeat, "least"))
        rows.append(_row(most, "roar", most["accuracy"], most["status"], most["reason"]))
        if least is None:
            continue
        skipped = next((r for r in (most, least) if r["status"] != "ok"), None)
        value = None if skipped else least["accuracy"] - most["accuracy"]
        rows.append(_row(most, "diffroar", value, skipped["status"] if skipped else "ok", skipped and skipped["reason"]))
    models = {(r["dataset"], r["model"]) for r in results if r["method"]}
    for base in (r for r in results if not r["method"]):
        for dataset, model in sorted(m for m in models if m[0] == base["dataset"]):
            rows.append(_row({**base, "model": model, "method": NO_REMOVAL}, "roar", base["accuracy"], "ok", None))
    frame = pd.DataFrame(rows, columns=ROAR_SCHEMA.names)
    return frame.sort_values(["dataset", "model", "metric", "method", "fraction", "repeat"], ignore_index=True)


def _sort_key(item):
    (dataset, model, method, fraction, repeat, arm), _ = item
    return (dataset, model, method, fraction, repeat, arm)


def _row(result: dict, metric: str, value: float | None, status: str, reason: str | None) -> dict:
    return {
        "dataset": result["dataset"],
        "model": result["model"],
        "method": result["method"],
        "metric": metric,
        "fraction": float(result["fraction"]),
        "repeat": int(result["repeat"]),
        "value": float("nan") if value is None else float(value),
        "status": status,
        "reason": reason,
        "direction": DIRECTIONS[metric],
        "method_fn": result.get("method_fn"),
        "method_fingerprint": result.get("method_fingerprint"),
        "model_fingerprint": result.get("model_fingerprint"),
        "dataset_fingerprint": result.get("dataset_fingerprint"),
        "retrain_fingerprint": result.get("retrain_fingerprint"),
    }


def curves(rows: pd.DataFrame, dataset: str, model: str, metric: str) -> pd.DataFrame:
    """Mean, std and count over repeats per (method, fraction); the no-removal point joins each ROAR curve."""
    part = rows[(rows.dataset == dataset) & (rows.model == model) & (rows.metric == metric) & (rows.status == "ok")]
    return (
        part.groupby(["method", "fraction"], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )


def markdown(rows: pd.DataFrame) -> str:
    """ROAR and DiffROAR tables (methods × fractions, mean ± std over repeats) per dataset and model."""
    lines = [
        "# ROAR and DiffROAR",
        "",
        "ROAR: test accuracy after retraining with the k most salient pixels removed (↓ better; the",
        "`random` rows are the control, fraction 0 the accuracy without removal). DiffROAR: accuracy",
        "with the k least salient removed minus ROAR's (↑ better). Mean ± std over repeats.",
    ]
    for dataset in dict.fromkeys(rows.dataset):
        for model in dict.fromkeys(rows[rows.dataset == dataset].model):
            for metric, arrow in (("roar", "↓"), ("diffroar", "↑")):
                table = curves(rows, dataset, model, metric)
                if table.empty:
                    continue
                fractions = sorted(table.fraction.unique())
                lines += ["", f"## {metric} {arrow} — {dataset}, {model}", ""]
                lines.append("| method | " + " | ".join(f"{f:.0%}" for f in fractions) + " |")
                lines.append("|---|" + "---|" * len(fractions))
                for method in _method_order(table.method):
                    cells = []
                    for fraction in fractions:
                        hit = table[(table.method == method) & (table.fraction == fraction)]
                        cells.append(_cell(hit.iloc[0]) if len(hit) else "")
                    lines.append(f"| {method} | " + " | ".join(cells) + " |")
    skipped = rows[rows.status != "ok"][["dataset", "model", "method", "reason"]].drop_duplicates()
    if len(skipped):
        lines += ["", "Skipped (method not applicable to the model):", ""]
        lines += [f"- {r.dataset}, {r.model}, {r.method}: {r.reason}" for r in skipped.itertuples()]
    return "\n".join(lines) + "\n"


def _method_order(methods: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(methods))
    return sorted(names, key=lambda m: (m != NO_REMOVAL, m))


def _cell(row: pd.Series) -> str:
    text = f"{row['mean']:.3f}"
    if row["n"] > 1 and not math.isnan(row["std"]):
        text += f" ± {row['std']:.3f}"
    return text


def figure(rows: pd.DataFrame, dataset: str, out_path: str | Path) -> None:
    """ROAR accuracy and DiffROAR against the fraction removed, one row of panels per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = rows[rows.dataset == dataset]
    models = list(dict.fromkeys(part.model)) or [""]
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for (ax_roar, ax_diff), model in zip(axes, models):
        roar = curves(part, dataset, model, "roar")
        base = roar[roar.method == NO_REMOVAL]
        for method in _method_order(roar.method):
            if method == NO_REMOVAL:
                continue
            line = pd.concat([base, roar[roar.method == method]]).sort_values("fraction")
            style = "--" if method == "random" else "-"
            ax_roar.errorbar(line.fraction, line["mean"], yerr=line["std"].fillna(0), fmt=style + "o", ms=3, capsize=2, label=method)
        ax_roar.set(title=f"ROAR — {dataset}, {model}", xlabel="fraction of most salient pixels removed", ylabel="test accuracy (↓ better)")
        diff = curves(part, dataset, model, "diffroar")
        for method in _method_order(diff.method):
            line = diff[diff.method == method].sort_values("fraction")
            style = "--" if method == "random" else "-"
            ax_diff.errorbar(line.fraction, line["mean"], yerr=line["std"].fillna(0), fmt=style + "o", ms=3, capsize=2, label=method)
        ax_diff.axhline(0.0, color="grey", lw=0.8)
        ax_diff.set(title=f"DiffROAR — {dataset}, {model}", xlabel="fraction removed", ylabel="acc(least) − acc(most) (↑ better)")
        for ax in (ax_roar, ax_diff):
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def write_roar_report(result_paths: Iterable[str | Path], parquet_out: str | Path, markdown_out: str | Path, figures: dict[str, str | Path]) -> pd.DataFrame:
    """Read every retrain result and write roar.parquet, roar.md and one figure per dataset."""
    rows = roar_rows(json.loads(Path(p).read_text()) for p in result_paths)
    write_table(pa.Table.from_pandas(rows, schema=ROAR_SCHEMA, preserve_index=False), parquet_out)
    out = Path(markdown_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows))
    for dataset, path in figures.items():
        figure(rows, dataset, path)
    return rows
