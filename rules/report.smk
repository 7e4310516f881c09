rule aggregate:
    input:
        scores=PLAN.score_files(RESULTS) + PLAN.axiom_score_files(RESULTS),
        maps=PLAN.attribution_stores(RESULTS),
    output:
        scores=f"{RESULTS}/reports/scores.parquet",
        summary=f"{RESULTS}/reports/summary.parquet",
        costs=f"{RESULTS}/reports/costs.parquet",
    log:
        "logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    script:
        "../workflow_scripts/aggregate.py"


rule report:
    input:
        scores=rules.aggregate.output.scores,
        summary=rules.aggregate.output.summary,
        costs=rules.aggregate.output.costs,
    output:
        markdown=f"{RESULTS}/reports/summary.md",
    log:
        "logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    script:
        "../workflow_scripts/report.py"
