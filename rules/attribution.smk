rule attribute:
    input:
        unpack(attribute_inputs),
    output:
        directory(
            f"{RESULTS}/attributions/{{dataset}}/{{model}}/{{method}}/shard-{{shard}}.zarr"
        ),
    log:
        "logs/attribute/{dataset}/{model}/{method}/shard-{shard}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribute/{{dataset}}/{{model}}/{{method}}/shard-{{shard}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=attribute_params,
    script:
        "../workflow_scripts/attribute.py"


rule prepare_references:
    input:
        samples=ancient(samples_store("{dataset}")),
        weights=model_files("{model}")["weights"],
        card=model_files("{model}")["card"],
    output:
        directory(f"{RESULTS}/references/{{dataset}}/{{model}}/{{references}}.zarr"),
    log:
        "logs/prepare_references/{dataset}/{model}/{references}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_references/{{dataset}}/{{model}}/{{references}}.tsv"
    priority: 5  # every EG, LPI, DeepSHAP and IBA job waits on it
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=references_params,
    script:
        "../workflow_scripts/prepare_references.py"
