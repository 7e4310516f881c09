"""`report.html`: one static page a researcher opens from disk, with its figures beside it.

What was run and what it cost; per metric the critical-difference diagram (Demšar 2006); a method
× metric heatmap of average ranks with significance marks; how metrics agree and whether each is
informative here; galleries of maps on a fixed set of samples; insertion / deletion and
KPM-family curves with confidence bands; quality against cost; the axiom scenarios; ROAR when it
ran. Figures are PNGs drawn with matplotlib's Agg backend into ``figures/`` next to the page and
referenced by relative paths, so the page needs no server and no network.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from attrflow.report.evidence import UNINFORMATIVE

GALLERY_SAMPLES = 3
AXIOM_SAMPLES = 2
CURVE_METHODS = 5  # the best five by average rank, plus the random control
DPI = 80
WRAP = 12  # gallery panels per row
FIGURE_PREFIX = "report-"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _inches(fig, left: float, right: float, bottom: float, top: float, wspace: float = 0.2, hspace: float = 0.2) -> None:
    """Fixed margins in inches (what tight layouts compute by drawing the figure once more)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=wspace, hspace=hspace)


def figure_name(*parts: str) -> str:
    return FIGURE_PREFIX + "-".join(_SAFE.sub("_", p) for p in parts) + ".png"


class Page:
    """Collects HTML sections and writes figures into `figures`, referenced relatively."""

    def __init__(self, out_html: Path, figures: Path):
        self.out_html = out_html
        self.figures = figures
        self.parts: list[str] = []
        figures.mkdir(parents=True, exist_ok=True)

    def h(self, level: int, text: str) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def table(self, frame: pd.DataFrame, digits: int = 3) -> None:
        if frame.empty:
            self.p("(nothing to show)")
            return
        table = frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.{digits}g}", border=0, classes="t")
        self.parts.append(f'<div class="wide">{table}</div>')

    def figure(self, fig, name: str, caption: str) -> None:
        path = self.figures / name
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=DPI)  # layouts are fixed by hand: "tight" boxes draw every figure twice
        _plt().close(fig)
        os.replace(tmp, path)
        rel = os.path.relpath(path, self.out_html.parent).replace(os.sep, "/")
        self.parts.append(
            f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def write(self, title: str) -> None:
        body = "\n".join(self.parts)
        text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1.5em; }}
