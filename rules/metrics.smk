# One job scores every selected metric for one (dataset, model, method): starting a job costs
# seconds of imports, so one job per metric would spend more time starting than scoring.
# A changed metric re-runs scoring only, never attribution.
rule score:
    input:
        unpack(score_inputs),
    output:
        score_outputs(),
    log:
        "logs/score/{dataset}/{model}/{method}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{dataset}}/{{model}}/{{method}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=score_params,
    script:
        "../workflow_scripts/score.py"
