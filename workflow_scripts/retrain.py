"""Rules retrain and retrain_no_removal → attrflow.jobs.roar.retrain_job."""

from attrflow.jobs.runtime import run_job

masked = "train_maps" in snakemake.input.keys()
run_job(
    "attrflow.jobs.roar:retrain_job",
    dict(
        samples_path=snakemake.input.samples,
        out_path=snakemake.output[0],
        threads=snakemake.threads,
        train_maps_path=snakemake.input.train_maps if masked else None,
        test_maps_paths=list(snakemake.input.test_maps) if masked else [],
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
