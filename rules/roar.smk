# ROAR and DiffROAR: train-split maps, one retrain per (dataset, model, method, fraction, arm,
# repeat) plus the no-removal retrain per (dataset, repeat), and the report. Planned only when the
# config has a `roar:` section (PLAN.roar_result_files is empty otherwise); params come from PLAN.


wildcard_constraints:
    fraction="[0-9.]+",
    arm="most|least",
    repeat="[0-9]+",


rule roar_train_maps:
    input:
        unpack(train_maps_inputs),
    output:
        directory(f"{RESULTS}/roar/{{dataset}}/{{model}}/{{method}}/train_maps.zarr"),
    log:
        "logs/roar_train_maps/{dataset}/{model}/{method}.log",
    benchmark:
        f"{RESULTS}/benchmarks/roar_train_maps/{{dataset}}/{{model}}/{{method}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=lambda wc: PLAN.roar_train_maps_setting(wc.dataset, wc.method),
    script:
        "../workflow_scripts/roar_train_maps.py"


rule retrain:
    input:
        # `ancient` as for the attribution shards: a store rebuilt only to add evaluation samples
        # re-runs a retrain through its test map shards (new or rewritten), not through its mtime.
        samples=ancient(samples_store("{dataset}")),
        train_maps=f"{RESULTS}/roar/{{dataset}}/{{model}}/{{method}}/train_maps.zarr",
        test_maps=lambda wc: PLAN.roar_test_maps(
            wc.dataset, wc.model, wc.method, RESULTS
        ),
    output:
        f"{RESULTS}/roar/{{dataset}}/{{model}}/{{method}}/fraction-{{fraction}}/{{arm}}-repeat-{{repeat}}.json",
    log:
        "logs/retrain/{dataset}/{model}/{method}/fraction-{fraction}/{arm}-repeat-{repeat}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrain/{{dataset}}/{{model}}/{{method}}/fraction-{{fraction}}/{{arm}}-repeat-{{repeat}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    # Snakemake caps this at --cores (or --max-threads on a cluster); training scales with threads.
    threads: 8
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc: PLAN.roar["mem_mb"],
        runtime=lambda wc: PLAN.roar["runtime"],
    params:
        setting=lambda wc: PLAN.roar_retrain_setting(
            wc.dataset, wc.model, wc.method, wc.fraction, wc.arm, int(wc.repeat)
        ),
    script:
        "../workflow_scripts/retrain.py"


rule retrain_no_removal:
    input:
        samples=ancient(samples_store("{dataset}")),
    output:
        f"{RESULTS}/roar/{{dataset}}/no_removal/repeat-{{repeat}}.json",
    log:
        "logs/retrain/{dataset}/no_removal/repeat-{repeat}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrain/{{dataset}}/no_removal/repeat-{{repeat}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 8
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc: PLAN.roar["mem_mb"],
        runtime=lambda wc: PLAN.roar["runtime"],
    params:
        setting=lambda wc: PLAN.roar_retrain_setting(
            wc.dataset, None, None, None, None, int(wc.repeat)
        ),
    script:
        "../workflow_scripts/retrain.py"


rule roar_report:
    input:
        results=PLAN.roar_result_files(RESULTS),
    output:
        parquet=f"{RESULTS}/reports/roar.parquet",
        markdown=f"{RESULTS}/reports/roar.md",
        figures=list(PLAN.roar_figures(RESULTS).values()),
    log:
        "logs/roar_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/roar_report.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    params:
        figures=PLAN.roar_figures(RESULTS),
    script:
        "../workflow_scripts/roar_report.py"
