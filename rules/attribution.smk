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
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=attribute_params,
    script:
        "../workflow_scripts/attribute.py"
