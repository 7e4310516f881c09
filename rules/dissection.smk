# Network Dissection (Bau et al., 2017): one table per (dataset, model, layer) for the datasets
# with per-pixel concept labels (PLAN.dissection_jobs()), then the detector counts the report reads.


wildcard_constraints:
    layer="[A-Za-z0-9_.-]+",


rule dissect:
    input:
        samples=samples_store("{dataset}"),
        weights=model_files("{model}")["weights"],
        card=model_files("{model}")["card"],
    output:
        f"{RESULTS}/dissection/{{dataset}}/{{model}}/{{layer}}.parquet",
    log:
        "logs/dissect/{dataset}/{model}/{layer}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dissect/{{dataset}}/{{model}}/{{layer}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=dissection_params,
    script:
        "../workflow_scripts/dissect.py"


rule dissection_report:
    input:
        tables=PLAN.dissection_tables(RESULTS),
    output:
        counts=f"{RESULTS}/reports/dissection_counts.parquet",
        units=f"{RESULTS}/reports/dissection_units.parquet",
        markdown=f"{RESULTS}/reports/dissection.md",
    log:
        "logs/dissection_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/dissection_report.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    script:
        "../workflow_scripts/dissection_report.py"
