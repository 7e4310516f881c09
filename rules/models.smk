rule prepare_model:
    input:
        unpack(prepare_model_inputs),
    output:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        card=f"{RESULTS}/models/{{model}}/card.json",
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_model/{{model}}.tsv"
    # Most jobs wait on a model: on a small machine train before filling cores with the jobs of
    # a model that is already trained (a many-thread job would otherwise wait for idle cores).
    priority: 10
    conda:
        "../envs/attrflow.yaml"
    # Snakemake caps this at --cores (or --max-threads on a cluster); training scales with threads.
    threads: 8
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=prepare_model_params,
    script:
        "../workflow_scripts/prepare_model.py"
