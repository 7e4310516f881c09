# Baseline-bias probes (UNI (Choi et al., 2024) Sec. 3.2): clean against corrupted scores. Requested by `all` only when a
# selected `corrupted` dataset has its clean base selected too (PLAN.corrupted_datasets()).


rule probe_report:
    input:
        scores=f"{RESULTS}/reports/scores.parquet",
    output:
        markdown=f"{RESULTS}/reports/probes.md",
        table=f"{RESULTS}/reports/probes.parquet",
        bias=f"{RESULTS}/reports/probes_bias.parquet",
    log:
        "logs/probe_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/probe_report.tsv"
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    params:
        probes=PLAN.corrupted_datasets(),
        methods={name: PLAN.method_entry(name) for name in config["run"]["methods"]},
    script:
        "../workflow_scripts/probe_report.py"
