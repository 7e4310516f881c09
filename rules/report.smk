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
    params:
        sample_filter=config["run"]["filter"],
    script:
        "../workflow_scripts/aggregate.py"


rule evidence:
    input:
        scores=f"{RESULTS}/reports/scores.parquet",
    output:
        comparisons=f"{RESULTS}/reports/comparisons.parquet",
        ranks=f"{RESULTS}/reports/ranks.parquet",
        quality=f"{RESULTS}/reports/metric_quality.parquet",
        agreement=f"{RESULTS}/reports/metric_agreement.parquet",
    log:
        "logs/evidence.log",
    benchmark:
        f"{RESULTS}/benchmarks/evidence.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    script:
        "../workflow_scripts/evidence.py"


# Inputs are paths, never `rules.aggregate.output…`: a rule that names another rule's output makes
# Snakemake look each of its inputs up in that rule's dependencies, hashing the whole `maps` list
# once per map — quadratic in the study (a third of a 5,000-job dry run's time).
rule report:
    input:
        scores=f"{RESULTS}/reports/scores.parquet",
        summary=f"{RESULTS}/reports/summary.parquet",
        costs=f"{RESULTS}/reports/costs.parquet",
        ranks=f"{RESULTS}/reports/ranks.parquet",
        quality=f"{RESULTS}/reports/metric_quality.parquet",
        agreement=f"{RESULTS}/reports/metric_agreement.parquet",
        samples=PLAN.sample_stores(RESULTS),
        maps=PLAN.attribution_stores(RESULTS),
        axioms=PLAN.axiom_stores(RESULTS),
        roar=PLAN.roar_outputs(RESULTS),
        probes=probe_report_outputs(),
        dissection=PLAN.dissection_outputs(RESULTS),
    output:
        markdown=f"{RESULTS}/reports/summary.md",
        # its figures go to reports/figures/report-*.png (beside the ROAR figures, not declared)
        html=f"{RESULTS}/reports/report.html",
    log:
        "logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    script:
        "../workflow_scripts/report.py"
