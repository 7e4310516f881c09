"""`summary.md`: tables shaped like the seed papers' tables.

First the groups of metrics the seeds report side by side (Hesse et al., 2021, Table 3: KPM/KNM/KAM/RAM per
model; UNI Tables 3–4: attack robustness; …) as methods × metrics per model, then one table per
metric as methods × models (UNI Tables 1–2, the dissertation's insertion/deletion table), then what
each method cost (gradient evaluations per image, as Hesse et al., 2021 print them next to each method).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attrflow.report.axiom_tables import AXIOM_PREFIX, axiom_sections, read_synthesis

ARROW = {"higher": "↑", "lower": "↓"}

# Metrics the seeds tabulate together; a group is shown when at least two of its metrics ran.
SEED_GROUPS = [
    ("Lundberg et al. masking metrics (Hesse et al., 2021, Table 3)", ["kpm", "knm", "kam", "ram"]),
    ("Insertion / deletion (Zhang et al., 2021, App. Table 3)", ["insertion", "deletion"]),
    ("Attribution attack, FGSM ε = 8/255 (UNI, Tables 3–4)", ["attack_spearman", "attack_topk"]),
    ("Faithfulness (UNI Table 2; Bhatt et al.)", ["mufidelity", "mufidelity_fixed", "faithfulness_correlation", "sensitivity_n", "diffid"]),
    ("Localisation against object masks", ["pointing_game", "relevance_mass", "ehr", "iou"]),
    ("Axiomatic diagnostics", ["completeness", "path_monotonicity", "mard_ig", "ig_convergence"]),
]


LIKE_RANDOM = "≈r"
LEGEND = [
    "Mean over each cell's own samples ± half-width of the 95 % confidence interval of the mean (Student t).",
    "**Bold**: ranked first on the samples every method of that model shares, and significantly better than the",
    "runner-up there (paired Wilcoxon signed-rank, Holm-corrected within the model × metric, α = 0.05); no bold",
    f"where no method is. {LIKE_RANDOM}: not shown to differ from the random control (same test; also where",
    "no test could be run, e.g. fewer than 3 samples on which the two differ). `n=…`: a cell",
    "scored on fewer samples than the table's n; comparisons use only the samples both methods share",
    "(comparisons.parquet, ranks.parquet). ↑ higher is better, ↓ lower is better.",
]
_MARKS = ["dataset", "model", "method", "metric", "best_vs_runner_up", "vs_random"]


def with_marks(summary: pd.DataFrame, ranks: pd.DataFrame | None) -> pd.DataFrame:
    """The summary with the evidence marks of `ranks` (attrflow.report.evidence) joined in."""
    if ranks is None or not len(ranks):
        return summary.assign(best_vs_runner_up=None, vs_random=None)
    return summary.merge(ranks[_MARKS], on=["dataset", "model", "method", "metric"], how="left")


def _cell(row: pd.Series, table_n: int | None = None) -> str:
    if row["n"] == 0:
        return "skipped" if row["n_skipped"] else "n/a"
    text = f"{row['mean']:.4g}"
    if row["n"] > 1 and not math.isnan(row["ci95_high"]):
        text += f" ± {(row['ci95_high'] - row['mean']):.2g}"
    if row.get("best_vs_runner_up") == "significant":
        text = f"**{text}**"
    # "no test": too few samples on which the method and the random control differ at all, so
    # nothing shows that they differ; the table must not read as if it did.
    if row.get("vs_random") in ("not distinguishable", "no test"):
        text += f" {LIKE_RANDOM}"
    if table_n is not None and row["n"] != table_n:
        text += f" n={row['n']}"
    if row["n_nan"]:
        text += f" ({row['n_nan']} nan)"
    return text


def _table_n(part: pd.DataFrame) -> int:
    """The n most cells of a table have (the one its heading states)."""
    counts = part.loc[part["n"] > 0, "n"]
    return int(counts.mode().max()) if len(counts) else 0


def metric_table(summary: pd.DataFrame, dataset: str, metric: str) -> str:
    part = summary[(summary["dataset"] == dataset) & (summary["metric"] == metric)]
    models = list(dict.fromkeys(part["model"]))
    methods = list(dict.fromkeys(part["method"]))
    table_n = _table_n(part)
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for method in methods:
        cells = []
        for model in models:
            hit = part[(part["method"] == method) & (part["model"] == model)]
            cells.append(_cell(hit.iloc[0], table_n) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(summary: pd.DataFrame, dataset: str, model: str, metrics: list[str]) -> str:
    part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
    ns = {m: _table_n(part[part["metric"] == m]) for m in metrics}
    header = [f"{m} {ARROW.get(part.loc[part['metric'] == m, 'direction'].iloc[0], '')} (n = {ns[m]})" for m in metrics]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(metrics)]
    for method in dict.fromkeys(part["method"]):
        cells = []
        for metric in metrics:
            hit = part[(part["method"] == method) & (part["metric"] == metric)]
            cells.append(_cell(hit.iloc[0], ns[metric]) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(costs: pd.DataFrame) -> str:
    lines = [
        "| dataset | model | method | n | gradient evals / image | forward passes / image | ms / image | peak MB | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in costs.itertuples():
        if not row.applicable:
            lines.append(f"| {row.dataset} | {row.model} | {row.method} | {row.n} | not applicable: {row.reason} | | | | |")
            continue
        lines.append(
            f"| {row.dataset} | {row.model} | {row.method} | {row.n} | {row.backward_per_image:.4g} | "
            f"{row.forward_per_image:.4g} | {row.wall_ms_per_image:.3g} | {row.peak_memory_mb:.0f} | {row.device} |"
        )
    return "\n".join(lines)


def render_markdown(
    summary: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    ranks: pd.DataFrame | None = None,
    synthesis: pd.DataFrame | None = None,
    accuracy: pd.DataFrame | None = None,
) -> str:
    summary = with_marks(summary, ranks)
    out = ["# attrflow summary", "", *LEGEND, ""]
    if accuracy is not None and len(accuracy):
        from attrflow.report.model_quality import accuracy_table

        out += ["## Models on the evaluated samples", "", accuracy_table(accuracy), ""]
    out += _generic_sections(summary[~summary["dataset"].str.startswith(AXIOM_PREFIX)])
    out += axiom_sections(summary, _cell, synthesis)
    if costs is not None and len(costs):
        out += ["## Cost of each method", "", cost_table(costs), ""]
    return "\n".join(out)


def _generic_sections(summary: pd.DataFrame) -> list[str]:
    """The seed groups and the per-metric tables; axiom scores have their own tables (Khakzar et al., 2022)."""
    out: list[str] = []
    for title, metrics in SEED_GROUPS:
        for dataset in dict.fromkeys(summary["dataset"]):
            present = [m for m in metrics if m in set(summary.loc[summary["dataset"] == dataset, "metric"])]
            if len(present) < 2:
                continue
            for model in dict.fromkeys(summary.loc[summary["dataset"] == dataset, "model"]):
                out += [f"## {title} — {model} on {dataset}", "", group_table(summary, dataset, model, present), ""]
    for dataset in dict.fromkeys(summary["dataset"]):
        for metric in dict.fromkeys(summary.loc[summary["dataset"] == dataset, "metric"]):
            direction = summary.loc[summary["metric"] == metric, "direction"].iloc[0]
            n = _table_n(summary[(summary["dataset"] == dataset) & (summary["metric"] == metric)])
            out += [f"## {metric} {ARROW.get(direction, '')} — {dataset} (n = {n})", "", metric_table(summary, dataset, metric), ""]
    return out


def write_markdown(
    summary_path: str | Path,
    out_path: str | Path,
    costs_path: str | Path | None = None,
    ranks_path: str | Path | None = None,
    scores_path: str | Path | None = None,
) -> None:
    import os

    from attrflow.report.model_quality import card_classes, model_accuracy, sample_labels

    summary = pd.read_parquet(summary_path)
    costs = pd.read_parquet(costs_path) if costs_path else None
    ranks = pd.read_parquet(ranks_path) if ranks_path else None
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    # the axiom synthesis stores sit beside reports/: results/axioms/{model}/{entry}/inputs.zarr
    synthesis = read_synthesis(Path(summary_path).resolve().parents[1] / "axioms")
    accuracy = None
    if scores_path is not None:
        accuracy = model_accuracy(sample_labels(scores_path), card_classes(Path(summary_path).resolve().parents[1] / "models"))
    tmp.write_text(render_markdown(summary, costs, ranks, synthesis, accuracy))
    os.replace(tmp, out_path)
