# The whole dataset (train split for training and references, the report's galleries) and the
# evaluation shards every attribution and score job reads: a shard is built from its source
# files alone, so a changed image re-runs only its shard and what reads it.
rule prepare_dataset:
    output:
        directory(f"{RESULTS}/data/{{dataset}}/samples.zarr"),
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    params:
        setting=dataset_params,
    script:
        "../workflow_scripts/prepare_dataset.py"


rule prepare_eval_shard:
    output:
        directory(f"{RESULTS}/data/{{dataset}}/eval/shard-{{shard}}.zarr"),
    log:
        "logs/prepare_eval_shard/{dataset}/shard-{shard}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_eval_shard/{{dataset}}/shard-{{shard}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    params:
        setting=eval_shard_params,
    script:
        "../workflow_scripts/prepare_eval_shard.py"