table.t td, table.t th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #555; }}
.wide {{ overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
        tmp = self.out_html.with_name(f"{self.out_html.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.out_html)


# ---------------------------------------------------------------------------------------------
# Sections


def _what_ran(
    page: Page, summary: pd.DataFrame, ranks: pd.DataFrame, costs: pd.DataFrame | None, accuracy: pd.DataFrame
) -> None:
    page.h(2, "What was run")
    for key in ("dataset", "model", "method", "metric"):
        values = sorted(summary[key].unique())
        page.p(f"{key}s ({len(values)}): " + ", ".join(values))
    if len(accuracy):
        page.h(3, "Models on the evaluated samples")
        page.p(
            "Accuracy on the samples the maps explain; at_chance: not significantly better than 1 / classes "
            "(one-sided exact binomial test, α = 0.05) — such a model's maps explain guesses."
        )
        page.table(accuracy)
    page.h(3, "Samples per cell")
    page.p(
        "methods: how many methods were scored on the metric; not scored: methods it gives no value for "
        "(not applicable, e.g. completeness to a method without a path, or skipped), left out of the "
        "common set; n own: how many samples each scored method has (smallest and largest); n common: "
        "the samples every scored method shares, on which ranks, Friedman tests and bold marks are computed."
    )
    page.table(samples_per_cell(ranks))
    if costs is not None and len(costs):
        page.h(3, "Cost")
        page.table(
            costs[["dataset", "model", "method", "n", "wall_ms_per_image", "backward_per_image", "forward_per_image", "peak_memory_mb", "device"]]
        )


def samples_per_cell(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, metric): methods scored and not, their own sample counts, the common set."""
    scored = ranks.assign(scored=ranks["n_own"] > 0, n_scored=ranks["n_own"].where(ranks["n_own"] > 0))
    cells = scored.groupby(["dataset", "model", "metric"], sort=True).agg(
        methods=("scored", "sum"), not_scored=("scored", lambda s: int((~s).sum())),
        n_own_min=("n_scored", "min"), n_own_max=("n_scored", "max"), n_common=("n_common", "first"),
    )
    return cells.reset_index().astype({"methods": int, "not_scored": int, "n_own_min": "Int64", "n_own_max": "Int64"})


def _cd_diagrams(page: Page, ranks: pd.DataFrame) -> None:
    plt = _plt()
    page.h(2, "Critical-difference diagrams")
    page.p(
        "Average rank of every method on the samples all methods share (1 = best), with its bootstrap 95 % "
        "interval. The grey band spans the Nemenyi critical difference from the best method (Demšar 2006): "
        "methods inside it are not significantly worse than the best. Letters after a name are Nemenyi "
        "groups (shared letter = not significantly different; all 'a' when the Friedman test does not reject "
        "at α = 0.05). The random control is red."
    )
    for (dataset, model), part in ranks.groupby(["dataset", "model"], sort=True):
        metrics = [m for m, g in part.groupby("metric", sort=True) if g["avg_rank"].notna().sum() >= 2]
        if not metrics:
            continue
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        k = part.groupby("metric")["method"].size().max()
        panel_h = 0.3 + 0.14 * k  # axes height; 0.8 in more for its title and axis label
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * (panel_h + 0.8)), squeeze=False)
        _inches(fig, 1.4, 0.2, 0.5, 0.35, wspace=1.5 / 2.6, hspace=0.8 / panel_h)
        for ax in axes.ravel()[len(metrics):]:
            ax.axis("off")
        for ax, metric in zip(axes.ravel(), metrics):
            _cd_axis(ax, part[(part["metric"] == metric) & part["avg_rank"].notna()], metric)
        page.figure(fig, figure_name("cd", dataset, model), f"Critical-difference diagrams, {model} on {dataset}")


def _cd_axis(ax, g: pd.DataFrame, metric: str) -> None:
    """Average ranks (best on top) with bootstrap 95 % intervals; the grey band spans the critical
    difference from the best method: methods inside it are not significantly worse than the best.
    Letters: Nemenyi groups (methods sharing a letter are not significantly different)."""
    g = g.sort_values("avg_rank", kind="stable").reset_index(drop=True)
    k = len(g)
    row = g.iloc[0]
    cd = row["critical_difference"]
    if np.isfinite(cd):
        ax.axvspan(row["avg_rank"], row["avg_rank"] + cd, color="0.85", lw=0)
    colors = ["red" if r else "k" for r in g["is_random"]]
    low = (g["avg_rank"] - g["avg_rank_ci95_low"]).clip(lower=0).fillna(0)
    high = (g["avg_rank_ci95_high"] - g["avg_rank"]).clip(lower=0).fillna(0)
    ax.errorbar(g["avg_rank"], range(k), xerr=[low, high], fmt="none", ecolor="0.5", lw=0.6)
    ax.scatter(g["avg_rank"], range(k), c=colors, s=6, zorder=3)
    labels = [f"{r.method} {r.cd_group if isinstance(r.cd_group, str) else ''}".strip() for r in g.itertuples()]
    ax.set_yticks(range(k), labels, fontsize=5.5)
    for tick, color in zip(ax.get_yticklabels(), colors):
        tick.set_color(color)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlim(0.5, k + 0.5)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("average rank (1 = best)", fontsize=6)
    title = f"{metric} (n={int(row['n_common'])})"
    if pd.notna(row["friedman_p"]):
        title += f", Friedman p={row['friedman_p']:.2g}, CD={cd:.2f}"
    elif row["reason"]:
        title += ", no test"
    ax.set_title(title, fontsize=7)


def _rank_heatmaps(page: Page, ranks: pd.DataFrame) -> None:
    plt = _plt()
    page.h(2, "Methods × metrics")
    page.p(
        "Colour: average rank divided by the number of methods (yellow = best, purple = worst). Marks: ★ significantly better "
        "than the runner-up; + better than the random control; − worse; no mark: not distinguishable from "
        "random (paired Wilcoxon, Holm-corrected)."
    )
    marks = {"better": "+", "worse": "−"}
    for (dataset, model), part in ranks.groupby(["dataset", "model"], sort=True):
        rel = part.assign(rel=part["avg_rank"] / part["k_methods"])
        grid = rel.pivot_table(index="method", columns="metric", values="rel", aggfunc="first")
        if grid.empty:
            continue
        grid = grid.loc[grid.mean(axis=1).sort_values().index]
        fig, ax = plt.subplots(figsize=(1.6 + 0.3 * grid.shape[1], 1.8 + 0.2 * grid.shape[0]))
        _inches(fig, 1.4, 0.2, 1.5, 0.3)
        ax.imshow(grid.to_numpy(), cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=6)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=6)
        lookup = part.set_index(["method", "metric"])
        for i, method in enumerate(grid.index):
            for j, metric in enumerate(grid.columns):
                if (method, metric) not in lookup.index:
                    continue
                r = lookup.loc[(method, metric)]
                text = ("★" if r["best_vs_runner_up"] == "significant" else "") + marks.get(r["vs_random"], "")
                if r["is_random"]:
                    text = "R"
                if text:
                    ax.text(j, i, text, ha="center", va="center", fontsize=6, color="w")
        ax.set_title(f"{model} on {dataset}", fontsize=8)
        page.figure(fig, figure_name("ranks", dataset, model), f"Average ranks, {model} on {dataset}")


def _agreement(page: Page, agreement: pd.DataFrame, quality: pd.DataFrame) -> None:
    plt = _plt()
    page.h(2, "Metric quality")
    page.p(
        f"'{UNINFORMATIVE}': the random control ranks in the top half of the methods under that metric. "
        "Retest: the metric scored again with an independent seed — Spearman of the two method rankings and "
        "ICC(2,1) (Shrout & Fleiss 1979, absolute agreement) of per-sample scores. n for 80 % power: "
        "samples a paired t-test needs to resolve the gap between the two best methods."
    )
    shown = quality[
        ["dataset", "model", "metric", "k_methods", "n_common", "flag", "random_position", "n_better_than_random",
         "n_worse_than_random", "n_indistinguishable_from_random", "retest_spearman", "retest_icc", "retest_reason",
         "mean_kendall_tau", "top_two", "n_for_80_power", "sample_size_reason"]
    ]  # fmt: skip
    page.table(shown)
    page.h(3, "Agreement between metrics")
    page.p("Kendall τ between the method rankings of every pair of metrics (over the methods both ranked).")
    for (dataset, model), part in agreement.groupby(["dataset", "model"], sort=True):
        metrics = sorted(set(part["metric_a"]) | set(part["metric_b"]))
        tau = pd.DataFrame(np.eye(len(metrics)), index=metrics, columns=metrics)
        for r in part.itertuples():
            tau.loc[r.metric_a, r.metric_b] = tau.loc[r.metric_b, r.metric_a] = r.kendall_tau
        fig, ax = plt.subplots(figsize=(2.8 + 0.3 * len(metrics), 1.8 + 0.3 * len(metrics)))
        _inches(fig, 1.5, 1.3, 1.5, 0.3)
        im = ax.imshow(tau.to_numpy(dtype=float), cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(len(metrics)), metrics, rotation=90, fontsize=6)
        ax.set_yticks(range(len(metrics)), metrics, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.7, label="Kendall τ")
        ax.set_title(f"{model} on {dataset}", fontsize=8)
        page.figure(fig, figure_name("agreement", dataset, model), f"Metric agreement, {model} on {dataset}")


def _mufidelity_draws(page: Page, ranks: pd.DataFrame, scores_fn: dict[str, str]) -> None:
    entries = sorted(m for m, fn in scores_fn.items() if fn == "mufidelity")
    if not entries:
        return
    page.h(2, "MuFidelity: what the subset draw gives the random control")
    page.p(
        "Xplique drops each grid cell independently (subset size varies); Bhatt et al. (2020) remove exactly "
        "k cells. With |corr| and a non-negative map, a variable subset size lets any map correlate with the "
        "output drop through the size alone. Each MuFidelity entry's random-control row:"
    )
    rows = ranks[ranks["metric"].isin(entries) & ranks["is_random"]]
    page.table(rows[["dataset", "model", "metric", "mean_own", "n_own", "avg_rank", "position", "k_methods"]])


def _galleries(page: Page, sample_stores: Iterable[str], attribution_stores: Iterable[str], max_samples: int) -> None:
    from attrflow.store import open_store

    plt = _plt()
    samples = {Path(p).parent.name: p for p in sample_stores if Path(p).exists()}
    by_cell: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in attribution_stores:
        p = Path(path)
        if p.exists():
            by_cell[(p.parents[2].name, p.parents[1].name)][p.parent.name].append(path)
    if not by_cell:
        return
    page.h(2, "Map galleries")
    page.p(
        f"The first {max_samples} samples every method explained: the image with its object mask outlined, then each "
        "method's map (red positive, blue negative, each map scaled to its own largest magnitude)."
    )
    for (dataset, model), methods in sorted(by_cell.items()):
        if dataset not in samples:
            continue
        store = open_store(samples[dataset], deep=False)
        ids = [str(i) for i in store["ids"][:]]
        maps: dict[str, dict[str, np.ndarray]] = {}
        for method, paths in sorted(methods.items()):
            found: dict[str, np.ndarray] = {}
            for path in sorted(paths):
                shard = open_store(path, deep=False)
                if "maps" not in shard:
                    continue
                shard_ids = [str(i) for i in shard["ids"][:]]
                want = [i for i, sid in enumerate(shard_ids) if sid in ids[: 4 * max_samples]][:max_samples]
                if want:
                    data = shard["maps"][: max(want) + 1]
                    found.update({shard_ids[i]: np.asarray(data[i]) for i in want})
            if found:
                maps[method] = found
        if not maps:
            continue
        chosen = [sid for sid in ids if all(sid in m for m in maps.values())][:max_samples]
        if not chosen:
            continue
        rows = [ids.index(sid) for sid in chosen]
        images = np.asarray(store["images"][: max(rows) + 1])[rows]
        masks = np.asarray(store["masks"][: max(rows) + 1])[rows] if "masks" in store else None
        names = sorted(maps)
        panels = []
        for r, sid in enumerate(chosen):
            panels.append((sid, image_rgb(images[r], [] if masks is None else [masks[r]])))
            panels += [(method, map_rgb(maps[method][sid])) for method in names]
            panels += [None] * (-len(panels) % min(WRAP, 1 + len(names)))  # each sample starts a row
        fig = mosaic(panels, min(WRAP, 1 + len(names)))
        page.figure(fig, figure_name("gallery", dataset, model), f"Maps of every method, {model} on {dataset}")


OUTLINE_COLOURS = ((0.0, 1.0, 0.0), (1.0, 0.55, 0.0))  # green, orange: first and second patch


def image_rgb(image: np.ndarray, outlines: Iterable[np.ndarray] = (), colours: Iterable[tuple[float, float, float]] | None = None) -> np.ndarray:
    """(H, W, 3) in [0, 1] from a (C, H, W) image, with each mask's boundary painted (green unless
    ``colours`` gives one per mask)."""
    img = np.clip(np.moveaxis(np.asarray(image, dtype=np.float64), 0, -1), 0, 1)
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3].copy()
    outlines = list(outlines)
    colours = list(colours) if colours is not None else [OUTLINE_COLOURS[0]] * len(outlines)
    for mask, colour in zip(outlines, colours, strict=True):
        mask = np.asarray(mask, dtype=bool)
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        rgb[mask & ~inner] = colour
    return rgb


def map_rgb(m: np.ndarray) -> np.ndarray:
    """(H, W, 3): red positive, blue negative, scaled to the map's own largest magnitude."""
    from matplotlib import colormaps

    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 3:  # kept channels: sum them for display
        m = m.sum(axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    scale = np.abs(m).max() or 1.0
    return colormaps["bwr"]((m / scale + 1) / 2)[..., :3]


def mosaic(panels: list[tuple[str, np.ndarray] | None], cols: int):
    """One figure, one image: panels laid out `cols` to a row with their titles above them (far
    cheaper to draw than an axes per panel); None leaves a panel blank."""
    plt = _plt()
    h, w = next(p for p in panels if p is not None)[1].shape[:2]
    rows = math.ceil(len(panels) / cols)
    gap, head = max(2, w // 16), max(10, h // 4)
    canvas = np.ones((rows * (h + head) + gap, cols * (w + gap) + gap, 3))
    for i, panel in enumerate(panels):
        if panel is None:
            continue
        rgb = panel[1]
        r, c = divmod(i, cols)
        y, x = r * (h + head) + head, gap + c * (w + gap)
        canvas[y : y + h, x : x + w] = rgb[:h, :w]
    scale = max(1.0, 72 / w)  # at least ~1 inch per panel
    fig = plt.figure(figsize=(canvas.shape[1] * scale / DPI, canvas.shape[0] * scale / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, panel in enumerate(panels):
        if panel is None:
            continue
        title = panel[0]
        r, c = divmod(i, cols)
        ax.text(gap + c * (w + gap) + w / 2, r * (h + head) + head - 2, title[:22], ha="center", va="bottom", fontsize=6)
    return fig


def _curve_families(scores_path: Path) -> list[tuple[str, str, str]]:
    """(dataset, model, metric) with curves of more than two points, by a streaming DuckDB query."""
    import duckdb

    query = (
        "SELECT DISTINCT dataset, model, metric FROM read_parquet(?) "
        "WHERE status = 'ok' AND curve IS NOT NULL AND len(curve) > 2 ORDER BY ALL"
    )
    with duckdb.connect() as con:
        return [tuple(map(str, r)) for r in con.execute(query, [str(scores_path)]).fetchall()]


def _plotted_methods(ranks: pd.DataFrame, max_methods: int) -> list[str]:
    ordered = ranks.sort_values("avg_rank", kind="stable")
    return list(ordered.loc[~ordered["is_random"], "method"][:max_methods]) + list(ordered.loc[ordered["is_random"], "method"])


def _read_curves(scores_path: Path, key: tuple[str, str, str], methods: list[str]) -> pd.DataFrame:
    """The ok curves (> 2 points) of the plotted methods of one (dataset, model, metric) only."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset, model, metric = key
    where = (ds.field("dataset") == dataset) & (ds.field("model") == model) & (ds.field("metric") == metric) & ds.field("method").isin(methods)
    table = ds.dataset(str(scores_path), format="parquet").to_table(columns=["method", "sample_id", "status", "curve"], filter=where)
    table = table.filter(pc.and_(pc.is_valid(table["curve"]), pc.equal(table["status"], "ok")))
    return table.filter(pc.greater(pc.list_value_length(table["curve"]), 2)).to_pandas()


def _curves(page: Page, scores_path: Path, ranks: pd.DataFrame, max_methods: int) -> None:
    keys = _curve_families(scores_path)
    if not keys:
        return
    plt = _plt()
    page.h(2, "Curves")
    page.p(
        f"Mean curve over the samples every method shares, with its 95 % confidence band (Student t), for the "
        f"{max_methods} best methods by average rank and the random control (dashed)."
    )
    by_pair: dict[tuple[str, str], list[str]] = {}
    for dataset, model, metric in keys:
        by_pair.setdefault((dataset, model), []).append(metric)
    for (dataset, model), metrics in by_pair.items():
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8), squeeze=False)
        _inches(fig, 0.45, 0.15, 0.5, 0.3, wspace=0.25)
        for ax, metric in zip(axes[0], metrics):
            family_ranks = ranks[(ranks["dataset"] == dataset) & (ranks["model"] == model) & (ranks["metric"] == metric)]
            part = _read_curves(scores_path, (dataset, model, metric), _plotted_methods(family_ranks, max_methods))
            _curve_axis(ax, part, family_ranks, max_methods)
            ax.set_title(metric, fontsize=8)
        for ax in axes[0]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5, loc="best")
        page.figure(fig, figure_name("curves", dataset, model), f"Curves, {model} on {dataset}")


def _curve_axis(ax, part: pd.DataFrame, ranks: pd.DataFrame, max_methods: int) -> None:
    from scipy.stats import t

    methods = _plotted_methods(ranks, max_methods)
    shared = set.intersection(*(set(part.loc[part["method"] == m, "sample_id"]) for m in methods)) if methods else set()
    for method in methods:
        rows = part[(part["method"] == method) & part["sample_id"].isin(shared)]
        curves = [np.asarray(c, dtype=np.float64) for c in rows["curve"]]
        if not curves or len({c.size for c in curves}) != 1:
            continue
        y = np.stack(curves)
        x = np.linspace(0, 1, y.shape[1])
        mean = y.mean(axis=0)
        random = bool(ranks.loc[ranks["method"] == method, "is_random"].any())
        (line,) = ax.plot(x, mean, lw=1, ls="--" if random else "-", label=f"{method} (n={len(y)})")
        if len(y) > 1:
            half = t.ppf(0.975, len(y) - 1) * y.std(axis=0, ddof=1) / math.sqrt(len(y))
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("fraction", fontsize=7)
    ax.tick_params(labelsize=6)


def _quality_vs_cost(page: Page, ranks: pd.DataFrame, costs: pd.DataFrame | None) -> None:
    if costs is None or costs.empty:
        return
    plt = _plt()
    page.h(2, "Quality against cost")
    page.p("Each method's average rank over all metrics (relative to the number of methods; lower is better) against its attribution time per image.")
    rel = ranks.assign(rel=ranks["avg_rank"] / ranks["k_methods"]).groupby(["dataset", "model", "method"])["rel"].mean().reset_index()
    merged = rel.merge(costs, on=["dataset", "model", "method"]).dropna(subset=["rel", "wall_ms_per_image"])
    for (dataset, model), part in merged.groupby(["dataset", "model"], sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(part["wall_ms_per_image"].clip(lower=1e-3), part["rel"], s=10)
        for r in part.itertuples():
            ax.annotate(r.method, (max(r.wall_ms_per_image, 1e-3), r.rel), fontsize=5)
        ax.set_xscale("log")
        ax.set_xlabel("ms per image")
        ax.set_ylabel("mean relative rank (lower = better)")
        ax.set_title(f"{model} on {dataset}", fontsize=8)
        page.figure(fig, figure_name("cost", dataset, model), f"Quality against cost, {model} on {dataset}")


def _axioms(page: Page, axiom_stores: Iterable[str], max_samples: int) -> None:
    from attrflow.store import open_store

    plt = _plt()
    paths = [Path(p) for p in axiom_stores if Path(p).exists()]
    inputs = [p for p in paths if p.name == "inputs.zarr"]
    maps = [p for p in paths if p.parent.name == "maps"]
    if not inputs:
        return
    page.h(2, "Axiom scenarios")
    page.p(
        "Accepted generated inputs with their patches outlined (green: the first patch, orange: the second), "
        "each shown twice — explained for target class a, then for class b — followed by each method's map for "
        "that target (Khakzar et al., 'Do Explanations Explain? Model Knows Best', CVPR 2022)."
    )
    for path in sorted(inputs):
        model, entry = path.parents[1].name, path.parent.name
        store = open_store(path, deep=False)
        accepted = np.flatnonzero(np.asarray(store["accepted"][:]))[:max_samples]
        if not accepted.size:
            page.p(f"{entry} on {model}: no accepted sample.")
            continue
        ids = [str(i) for i in np.asarray(store["ids"][:])[accepted]]
        images = np.asarray(store["inputs"][:])[accepted]
        masks = np.asarray(store["masks"][:])[accepted]
        targets = np.asarray(store["targets"][:])[accepted] if "targets" in store else None
        robust = np.asarray(store["robust_pass_fraction"][:])[accepted] if "robust_pass_fraction" in store else None
        names = list(dict(store.attrs).get("patch_names") or [])
        described = [
            f"{sid}: class a = {int(targets[si][0])}, class b = {int(targets[si][1])}"
            + (f", property held on {robust[si]:.0%} of fresh draws" if robust is not None and np.isfinite(robust[si]) else "")
            for si, sid in enumerate(ids)
        ] if targets is not None else ids
        patches = ", ".join(f"{name} ({colour})" for name, colour in zip(names, ("green", "orange"), strict=False))
        page.p(f"{entry} on {model}" + (f" — patches {patches}" if patches else "") + ": " + "; ".join(described) + ".")
        method_maps: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        for mp in sorted(p for p in maps if p.parents[1].name == model):
            group = open_store(mp, deep=False)
            if entry in group and "maps_a" in group[entry]:
                g = group[entry]
                method_maps[mp.stem] = (np.asarray(g["maps_a"][:]), np.asarray(g["maps_b"][:]), [str(i) for i in g["ids"][:]])
        panels = []
        for si, sid in enumerate(ids):
            outlines = [masks[si][i] for i in range(masks.shape[1])] if masks.ndim == 4 else [masks[si]]
            colours = [OUTLINE_COLOURS[i % len(OUTLINE_COLOURS)] for i in range(len(outlines))]
            for target, label in ((0, "a"), (1, "b")):
                cls = f" = {int(targets[si][target])}" if targets is not None else ""
                panels.append((f"#{accepted[si]} → {label}{cls}", image_rgb(images[si], outlines, colours)))
                for method, (ma, mb, mids) in sorted(method_maps.items()):
                    if sid in mids:
                        panels.append((f"{method} ({label})", map_rgb((ma if target == 0 else mb)[mids.index(sid)])))
        fig = mosaic(panels, 1 + len(method_maps))
        page.figure(fig, figure_name("axioms", model, entry), f"{entry} on {model}")


def _dissection(page: Page, outputs: Iterable[str], attribution_stores: Iterable[str], sample_stores: Iterable[str], max_samples: int) -> None:
    """Network-dissection counts and the top units of semantic attribution (attrflow.report.dissection)."""
    from attrflow.report.dissection import COUNTS_FILE, UNITS_FILE, dissection_section

    paths = {Path(p).name: Path(p) for p in outputs}
    dissection_section(page, paths.get(COUNTS_FILE), paths.get(UNITS_FILE), attribution_stores, sample_stores, max_samples)


def _roar(page: Page, roar_outputs: Iterable[str]) -> None:
    pngs = [Path(p) for p in roar_outputs if str(p).endswith(".png") and Path(p).exists()]
    if not pngs:
        return
    page.h(2, "ROAR: accuracy after retraining on inputs with the most relevant pixels removed")
    for png in sorted(pngs):
        rel = os.path.relpath(png, page.out_html.parent).replace(os.sep, "/")
        page.raw(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(png.stem)}"><figcaption>{html.escape(png.stem)}</figcaption></figure>')


def _probes(page: Page, probe_outputs: Iterable[str]) -> None:
    """UNI's baseline-bias probes: how much worse each method scores on corrupted inputs."""
    tables = [Path(p) for p in probe_outputs if Path(p).name == "probes.parquet" and Path(p).exists()]
    if not tables:
        return
    plt = _plt()
    probes = pd.read_parquet(tables[0])
    page.h(2, "Baseline-bias probes")
    page.p(
        "Loss on corrupted inputs (clean − corrupted score, oriented so that positive = worse on corrupted), "
        "averaged over corruptions and severities of each family, per method (UNI, Azarian et al.). "
        "The tables are probes.md / probes.parquet / probes_bias.parquet."
    )
    for model, part in probes.groupby("model", sort=True):
        metrics = sorted(part["metric"].unique())
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
        _inches(fig, 0.5, 0.2, 1.3, 0.3, wspace=0.3)
        for ax, metric in zip(axes[0], metrics):
            grid = part[part["metric"] == metric].pivot_table(index="method", columns="family", values="loss", aggfunc="mean")
            width = 0.8 / max(1, grid.shape[1])
            for j, family in enumerate(grid.columns):
                ax.bar(np.arange(grid.shape[0]) + j * width, grid[family], width, label=family)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xticks(np.arange(grid.shape[0]) + 0.4 - width / 2, grid.index, rotation=90, fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(metric, fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5)
        page.figure(fig, figure_name("probes", model), f"Loss on corrupted inputs per corruption family, {model}")


def write_report(
    *,
    reports: str | Path,
    out_html: str | Path,
    figures: str | Path | None = None,
    sample_stores: Iterable[str] = (),
    attribution_stores: Iterable[str] = (),
    axiom_stores: Iterable[str] = (),
    roar_outputs: Iterable[str] = (),
    probe_outputs: Iterable[str] = (),
    gallery_samples: int = GALLERY_SAMPLES,
    dissection_outputs: Iterable[str] = (),
) -> Path:
    """Write `out_html` from the Parquet reports in `reports` and the stores named."""
    reports = Path(reports)
    out_html = Path(out_html)
    page = Page(out_html, Path(figures) if figures else out_html.parent / "figures")
    summary = pd.read_parquet(reports / "summary.parquet")
    ranks = pd.read_parquet(reports / "ranks.parquet")
    quality = pd.read_parquet(reports / "metric_quality.parquet")
    agreement = pd.read_parquet(reports / "metric_agreement.parquet")
    costs = pd.read_parquet(reports / "costs.parquet") if (reports / "costs.parquet").exists() else None
    from attrflow.report.model_quality import distinct_rows

    fns = distinct_rows(reports / "scores.parquet", ["metric", "metric_fn"])
    page.p(
        "Every comparison is paired and made on the samples the compared methods share; significance is "
        "judged with the Wilcoxon signed-rank test, Holm-corrected within each (dataset, model, metric), and "
        "the Friedman test with Nemenyi critical differences (Demšar 2006). The tables behind this page are "
        "comparisons.parquet, ranks.parquet, metric_quality.parquet and metric_agreement.parquet."
    )
    from attrflow.report.model_quality import card_classes, model_accuracy, sample_labels

    accuracy = model_accuracy(sample_labels(reports / "scores.parquet"), card_classes(reports.resolve().parent / "models"))
    _what_ran(page, summary, ranks, costs, accuracy)
    _cd_diagrams(page, ranks)
    _rank_heatmaps(page, ranks)
    _agreement(page, agreement, quality)
    _mufidelity_draws(page, ranks, dict(zip(fns["metric"], fns["metric_fn"])))
    _galleries(page, sample_stores, attribution_stores, gallery_samples)
    _dissection(page, dissection_outputs, attribution_stores, sample_stores, gallery_samples)
    _curves(page, reports / "scores.parquet", ranks, CURVE_METHODS)
    _quality_vs_cost(page, ranks, costs)
    _axioms(page, axiom_stores, AXIOM_SAMPLES)
    _roar(page, roar_outputs)
    _probes(page, probe_outputs)
    page.write("attrflow report")
    return out_html
