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
# Keys of a method entry that choose where it runs, not what it computes.
SELECTION_KEYS = {"samples", "models", "datasets"}


@dataclass(frozen=True)
class Plan:
    config: dict

    @property
    def run(self) -> dict:
        return self.config["run"]

    # ---------------------------------------------------------------- datasets and shards
    def dataset_spec(self, dataset: str) -> dict:
        """The entry with the run's seed filled in; a `corrupted` entry's `of` name becomes that
        entry's spec, so the job builds the base samples itself and its params cover them."""
        spec = dict(self.config["datasets"][dataset])
        spec.setdefault("seed", self.config["seed"])
        if spec["kind"] == "corrupted":
            spec["of"] = self.dataset_spec(spec["of"])
        return spec

    @cached_property
    def _eval_counts(self) -> dict[str, int]:
        from attrflow.data.adapters import count_eval_samples

        return {name: count_eval_samples(self.dataset_spec(name)) for name in self.run["datasets"]}

    def eval_count(self, dataset: str, method: str | None = None) -> int:
        """Evaluation samples of ``dataset``; for ``method``, at most its entry's ``samples`` limit.

        A limited method explains the first N samples (a prefix, so its shards are those of the
        unlimited methods, cut short, and its scores compare with theirs on the same images).
        """
        count = self._eval_counts[dataset]
        limit = self.config["methods"][method].get("samples") if method else None
        return min(count, limit) if limit else count

    def shards(self, dataset: str, method: str | None = None) -> list[int]:
        return list(range(math.ceil(self.eval_count(dataset, method) / self.config["shard_size"])))

    def shard_range(self, dataset: str, shard: int, method: str | None = None) -> list[int]:
        size = self.config["shard_size"]
        start = int(shard) * size
        return [start, min(start + size, self.eval_count(dataset, method))]

    def shard_dataset_spec(self, dataset: str) -> dict:
        return _without_sample_counts(self.dataset_spec(dataset))

    def corrupted_datasets(self) -> dict[str, dict]:
        """Selected `corrupted` datasets whose base is selected too: {name: {of, corruption, severity}}.

        These are the pairs the probe report compares; an unpaired variant has nothing to compare with.
        """
        from attrflow.data.corruption_catalog import canonical_corruption

        selected = set(self.run["datasets"])
        probes = {}
        for name in self.run["datasets"]:
            spec = self.config["datasets"][name]
            if spec["kind"] == "corrupted" and spec["of"] in selected:
                probes[name] = {
                    "of": spec["of"],
                    "corruption": canonical_corruption(spec["corruption"]),
                    "severity": int(spec["severity"]),
                }
        return probes

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
        """What a job computing ``method`` depends on: the entry less where and on how many
        samples it runs (those reach jobs as their sample ranges and as the jobs that exist)."""
        return {k: v for k, v in self.config["methods"][method].items() if k not in SELECTION_KEYS}

    def method_fingerprint(self, method: str) -> str:
        return code_fingerprint(catalog("methods")[self.config["methods"][method]["fn"]].module)

    def method_references(self, method: str) -> str | None:
        """The reference set a method entry needs (e.g. "train_pool" for Expected Gradients)."""
        return catalog("methods")[self.config["methods"][method]["fn"]].options.get("references")

    def runs_on(self, method: str, model: str, dataset: str | None = None) -> bool:
        """Whether ``method`` is evaluated on ``model`` (and ``dataset``): an entry may name the
        models and datasets it runs on, so a costly method or a probe need not run everywhere."""
        entry = self.config["methods"][method]
        on_dataset = dataset is None or dataset in entry.get("datasets", [dataset])
        return model in entry.get("models", [model]) and on_dataset

    def pairs(self) -> list[tuple[str, str]]:
        """The selected (model, method) pairs (on at least one selected dataset)."""
        return [
            (m, me)
            for m in self.run["models"]
            for me in self.run["methods"]
            if any(self.runs_on(me, m, d) for d in self.run["datasets"])
        ]

    def triples(self) -> list[tuple[str, str, str]]:
        """The selected (dataset, model, method) evaluations."""
        return [
            (d, m, me)
            for d in self.run["datasets"]
            for m in self.run["models"]
            for me in self.run["methods"]
            if self.runs_on(me, m, d)
        ]

    def references_spec(self, kind: str) -> dict:
        return dict(self.config.get("references", {}).get(kind, {}))

    @cached_property
    def references_code(self) -> str:
        return code_fingerprint(PACKAGE_DIR / "methods" / "references.py")

    def scores_method(self, metric: str, method: str) -> bool:
        """Whether ``metric`` scores ``method`` (a metric entry may name the methods it scores)."""
        return method in self.config["metrics"][metric].get("methods", [method])

    def metric_entries(self, method: str | None = None) -> dict[str, dict]:
        """The selected metric entries (those that score ``method``), less their method list:
        a score job depends on whether a metric applies, not on which other methods it scores."""
        return {
            name: {k: v for k, v in self.config["metrics"][name].items() if k != "methods"}
            for name in self.run["metrics"]
            if method is None or self.scores_method(name, method)
        }

    def metric_fingerprints(self, method: str | None = None) -> dict[str, str]:
        entries = catalog("metrics")
        return {
            name: code_fingerprint(entries[self.config["metrics"][name]["fn"]].module)
            for name in self.metric_entries(method)
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
            (f"{results}/attributions/{d}/{m}/{me}/shard-{s}.zarr", self.shard_range(d, s, me))
            for d, m, me in self.triples()
            for s in self.shards(d, me)
        ]

    def score_files(self, results: str = "results") -> list[str]:
        return [
            f"{results}/scores/{d}/{m}/{me}/{mt}.parquet"
            for d, m, me in self.triples()
            for mt in self.run["metrics"]
        ]

    def scored_samples(self, dataset: str, method: str, metric: str) -> int:
        """Rows a score file holds: the method's samples, cut to the metric's limit if it has one."""
        if not self.scores_method(metric, method):
            return 0
        limit = self.config["metrics"][metric].get("samples")
        count = self.eval_count(dataset, method)
        return min(count, limit) if limit else count

    def sample_stores(self, results: str = "results") -> list[str]:
        names = set(self.run["datasets"])
        names.update(d for m in self.run["models"] if (d := self.model_dataset(m)))
        return [f"{results}/data/{d}/samples.zarr" for d in sorted(names)]

    # ---------------------------------------------------------------- axiom synthesis
    def axiom_setting(self, model: str, entry: str) -> dict:
        """The complete setting of axiom entry ``entry`` on ``model`` (every default filled in)."""
        from attrflow.axioms.settings import resolve_setting

        return resolve_setting(self.config, model, entry)

    @cached_property
    def axioms_code(self) -> dict[str, str]:
        """Fingerprints of the synthesis and of the scoring code (each with what it imports)."""
        return {
            "synthesis": code_fingerprint(PACKAGE_DIR / "axioms" / "synthesis.py"),
            "metrics": code_fingerprint(PACKAGE_DIR / "axioms" / "metrics.py"),
        }

    def axiom_entries(self) -> list[str]:
        return list(self.run.get("axioms", []))

    def axiom_methods(self, model: str) -> list[str]:
        """Method entries explained on ``model``'s axiom inputs.

        ``run.axiom_methods`` (default: ``run.methods``), less the entries whose ``models:`` leaves
        ``model`` out. A method's ``datasets:`` and ``samples:`` do not apply: axiom inputs belong
        to no dataset and have their own sample count.
        """
        if not self.axiom_entries():
            return []
        names = self.run.get("axiom_methods", self.run["methods"])
        return [me for me in names if self.runs_on(me, model)]

    def axiom_models(self) -> list[str]:
        """Models axiom inputs are synthesised for: ``run.axiom_models`` (default ``run.models``)."""
        if not self.axiom_entries():
            return []
        return list(self.run.get("axiom_models", self.run["models"]))

    def axiom_pairs(self) -> list[tuple[str, str]]:
        """(model, method) of every `attribute_axioms` job: one job covers all selected entries."""
        return [(m, me) for m in self.axiom_models() for me in self.axiom_methods(m)]

    def axiom_inputs(self, model: str, results: str = "results") -> list[str]:
        """The `synthesize_axioms` stores of ``model``, in `axiom_entries` order."""
        return [f"{results}/axioms/{model}/{a}/inputs.zarr" for a in self.axiom_entries()]

    def axiom_maps(self, model: str, results: str = "results") -> list[str]:
        return [f"{results}/axioms/{model}/maps/{me}.zarr" for me in self.axiom_methods(model)]

    def axiom_stores(self, results: str = "results") -> list[str]:
        return [
            path for m in self.axiom_models() for path in self.axiom_inputs(m, results) + self.axiom_maps(m, results)
        ]

    def axiom_score_files(self, results: str = "results") -> list[str]:
        """One `score_axioms` file per model: every method on every entry (scoring reads maps only)."""
        return [f"{results}/axioms/{m}/scores.parquet" for m in self.axiom_models()]

    # ---------------------------------------------------------------- ROAR and DiffROAR
    @property
    def roar(self) -> dict:
        """The `roar:` section ({} when ROAR is not configured: then it plans no job)."""
        return self.config.get("roar") or {}

    def roar_models(self) -> list[str]:
        return list(self.roar.get("models") or self.run["models"])

    def roar_fractions(self) -> dict[str, float]:
        """Wildcard label → fraction, e.g. "0.1" → 0.1."""
        return {fraction_label(f): float(f) for f in self.roar.get("fractions", [])}

    def roar_recipe(self, repeat: int) -> dict[str, Any]:
        """How repeat `repeat` retrains: the same for every method, fraction and arm."""
        roar = self.roar
        arch = roar["arch"]
        return {
            "arch": arch,
            "width": int(roar.get("width") or ROAR_DEFAULT_WIDTH[arch]),
            "epochs": int(roar["epochs"]),
            "lr": float(roar["lr"]),
            "batch_size": int(roar["batch_size"]),
            "optimiser": roar["optimiser"],
            "seed": int(roar.get("seed", self.config["seed"])) + int(repeat),
        }

    @cached_property
    def roar_code(self) -> str:
        """Fingerprint of the retrain code: masking, retraining, training loop and architectures.

        The job module counts by its own text only: its closure reaches every method through the
        train-map job, and editing a method must re-run that method's retrains alone (its maps change).
        """
        from attrflow.fingerprint import file_sha256, value_fingerprint

        return value_fingerprint(
            [
                code_fingerprint(PACKAGE_DIR / "roar" / "masking.py"),
                code_fingerprint(PACKAGE_DIR / "roar" / "retrain.py"),
                file_sha256(PACKAGE_DIR / "jobs" / "roar.py"),
            ]
        )

    def roar_train_maps_setting(self, dataset: str, method: str) -> dict[str, Any]:
        """Params of a train-split maps job: what an attribution shard job gets, less the range."""
        return {
            "method": method,
            "entry": self.method_entry(method),
            "code": self.method_fingerprint(method),
            "dataset_spec": self.shard_dataset_spec(dataset),
            **self.runtime(),
        }

    def roar_test_maps(self, dataset: str, model: str, method: str, results: str = "results") -> list[str]:
        return [
            f"{results}/attributions/{dataset}/{model}/{method}/shard-{s}.zarr" for s in self.shards(dataset, method)
        ]

    def roar_retrain_setting(
        self, dataset: str, model: str | None, method: str | None, fraction: str | None, arm: str | None, repeat: int
    ) -> dict[str, Any]:
        """Params of one retrain (method None: the no-removal run).

        Only what the retrained network depends on: never report settings, scheduler resources or
        the lists of fractions and methods, so changing those re-runs the report alone.
        """
        setting: dict[str, Any] = {
            "dataset": dataset,
            "repeat": int(repeat),
            "recipe": self.roar_recipe(repeat),
            "code": self.roar_code,
            "dataset_spec": self.shard_dataset_spec(dataset),
            "device": self.config["device"],
        }
        if method is not None:
            setting.update(
                model=model,
                method=method,
                method_entry=self.method_entry(method),
                method_code=self.method_fingerprint(method),
                fraction=self.roar_fractions()[fraction],
                arm=arm,
                order=self.roar["order"],
            )
        return setting

    def roar_result_files(self, results: str = "results") -> list[str]:
        if not self.roar:
            return []
        repeats = range(int(self.roar["repeats"]))
        files = [f"{results}/roar/{d}/no_removal/repeat-{r}.json" for d in self.run["datasets"] for r in repeats]
        files += [
            f"{results}/roar/{d}/{m}/{me}/fraction-{f}/{arm}-repeat-{r}.json"
            for d in self.run["datasets"]
            for m in self.roar_models()
            for me in self.roar["methods"]
            for f in self.roar_fractions()
            for arm in ("most", "least")
            for r in repeats
        ]
        return files

    def roar_figures(self, results: str = "results") -> dict[str, str]:
        if not self.roar:
            return {}
        return {d: f"{results}/reports/figures/roar-{d}.png" for d in self.run["datasets"]}

    def roar_outputs(self, results: str = "results") -> list[str]:
        """The ROAR report files `all` asks for; none when ROAR is not configured."""
        if not self.roar:
            return []
        return [
            f"{results}/reports/roar.parquet",
            f"{results}/reports/roar.md",
            *self.roar_figures(results).values(),
        ]


# ROAR's network width when `roar.width` is not given: each architecture's usual one.
ROAR_DEFAULT_WIDTH = {"small_cnn": 32, "preact_resnet18": 64}


def fraction_label(fraction: float) -> str:
    """A fraction as a path component without exponent: 0.1 → "0.1", 0.25 → "0.25"."""
    return f"{float(fraction):.6f}".rstrip("0").rstrip(".") or "0"


def _without_sample_counts(spec: dict) -> dict:
    out = {k: v for k, v in spec.items() if k not in SAMPLE_COUNT_KEYS}
    if isinstance(out.get("of"), dict):
        out["of"] = _without_sample_counts(out["of"])
    return out


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
