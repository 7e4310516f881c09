# One job per attribution shard scores every selected metric of that shard, so scoring spreads
# over a cluster like attribution does. Each metric's rows are memoised under a key of all they
# depend on (attrflow.jobs.score): adding or changing one metric re-runs these jobs but computes
# only that metric; a changed method re-runs only its own shards' scores.
rule score:
    input:
        unpack(score_inputs),
    output:
        f"{RESULTS}/scores/dataset={{dataset}}/model={{model}}/method={{method}}/shard-{{shard}}.parquet",
    log:
        "logs/score/{dataset}/{model}/{method}/shard-{shard}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{dataset}}/{{model}}/{{method}}/shard-{{shard}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=score_params,
    script:
        "../workflow_scripts/score.py"
