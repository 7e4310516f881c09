"""Rule evidence → attrflow.report.evidence.write_evidence."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.report.evidence import write_evidence

    mark_ready()

    write_evidence(
        snakemake.input.scores,
        snakemake.output.comparisons,
        snakemake.output.ranks,
        snakemake.output.quality,
        snakemake.output.agreement,
    )
