import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from attrflow.config import ConfigError, validate_config
from attrflow.plan import Plan, workdir_path
from attrflow.store import quarantine_if_damaged

# A config given with --configfile replaces the embedded default instead of being merged into it
# key by key (Snakemake's default): otherwise config.yaml's selections and `models:` limits would
# leak into config/imagenet.yaml. --config overrides still apply on top.
if workflow.overwrite_configfiles:
    config = copy.deepcopy(workflow.config_settings.overwrite_config)

try:
    config = validate_config(config, workdir=Path.cwd())
except ConfigError as err:
    raise WorkflowError(str(err)) from None

PLAN = Plan(config)
RESULTS = "results"
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"

# A store that is present but incomplete or damaged (killed copy, edited file, full disk), or a
# shard written for another sample range (the last, partial shard of a grown dataset), is moved
# aside here, before the DAG is built, so Snakemake sees it missing and recomputes it. (Snakemake
# does not re-check params of a job whose `ancient` input is being rebuilt upstream.)
for _store in PLAN.sample_stores(RESULTS):
    _moved = quarantine_if_damaged(_store)
    if _moved:
        logger.warning(f"attrflow: {_moved}")
for _store, _range in PLAN.attribution_stores_with_ranges(RESULTS):
    _moved = quarantine_if_damaged(_store, expect={"sample_range": _range})
    if _moved:
        logger.warning(f"attrflow: {_moved}")


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    model="[A-Za-z0-9_.-]+",
    references="train_pool|lpi|feature_stats",
    method="[A-Za-z0-9_.-]+",
    metric="[A-Za-z0-9_.-]+",
    shard="[0-9]+",


def final_outputs():
    # The caches are targets too: Snakemake would otherwise accept a missing intermediate
    # (a store deleted, or moved aside above) as long as the reports downstream exist.
    return [
        f"{RESULTS}/reports/scores.parquet",
        f"{RESULTS}/reports/summary.parquet",
        f"{RESULTS}/reports/summary.md",
        f"{RESULTS}/reports/costs.parquet",
        *PLAN.sample_stores(RESULTS),
        *PLAN.attribution_stores(RESULTS),
        *PLAN.roar_outputs(RESULTS),
        *PLAN.axiom_stores(RESULTS),
    ]


def samples_store(dataset):
    return f"{RESULTS}/data/{dataset}/samples.zarr"


def model_files(model):
    return {
        "weights": f"{RESULTS}/models/{model}/model.safetensors",
        "card": f"{RESULTS}/models/{model}/card.json",
    }


def prepare_model_inputs(wildcards):
    # `ancient` for the same reason as in attribute_inputs: adding evaluation samples must not
    # retrain; the dataset spec in params (less its evaluation count) re-runs on real changes.
    inputs = {}
    dataset = PLAN.model_dataset(wildcards.model)
    if dataset:
        inputs["samples"] = ancient(samples_store(dataset))
    weights_file = PLAN.model_spec(wildcards.model).get("checkpoint")
    if weights_file:
        inputs["checkpoint"] = weights_file
    return inputs


def references_store(dataset, model, kind):
    return f"{RESULTS}/references/{dataset}/{model}/{kind}.zarr"


def attribute_inputs(wildcards):
    # The sample store is `ancient`: a store rebuilt only to add samples must not re-run
    # finished shards. What a shard really depends on (the dataset spec less its sample
    # count, and the shard's index range) is in params, so real changes still re-run it.
    inputs = {
        "samples": ancient(samples_store(wildcards.dataset)),
        **model_files(wildcards.model),
    }
    kind = PLAN.method_references(wildcards.method)
    if kind:
        inputs["references"] = references_store(
            wildcards.dataset, wildcards.model, kind
        )
    return inputs


def references_params(wildcards):
    return {
        "kind": wildcards.references,
        "params": PLAN.references_spec(wildcards.references),
        "code": PLAN.references_code,
        "device": config["device"],
        "seed": config["seed"],
        "max_batch": config["max_batch"],
    }


