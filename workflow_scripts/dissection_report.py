"""Rule dissection_report → attrflow.report.dissection.write_dissection_reports."""

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.report.dissection:write_dissection_reports",
    dict(
        tables=snakemake.input.tables,
        out_counts=snakemake.output.counts,
        out_units=snakemake.output.units,
        out_markdown=snakemake.output.markdown,
    ),
    log=snakemake.log[0],
)
