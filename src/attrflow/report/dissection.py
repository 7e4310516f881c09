"""Network-dissection counts (Bau et al., 2017; Khakzar et al., 2021) and the semantic
attribution section of the report.

`write_dissection_reports` reads the per-layer tables of the `dissect` jobs and writes

* ``dissection_counts.parquet``: per (dataset, model, layer, concept) the number of units that
  detect the concept (each unit counts for its best concept, when that IoU exceeds the detector
  threshold), and the layer's unit count — the "network-dissection counts";
* ``dissection_units.parquet``: per unit its best concept, IoU, threshold and whether it is a
  detector — what the report uses to name the top units of semantic attribution;
* ``dissection.md``: the counts as Markdown tables, layers × detected concepts.

`dissection_section` draws both into the HTML report: the counts as a layer × concept table, and,
for every ``semantic_attribution`` method, the top units' maps of a few samples named by their
concept.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

COUNTS_FILE = "dissection_counts.parquet"
UNITS_FILE = "dissection_units.parquet"
KEYS = ["dataset", "model", "layer"]
SEMANTIC_FN = "semantic_attribution"


def read_tables(tables: Iterable[str | Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in tables if Path(p).exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def detector_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, layer, concept): detectors and the layer's units (module doc)."""
    columns = [*KEYS, "module", "concept", "category", "detectors", "units", "iou_threshold"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    units = rows.groupby(KEYS).agg(units=("unit", "nunique"), iou_threshold=("iou_threshold", "first"))
    counts = (
        rows.groupby([*KEYS, "module", "concept", "category"], sort=True)["detector"]
        .sum()
        .astype("int64")
        .rename("detectors")
        .reset_index()
    )
    return counts.join(units, on=KEYS)[columns]


def unit_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Per unit: its best concept, that IoU, its threshold and whether it detects the concept."""
    columns = [*KEYS, "module", "unit", "concept", "iou", "threshold", "detector"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    return rows[rows["best"]][columns].sort_values([*KEYS, "unit"]).reset_index(drop=True)


def write_dissection_reports(
    tables: Iterable[str | Path], out_counts: str | Path, out_units: str | Path, out_markdown: str | Path | None = None
) -> None:
    import pyarrow as pa

    from attrflow.report.schema import write_table

    rows = read_tables(tables)
    counts = detector_counts(rows)
    write_table(pa.Table.from_pandas(counts, preserve_index=False), out_counts)
    write_table(pa.Table.from_pandas(unit_labels(rows), preserve_index=False), out_units)
    if out_markdown is not None:
        _write_text(Path(out_markdown), counts_markdown(counts))


def counts_markdown(counts: pd.DataFrame) -> str:
    """The network-dissection counts as Markdown: per dataset and model, layers × detected concepts."""
    lines = ["# Network Dissection (Bau et al., 2017): concept detectors per layer", ""]
    if counts.empty:
        return "\n".join([*lines, "No layer was dissected.", ""])
    threshold = ", ".join(f"{v:g}" for v in sorted(counts["iou_threshold"].unique()))
    lines += [f"A unit detects its best concept when their IoU exceeds {threshold}; each unit counts once.", ""]
    grid = counts_grid(counts)
    for (dataset, model), part in grid.groupby(["dataset", "model"], sort=True):
        fixed = ("layer", "units", "detectors")
        columns = [c for c in part.columns if c in fixed or (c not in ("dataset", "model") and (part[c] != 0).any())]
        lines += [f"## {model} on {dataset}", "", "| " + " | ".join(map(str, columns)) + " |",
                  "|" + "---|" * len(columns)]  # fmt: skip
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in part[columns].itertuples(index=False)]
        lines.append("")
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def counts_grid(counts: pd.DataFrame) -> pd.DataFrame:
    """Detectors per layer (rows) × concept (columns, only concepts some unit detects); every
    dissected layer has its row, with zeros where no unit detects anything."""
    if counts.empty:
        return pd.DataFrame()
    rows = counts.groupby([*KEYS, "units"], sort=True)["detectors"].sum().reset_index()
    detected = counts[counts.groupby("concept")["detectors"].transform("sum") > 0]
    if detected.empty:
        return rows
    grid = detected.pivot_table(index=[*KEYS, "units"], columns="concept", values="detectors", aggfunc="sum", fill_value=0)
    grid = rows.merge(grid.reset_index(), on=[*KEYS, "units"], how="left")
    concepts = [c for c in grid.columns if c not in (*KEYS, "units", "detectors")]
    grid[concepts] = grid[concepts].fillna(0).astype("int64")
    return grid[[*KEYS, "units", *concepts, "detectors"]]


def labels_for(units: pd.DataFrame, dataset: str, model: str, layer: str) -> tuple[pd.DataFrame, str | None]:
    """The unit labels of (model, layer) and the dataset they come from: the explained dataset
    when it was dissected, else the first dissected one (e.g. Broden for ImageNet models)."""
    if units.empty:
        return units, None
    same = units[(units["model"] == model) & (units["layer"] == layer)]
    if same.empty:
        return same, None
    source = dataset if dataset in set(same["dataset"]) else sorted(same["dataset"].unique())[0]
    return same[same["dataset"] == source], source


def unit_title(unit: int, by_unit: dict[int, tuple[str, float, bool]], contributions: np.ndarray) -> str:
    """"u<index> <concept or -> <share of the layer's Σ|s|>" for a top unit's panel."""
    concept, _, detector = by_unit.get(unit, ("not dissected", float("nan"), False))
    name = concept.split(":", 1)[-1] if detector else "-"
    share = contributions[unit] / max(float(contributions.sum()), 1e-12)
    return f"u{unit} {name} {share:.0%}"


def _semantic_stores(attribution_stores: Iterable[str]) -> list[tuple[str, str, str, Path]]:
    """(dataset, model, method, path) of the semantic attribution shards that hold maps."""
    from attrflow.store import read_attrs

    found = []
    for path in sorted(attribution_stores):
        p = Path(path)
        if not p.exists():
            continue
        attrs = read_attrs(p)
        if attrs.get("fn") == SEMANTIC_FN and attrs.get("applicable", True):
            found.append((p.parents[2].name, p.parents[1].name, p.parent.name, p))
    return found


def _upsampled(unit_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    factors = (size[0] / unit_map.shape[0], size[1] / unit_map.shape[1])
    return zoom(np.asarray(unit_map, dtype=np.float64), factors, order=1)[: size[0], : size[1]]


def dissection_section(
    page, counts_path: Path | None, units_path: Path | None, attribution_stores: Iterable[str],
    sample_stores: Iterable[str], max_samples: int,
) -> None:  # fmt: skip
    """The report's Network Dissection and semantic attribution section (module doc)."""
    from attrflow.report.html import image_rgb, map_rgb, mosaic, figure_name
    from attrflow.store import open_store, read_attrs

    counts = pd.read_parquet(counts_path) if counts_path and Path(counts_path).exists() else pd.DataFrame()
    units = pd.read_parquet(units_path) if units_path and Path(units_path).exists() else pd.DataFrame()
    semantic = _semantic_stores(attribution_stores)
    if counts.empty and not semantic:
        return
    page.h(2, "Network Dissection and semantic attribution")
    if not counts.empty:
        threshold = ", ".join(f"{v:g}" for v in sorted(counts["iou_threshold"].unique()))
        page.p(
            "Network-dissection counts (Bau et al., 2017): per layer, the units whose best concept has an IoU above "
            f"{threshold} with the concept's pixels (each unit's mask: its activation map upsampled to the image, "
            "above its top-0.5 % level over the dataset). Columns are the concepts some unit detects; the tables are "
            f"{COUNTS_FILE} and {UNITS_FILE}."
        )
        page.table(counts_grid(counts))
    samples = {Path(p).parent.name: p for p in sample_stores if Path(p).exists()}
    for dataset, model, method, path in semantic:
        if dataset not in samples:
            continue
        shard = open_store(path, deep=False)
        if "diagnostics" not in shard or "top_units" not in shard["diagnostics"]:
            continue
        layer = str(read_attrs(path).get("params", {}).get("layer", "default"))
        labels, source = labels_for(units, dataset, model, layer)
        by_unit = {int(r.unit): (r.concept, float(r.iou), bool(r.detector)) for r in labels.itertuples()}
        n = min(max_samples, int(shard["ids"].shape[0]))
        top = np.asarray(shard["diagnostics"]["top_units"][:n])
        unit_maps = np.asarray(shard["diagnostics"]["top_unit_maps"][:n])
        contributions = np.asarray(shard["diagnostics"]["unit_contributions"][:n])
        ids = [str(i) for i in shard["ids"][:n]]
        store = open_store(samples[dataset], deep=False)
        all_ids = [str(i) for i in store["ids"][:]]
        panels = []
        for r, sid in enumerate(ids):
            if sid not in all_ids:
                continue
            image = np.asarray(store["images"][all_ids.index(sid)])
            panels.append((sid, image_rgb(image)))
            for j, unit in enumerate(top[r].tolist()):
                title = unit_title(unit, by_unit, contributions[r])
                panels.append((title, map_rgb(_upsampled(unit_maps[r, j], image.shape[1:]))))
        if not panels:
            continue
        cols = 1 + top.shape[1]
        page.p(
            f"Semantic attribution (Khakzar et al., 2021), {method} on {model} / {dataset}, layer {layer!r}: per "
            "sample, the units of highest contribution Σ|s| (per-unit Integrated Gradients at the layer), each "
            "titled with its index, its concept when Network Dissection found it a detector ('-' otherwise) and its "
            "share of the layer's total contribution; each map is the unit's IG map divided by its largest value. "
            + (f"Concepts from the dissection on {source}." if source else "This layer was not dissected.")
        )
        page.figure(mosaic(panels, cols), figure_name("semantic", dataset, model, method), f"Top units, {method} on {model}")
