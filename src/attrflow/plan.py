"""What the workflow computes for a checked config: jobs, shards, params and fingerprints.

The rules in `rules/*.smk` are wiring; every decision about which jobs exist and what each one
depends on is made here, in plain Python (no torch), where it can be unit-tested. All values
handed to Snakemake `params` are builtin types (str, int, float, bool, lists and dicts of
them): Snakemake silently ignores numpy scalars and re-runs forever on sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from attrflow.catalog import PACKAGE_DIR, catalog
from attrflow.fingerprint import canonical, code_fingerprint, registered_symbols, symbols_fingerprint
from attrflow.params import METHOD_ENTRY_FORMAT

# Keys of a dataset entry that only say how many evaluation samples to use. Sample i does not
# depend on them (adapters are prefix-stable), so they are left out of the spec each shard job
# sees: growing the evaluation set adds shards and leaves finished ones alone.
SAMPLE_COUNT_KEYS = {"n", "n_test"}
# Keys of a method entry that choose where and in how many jobs it runs, not what it computes.
SELECTION_KEYS = {"samples", "models", "datasets", "shards_per_job"}


# The functions each kind of job runs: with the registered function it computes, the roots of
# its code fingerprint (see attrflow.fingerprint).
ATTRIBUTE_JOB = ("attrflow.jobs.attribute", "attribute_shard")
SCORE_METRIC_JOB = ("attrflow.jobs.score", "score_metric")
PREPARE_DATASET_JOB = ("attrflow.jobs.prepare", "prepare_dataset_store")
PREPARE_EVAL_SHARD_JOB = ("attrflow.jobs.prepare", "prepare_eval_shard")
PREPARE_MODEL_JOB = ("attrflow.jobs.prepare", "prepare_model_files")
REFERENCES_JOB = ("attrflow.jobs.references", "prepare_reference_store")
DISSECT_JOB = ("attrflow.dissection.job", "dissect_layer")
SEMANTIC_FN = "semantic_attribution"


@dataclass(frozen=True)
class Plan:
    config: dict
    workdir: str = "."

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
        return canonical(spec)

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

    def shards_per_job(self, method: str | None = None) -> int:
        """Evaluation shards one attribution (and score) job of ``method`` covers: 1 unless its
        entry says `shards_per_job`, so cheap methods run as few long jobs while costly ones keep
        one job per shard. It groups work, never changes numbers: each evaluation shard inside a
        job is explained and scored as its own job would have done it."""
        if method is None:
            return 1
        return int(self.config["methods"][method].get("shards_per_job", 1))

    def job_size(self, method: str | None = None) -> int:
        """Samples one job of ``method`` covers (without a method: one evaluation shard's)."""
        return self.config["shard_size"] * self.shards_per_job(method)

    def shards(self, dataset: str, method: str | None = None) -> list[int]:
        """The jobs of ``method`` on ``dataset`` (without a method: the evaluation shards)."""
        return list(range(math.ceil(self.eval_count(dataset, method) / self.job_size(method))))

    def shard_range(self, dataset: str, shard: int, method: str | None = None) -> list[int]:
        size = self.job_size(method)
        start = int(shard) * size
        return [start, min(start + size, self.eval_count(dataset, method))]

    def job_eval_shards(self, dataset: str, shard: int, method: str) -> list[int]:
        """The evaluation shards job ``shard`` of ``method`` reads its samples from, in order."""
        start, stop = self.shard_range(dataset, shard, method)
        size = self.job_size()
        return list(range(start // size, math.ceil(stop / size)))

    def shard_dataset_spec(self, dataset: str) -> dict:
        return _without_sample_counts(self.dataset_spec(dataset))

    def eval_shards(self, dataset: str) -> list[int]:
        """The evaluation shards of ``dataset``: every method reads its samples from them."""
        return self.shards(dataset)

    def eval_shard_setting(self, dataset: str, shard: int) -> dict:
        """Params of the job writing evaluation shard ``shard``: what its pixels depend on — the
        entry (less its sample count), the shard's index range, the code, and the content of the
        source files in that range, so an overwritten or added image re-plans its shard alone."""
        start, stop = self.shard_range(dataset, shard)
        return {
            "dataset_spec": self.shard_dataset_spec(dataset),
            "sample_range": [start, stop],
            "source": self.source_fingerprint(dataset, start, stop),
            "code": self.dataset_code["eval_shard"],
        }

    def dataset_setting(self, dataset: str) -> dict:
        """Params of the whole-dataset job (train split, model training, reports)."""
        return {
            "spec": self.dataset_spec(dataset),
            "source": self.source_fingerprint(dataset),
            "code": self.dataset_code["dataset"],
        }

    def source_fingerprint(self, dataset: str, start: int | None = None, stop: int | None = None) -> str:
        """Content fingerprint of the files a dataset's samples [start, stop) are read from (all
        splits when no range is given); "generated" for datasets made from their spec alone."""
        from attrflow.data.sources import source_fingerprint

        return source_fingerprint(self.dataset_spec(dataset), start, stop, self.content_index)

    @cached_property
    def content_index(self):
        """Digests of source files, reused while a file's size and mtime are unchanged. Kept in
        .snakemake/, never under results/: planning must not write results."""
        from attrflow.content import FileIndex

        return FileIndex(Path(self.workdir) / ".snakemake" / "attrflow" / "content.sqlite")

    def eval_shard_stores(self, results: str = "results") -> list[str]:
        return [
            f"{results}/data/{d}/eval/shard-{s}.zarr" for d in self.run["datasets"] for s in self.eval_shards(d)
        ]

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
        return canonical(dict(self.config["models"][model]))

    def model_dataset(self, model: str) -> str | None:
        return self.config["models"][model].get("dataset")

    def model_dataset_spec(self, model: str) -> dict:
        dataset = self.model_dataset(model)
        return self.shard_dataset_spec(dataset) if dataset else {}

    def model_setting(self, model: str) -> dict:
        """Params of `prepare_model`: the entry, its training data, the code, and the content of
        a local checkpoint (a file overwritten under the same name retrains/reloads)."""
        spec = self.model_spec(model)
        checkpoint = spec.get("checkpoint")
        return {
            "model": model,
            "spec": spec,
            "dataset_spec": self.model_dataset_spec(model),
            "checkpoint_sha256": self.content_index.digests([checkpoint])[0] if checkpoint else None,
            "code": self.models_code,
            **self.runtime(),
        }

    @cached_property
    def models_code(self) -> str:
        return symbols_fingerprint([PREPARE_MODEL_JOB])

    @cached_property
    def dataset_code(self) -> dict[str, str]:
        """Code fingerprints of the whole-dataset store and of the evaluation shards."""
        return {
            "dataset": symbols_fingerprint([PREPARE_DATASET_JOB]),
            "eval_shard": symbols_fingerprint([PREPARE_EVAL_SHARD_JOB]),
        }

    # ---------------------------------------------------------------- methods and metrics
    def method_entry(self, method: str) -> dict:
        """What a job computing ``method`` depends on: the entry less where and on how many
        samples it runs (those reach jobs as their sample ranges and as the jobs that exist).
        Keys are sorted, so a config written in another order plans the same params."""
        return self._method_entries[method]

    @cached_property
    def _method_entries(self) -> dict[str, dict]:
        return {
            name: canonical({k: v for k, v in entry.items() if k not in SELECTION_KEYS})
            for name, entry in self.config["methods"].items()
        }

    @cached_property
    def _memo(self) -> dict[tuple, Any]:
        """Per-plan results that thousands of jobs share (planning a large study calls the params
        functions once per job)."""
        return {}

    def _memoised(self, key: tuple, compute) -> Any:
        memo = self._memo
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def method_fingerprint(self, method: str) -> str:
        """The code an attribution shard of ``method`` runs: the job, the registered function and
        everything they use, plus methods the entry names by their function (SmoothGrad's `of`)."""
        import json

        return self._memoised(
            ("method_code", method),
            lambda: _method_code(self.config["methods"][method]["fn"], json.dumps(self.method_entry(method))),
        )

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
        return canonical(dict(self.config.get("references", {}).get(kind, {})))

    @cached_property
    def references_code(self) -> str:
        return symbols_fingerprint([REFERENCES_JOB])

    def scores_method(self, metric: str, method: str) -> bool:
        """Whether ``metric`` scores ``method`` (a metric entry may name the methods it scores)."""
        return method in self.config["metrics"][metric].get("methods", [method])

    def metric_entries(self, method: str | None = None) -> dict[str, dict]:
        """The selected metric entries (those that score ``method``), less their method list:
        a score job depends on whether a metric applies, not on which other methods it scores."""
        return self._memoised(
            ("metric_entries", method),
            lambda: {
                name: canonical({k: v for k, v in self.config["metrics"][name].items() if k != "methods"})
                for name in sorted(self.run["metrics"])
                if method is None or self.scores_method(name, method)
            },
        )

    def metric_peers(self, method: str) -> list[str]:
        """Method entries whose stored maps the metrics scoring ``method`` read (parameters with
        ``"format": "method-entry"``, e.g. the exact Shapley values of `shapley_spearman`)."""
        registered = catalog("metrics")

        def named() -> list[str]:
            found = set()
            for entry in self.metric_entries(method).values():
                params = registered[entry["fn"]].params
                for key, schema in params.items():
                    if schema.get("format") == METHOD_ENTRY_FORMAT:
                        found.add(entry.get(key, schema.get("default")))
            return sorted(found)

        return self._memoised(("metric_peers", method), named)

    def peer_stores(
        self, dataset: str, model: str, method: str, shard: int, results: str = "results"
    ) -> dict[str, list[str]]:
        """The attribution stores of each `metric_peers` entry that hold samples of job ``shard``
        of ``method`` (entries with another `shards_per_job` may need several or a part of one),
        where it runs. Entries covering none of them are left out."""
        start, stop = self.shard_range(dataset, shard, method)
        found = {}
        for peer in self.metric_peers(method):
            if peer not in self.config["methods"] or not self.runs_on(peer, model, dataset):
                continue
            size = self.job_size(peer)
            covering = range(start // size, min(math.ceil(stop / size), len(self.shards(dataset, peer))))
            if covering:
                found[peer] = [f"{results}/attributions/{dataset}/{model}/{peer}/shard-{s}.zarr" for s in covering]
        return found

    def metric_fingerprints(self, method: str | None = None) -> dict[str, str]:
        """The code each metric's scores depend on: the per-metric scoring step, the registered
        metric function and what they use (an explainer metric's method code is the method's)."""
        return self._memoised(
            ("metric_codes", method), lambda: {name: self.metric_fingerprint(name) for name in self.metric_entries(method)}
        )

    def metric_fingerprint(self, metric: str) -> str:
        return _metric_code_cached(self.config["metrics"][metric]["fn"])

    def gpu_per_job(self) -> int:
        device = self.config["device"]
        if device == "cpu":
            return 0
        if device.startswith("cuda"):
            return 1
        return int(gpu_present())

    def runtime(self) -> dict[str, Any]:
        """Settings every compute job receives."""
        return self._memoised(("runtime",), self._runtime)

    def _runtime(self) -> dict[str, Any]:
        return canonical({
            "device": self.config["device"],
            "seed": self.config["seed"],
            "max_batch": self.config["max_batch"],
            "target": self.config["target"],
        })

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
        """One file per attribution shard, every selected metric in it, in a hive-partitioned
        layout that DuckDB and pyarrow.dataset read directly."""
        return [
            score_file(results, d, m, me, s) for d, m, me in self.triples() for s in self.shards(d, me)
        ]

    def score_setting(self, dataset: str, model: str, method: str, shard: int) -> dict:
        shared = self._memoised(
            ("score", dataset, model, method),
            lambda: {
                "dataset": dataset,
                "model": model,
                "method": method,
                "method_entry": self.method_entry(method),
                "method_code": self.method_fingerprint(method),
                "metrics": self.metric_entries(method),
                "metrics_code": self.metric_fingerprints(method),
                **self.runtime(),
            },
        )
        # The entries whose maps this shard's metrics read (only when there are any, so other
        # jobs' params stay as they were; only those covering this shard, so a changed entry
        # re-plans exactly the score jobs that read it).
        peers = self.peer_stores(dataset, model, method, shard)
        extra = (
            {"peers": {p: {"entry": self.method_entry(p), "code": self.method_fingerprint(p)} for p in sorted(peers)}}
            if peers
            else {}
        )
        return {**shared, **extra, "sample_range": self.shard_range(dataset, shard, method)}

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

    # ---------------------------------------------------------------- Network Dissection
    @property
    def dissection(self) -> dict:
        """The `dissection:` section ({} when absent)."""
        return self.config.get("dissection") or {}

    def dissection_layers(self) -> list[str]:
        """Layers to dissect: `dissection.layers`, then the layers of the selected
        semantic_attribution entries (so their top units can be named)."""
        layers = list(self.dissection.get("layers", []))
        for method in self.run["methods"]:
            entry = self.config["methods"][method]
            if entry["fn"] == SEMANTIC_FN:
                layers.append(entry.get("layer", "default"))
        return list(dict.fromkeys(layers))

    def dissection_datasets(self) -> list[str]:
        from attrflow.config import dataset_provides

        if "datasets" in self.dissection:
            return list(self.dissection["datasets"])
        return [
            d for d in self.run["datasets"]
            if "concepts" in dataset_provides(self.config["datasets"][d], self.config["datasets"])
        ]  # fmt: skip

    def dissection_jobs(self) -> list[tuple[str, str, str]]:
        """(dataset, model, layer) of every `dissect` job."""
        models = self.dissection.get("models", self.run["models"])
        return [(d, m, layer) for d in self.dissection_datasets() for m in models for layer in self.dissection_layers()]

    def dissection_tables(self, results: str = "results") -> list[str]:
        return [f"{results}/dissection/{d}/{m}/{layer}.parquet" for d, m, layer in self.dissection_jobs()]

    def dissection_outputs(self, results: str = "results") -> list[str]:
        """The dissection reports `all` and the HTML report ask for; none without a dissect job."""
        if not self.dissection_jobs():
            return []
        return [
            f"{results}/reports/{name}" for name in ("dissection_counts.parquet", "dissection_units.parquet", "dissection.md")
        ]

    def dissection_setting(self, dataset: str, model: str, layer: str) -> dict:
        """Params of a `dissect` job: what its table depends on."""
        return {
            "dataset": dataset,
            "model": model,
            "layer": layer,
            "quantile": float(self.dissection.get("quantile", 0.005)),
            "iou_threshold": float(self.dissection.get("iou_threshold", 0.04)),
            "dataset_spec": self.dataset_spec(dataset),
            "code": self.dissection_code,
            "device": self.config["device"],
            "max_batch": self.config["max_batch"],
        }

    @cached_property
    def dissection_code(self) -> str:
        return symbols_fingerprint([DISSECT_JOB])

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


@lru_cache(maxsize=None)
def _method_code(fn: str, entry_json: str) -> str:
    import json

    registered = catalog("methods")
    named = [v for v in _strings(json.loads(entry_json)) if v in registered]
    roots = [ATTRIBUTE_JOB, *registered_symbols("methods", fn)]
    roots += [symbol for v in named for symbol in registered_symbols("methods", v)]
    return symbols_fingerprint(roots)


@lru_cache(maxsize=None)
def _metric_code_cached(fn: str) -> str:
    return symbols_fingerprint([SCORE_METRIC_JOB, *registered_symbols("metrics", fn)])


def method_code_fingerprint(entry: dict) -> str:
    """The code fingerprint a workflow records for the maps of a method entry (``{"fn": ..., **params}``)."""
    import json

    planned = canonical({k: v for k, v in entry.items() if k not in SELECTION_KEYS})
    return _method_code(planned["fn"], json.dumps(planned))


def metric_code_fingerprint(fn: str) -> str:
    """The code fingerprint a workflow records for the scores of metric function ``fn``."""
    return _metric_code_cached(fn)


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON-like value (a method entry may name other methods)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# ROAR's network width when `roar.width` is not given: each architecture's usual one.
ROAR_DEFAULT_WIDTH = {"small_cnn": 32, "small_cnn_max": 32, "preact_resnet18": 64}


def score_file(results: str, dataset: str, model: str, method: str, shard: int) -> str:
    return f"{results}/scores/dataset={dataset}/model={model}/method={method}/shard-{shard}.parquet"


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
