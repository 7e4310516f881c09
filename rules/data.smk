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
        spec=dataset_params,
    script:
        "../workflow_scripts/prepare_dataset.py"
