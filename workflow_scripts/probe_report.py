"""Rule probe_report → attrflow.report.probes.write_probe_report."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.report.probes import write_probe_report

    mark_ready()

    write_probe_report(
        snakemake.input.scores,
        probes=snakemake.params.probes,
        methods=snakemake.params.methods,
        markdown_out=snakemake.output.markdown,
        table_out=snakemake.output.table,
        bias_out=snakemake.output.bias,
    )
