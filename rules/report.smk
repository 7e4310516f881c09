rule aggregate:
    input:
        scores=PLAN.score_files(RESULTS),
    output:
        scores=f"{RESULTS}/reports/scores.parquet",
        summary=f"{RESULTS}/reports/summary.parquet",
    log:
        "logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    localrule: True
    script:
        "../workflow_scripts/aggregate.py"


rule report:
    input:
        scores=rules.aggregate.output.scores,
        summary=rules.aggregate.output.summary,
    output:
        markdown=f"{RESULTS}/reports/summary.md",
    log:
        "logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    localrule: True
    script:
        "../workflow_scripts/report.py"
