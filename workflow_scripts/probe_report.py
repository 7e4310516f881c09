"""Rule probe_report → attrflow.report.probes.write_probe_report."""

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.report.probes:write_probe_report",
    dict(
        scores_path=snakemake.input.scores,
        probes=snakemake.params.probes,
        methods=snakemake.params.methods,
        markdown_out=snakemake.output.markdown,
        table_out=snakemake.output.table,
        bias_out=snakemake.output.bias,
    ),
    log=snakemake.log[0],
)
