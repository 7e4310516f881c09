"""Rule evidence → attrflow.report.evidence.write_evidence."""

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.report.evidence:write_evidence",
    dict(
        scores_path=snakemake.input.scores,
        comparisons_out=snakemake.output.comparisons,
        ranks_out=snakemake.output.ranks,
        quality_out=snakemake.output.quality,
        agreement_out=snakemake.output.agreement,
    ),
    log=snakemake.log[0],
)
