"""Rule report → attrflow.report.tables.write_markdown."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.report.tables import write_markdown

    mark_ready()

    write_markdown(snakemake.input.summary, snakemake.output.markdown, snakemake.input.costs, snakemake.input.ranks)