def attribute_params(wildcards):
    return {
        "method": wildcards.method,
        "entry": PLAN.method_entry(wildcards.method),
        "code": PLAN.method_fingerprint(wildcards.method),
        "dataset_spec": PLAN.shard_dataset_spec(wildcards.dataset),
        "sample_range": PLAN.shard_range(
            wildcards.dataset, int(wildcards.shard), wildcards.method
        ),
        **PLAN.runtime(),
    }


def score_inputs(wildcards):
    shards = PLAN.shards(wildcards.dataset, wildcards.method)
    kind = PLAN.method_references(wildcards.method)
    extra = (
        {"references": references_store(wildcards.dataset, wildcards.model, kind)}
        if kind
        else {}
    )
    return {
        **extra,
        "samples": samples_store(wildcards.dataset),
        **model_files(wildcards.model),
        "maps": [
            f"{RESULTS}/attributions/{wildcards.dataset}/{wildcards.model}/{wildcards.method}/shard-{s}.zarr"
            for s in shards
        ],
    }


def score_params(wildcards):
    return {
        "dataset": wildcards.dataset,
        "model": wildcards.model,
        "method": wildcards.method,
        "method_entry": PLAN.method_entry(wildcards.method),
        "method_code": PLAN.method_fingerprint(wildcards.method),
        "metrics": PLAN.metric_entries(wildcards.method),
        "metrics_code": PLAN.metric_fingerprints(wildcards.method),
        **PLAN.runtime(),
    }


def dataset_params(wildcards):
    return PLAN.dataset_spec(wildcards.dataset)


def prepare_model_params(wildcards):
    return {
        "model": wildcards.model,
        "spec": PLAN.model_spec(wildcards.model),
        "dataset_spec": PLAN.model_dataset_spec(wildcards.model),
        "code": PLAN.models_code,
        **PLAN.runtime(),
    }


def score_outputs():
    return [
        f"{RESULTS}/scores/{{dataset}}/{{model}}/{{method}}/{metric}.parquet"
        for metric in config["run"]["metrics"]
    ]


# Jobs that run models claim the `gpu` resource only when they will really use a GPU, so a
# CPU-only machine runs them in parallel while a workstation caps them at its GPU count.
GPU_PER_JOB = PLAN.gpu_per_job()


# Baseline-bias probes: requested only when a selected `corrupted` dataset has its clean base
# selected too.
def probe_report_outputs():
    if not PLAN.corrupted_datasets():
        return []
    return [
        f"{RESULTS}/reports/probes.md",
        f"{RESULTS}/reports/probes.parquet",
        f"{RESULTS}/reports/probes_bias.parquet",
    ]


# Axiom synthesis (rules/axioms.smk)
def synthesize_axioms_params(wildcards):
    return {
        "entry": wildcards.scenario,
        "setting": PLAN.axiom_setting(wildcards.model, wildcards.scenario),
        "code": PLAN.axioms_code["synthesis"],
        **PLAN.runtime(),
    }


def axiom_references(wildcards):
    # Methods with a reference set (EG, LPI, DeepSHAP, IBA) draw it from the model's training
    # dataset: axiom inputs belong to no dataset of their own.
    kind = PLAN.method_references(wildcards.method)
    dataset = PLAN.model_dataset(wildcards.model)
    if kind and dataset:
        return {"references": references_store(dataset, wildcards.model, kind)}
    return {}


def attribute_axioms_params(wildcards):
    return {
        "entries": PLAN.axiom_entries(),
        "method": wildcards.method,
        "method_entry": PLAN.method_entry(wildcards.method),
        "code": PLAN.method_fingerprint(wildcards.method),
        **PLAN.runtime(),
    }


def score_axioms_params(wildcards):
    return {
        "entries": PLAN.axiom_entries(),
        "methods": {
            me: {"fn": PLAN.method_entry(me)["fn"], "code": PLAN.method_fingerprint(me)}
            for me in PLAN.axiom_methods(wildcards.model)
        },
        "metric_code": PLAN.axioms_code["metrics"],
    }
