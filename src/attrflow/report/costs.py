"""What each method cost, from the provenance its attribution stores carry."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from attrflow.report.schema import COSTS, write_table
from attrflow.store import read_attrs


def params_json(params: dict) -> str:
    """A method's parameters as canonical JSON (sorted keys): equal settings, equal strings."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def image_size(dataset_spec: dict) -> int | None:
    """The side of the square images a dataset entry yields (a corrupted entry: its base's)."""
    while dataset_spec.get("kind") == "corrupted" and isinstance(dataset_spec.get("of"), dict):
        dataset_spec = dataset_spec["of"]
    side = dataset_spec.get("crop") or dataset_spec.get("size") or dataset_spec.get("resize")
    return int(side) if side else None


def collect_costs(store_paths: Iterable[str | Path]) -> pd.DataFrame:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for path in store_paths:
        attrs = read_attrs(path)
        groups[(attrs["dataset"], attrs["model"], attrs["method"])].append(attrs)
    rows = []
    for (dataset, model, method), shards in sorted(groups.items()):
        n = sum(a["sample_range"][1] - a["sample_range"][0] for a in shards)
        wall = sum(a.get("wall_time_s", 0.0) for a in shards)
        applicable = all(a.get("applicable", True) for a in shards)
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "method_fn": shards[0].get("fn", ""),
                "applicable": applicable,
                "reason": None if applicable else shards[0].get("reason"),
                "n": n,
                "wall_s": wall,
                "wall_ms_per_image": 1000 * wall / n if n else float("nan"),
                "forward_per_image": sum(a.get("forward_samples", 0) for a in shards) / n if n else float("nan"),
                "backward_per_image": sum(a.get("backward_samples", 0) for a in shards) / n if n else float("nan"),
                "peak_memory_mb": max(a.get("peak_memory_bytes", -1) for a in shards) / 2**20,
                "device": shards[0].get("device", ""),
                "params": params_json(shards[0].get("params", {})),
                "image_size": image_size(shards[0].get("dataset_spec", {})),
            }
        )
    return pd.DataFrame(rows, columns=COSTS.names)


def write_costs(store_paths: Iterable[str | Path], out: str | Path) -> pd.DataFrame:
    costs = collect_costs(store_paths)
    write_table(pa.Table.from_pandas(costs, schema=COSTS, preserve_index=False), out)
    return costs
