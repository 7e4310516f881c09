"""Rule dissection_report → attrflow.report.dissection.write_dissection_reports."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.report.dissection import write_dissection_reports

    mark_ready()

    write_dissection_reports(
        snakemake.input.tables, snakemake.output.counts, snakemake.output.units, snakemake.output.markdown
    )
