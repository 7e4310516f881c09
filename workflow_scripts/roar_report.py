"""Rule roar_report → attrflow.roar.report.write_roar_report."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.roar.report import write_roar_report

    mark_ready()

    write_roar_report(
        snakemake.input.results,
        snakemake.output.parquet,
        snakemake.output.markdown,
        dict(snakemake.params.figures),
    )
