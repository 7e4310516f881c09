"""What the workflow computes for a checked config: jobs, shards, params and fingerprints.

The rules in `rules/*.smk` are wiring; every decision about which jobs exist and what each one
depends on is made here, in plain Python (no torch), where it can be unit-tested. All values
handed to Snakemake `params` are builtin types (str, int, float, bool, lists and dicts of
them): Snakemake silently ignores numpy scalars and re-runs forever on sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from attrflow.catalog import PACKAGE_DIR, catalog
from attrflow.fingerprint import code_fingerprint

# Keys of a dataset entry that only say how many evaluation samples to use. Sample i does not
# depend on them (adapters are prefix-stable), so they are left out of the spec each shard job
# sees: growing the evaluation set adds shards and leaves finished ones alone.
SAMPLE_COUNT_KEYS = {"n", "n_test"}


@dataclass(frozen=True)
class Plan:
    config: dict

    @property
    def run(self) -> dict:
        return self.config["run"]

    # ---------------------------------------------------------------- datasets and shards
    def dataset_spec(self, dataset: str) -> dict:
        spec = dict(self.config["datasets"][dataset])
        spec.setdefault("seed", self.config["seed"])
        return spec

    @cached_property
    def _eval_counts(self) -> dict[str, int]:
        from attrflow.data.adapters import count_eval_samples

        return {name: count_eval_samples(self.dataset_spec(name)) for name in self.run["datasets"]}

    def eval_count(self, dataset: str) -> int:
        return self._eval_counts[dataset]

    def shards(self, dataset: str) -> list[int]:
        return list(range(math.ceil(self.eval_count(dataset) / self.config["shard_size"])))

    def shard_range(self, dataset: str, shard: int) -> list[int]:
        size = self.config["shard_size"]
        start = int(shard) * size
        return [start, min(start + size, self.eval_count(dataset))]

    def shard_dataset_spec(self, dataset: str) -> dict:
        return {k: v for k, v in self.dataset_spec(dataset).items() if k not in SAMPLE_COUNT_KEYS}

    # ---------------------------------------------------------------- models
    def model_spec(self, model: str) -> dict:
        return dict(self.config["models"][model])

    def model_dataset(self, model: str) -> str | None:
        return self.config["models"][model].get("dataset")

    def model_dataset_spec(self, model: str) -> dict:
        dataset = self.model_dataset(model)
        return self.shard_dataset_spec(dataset) if dataset else {}

    @cached_property
    def models_code(self) -> str:
        return code_fingerprint(PACKAGE_DIR / "models" / "loading.py")

    # ---------------------------------------------------------------- methods and metrics
    def method_entry(self, method: str) -> dict:
        return dict(self.config["methods"][method])

    def method_fingerprint(self, method: str) -> str:
        return code_fingerprint(catalog("methods")[self.config["methods"][method]["fn"]].module)

    def method_references(self, method: str) -> str | None:
        """The reference set a method entry needs (e.g. "train_pool" for Expected Gradients)."""
        return catalog("methods")[self.config["methods"][method]["fn"]].options.get("references")

    def references_spec(self, kind: str) -> dict:
        return dict(self.config.get("references", {}).get(kind, {}))

    @cached_property
    def references_code(self) -> str:
        return code_fingerprint(PACKAGE_DIR / "methods" / "references.py")

    def metric_entries(self) -> dict[str, dict]:
        return {name: dict(self.config["metrics"][name]) for name in self.run["metrics"]}

    def metric_fingerprints(self) -> dict[str, str]:
        entries = catalog("metrics")
        return {
            name: code_fingerprint(entries[self.config["metrics"][name]["fn"]].module)
            for name in self.run["metrics"]
        }

    def gpu_per_job(self) -> int:
        device = self.config["device"]
        if device == "cpu":
            return 0
        if device.startswith("cuda"):
            return 1
        return int(gpu_present())

    def runtime(self) -> dict[str, Any]:
        """Settings every compute job receives."""
        return {
            "device": self.config["device"],
            "seed": self.config["seed"],
            "max_batch": self.config["max_batch"],
            "target": self.config["target"],
        }

    # ---------------------------------------------------------------- outputs
    def attribution_stores(self, results: str = "results") -> list[str]:
        return [path for path, _ in self.attribution_stores_with_ranges(results)]

    def attribution_stores_with_ranges(self, results: str = "results") -> list[tuple[str, list[int]]]:
        return [
            (f"{results}/attributions/{d}/{m}/{me}/shard-{s}.zarr", self.shard_range(d, s))
            for d in self.run["datasets"]
            for m in self.run["models"]
            for me in self.run["methods"]
            for s in self.shards(d)
        ]

    def score_files(self, results: str = "results") -> list[str]:
        return [
            f"{results}/scores/{d}/{m}/{me}/{mt}.parquet"
            for d in self.run["datasets"]
            for m in self.run["models"]
            for me in self.run["methods"]
            for mt in self.run["metrics"]
        ]

    def sample_stores(self, results: str = "results") -> list[str]:
        names = set(self.run["datasets"])
        names.update(d for m in self.run["models"] if (d := self.model_dataset(m)))
        return [f"{results}/data/{d}/samples.zarr" for d in sorted(names)]


def workdir_path(value: str, workdir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (workdir / path).resolve())


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (called while planning)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
