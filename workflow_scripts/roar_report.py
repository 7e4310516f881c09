"""Rule roar_report → attrflow.roar.report.write_roar_report."""

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.roar.report:write_roar_report",
    dict(
        result_paths=snakemake.input.results,
        parquet_out=snakemake.output.parquet,
        markdown_out=snakemake.output.markdown,
        figures=dict(snakemake.params.figures),
    ),
    log=snakemake.log[0],
)
