"""Rules retrain and retrain_no_removal → attrflow.jobs.roar.retrain_job."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.roar import retrain_job

    mark_ready()

    setting = dict(snakemake.params.setting)
    masked = "train_maps" in snakemake.input.keys()
    retrain_job(
        samples_path=snakemake.input.samples,
        out_path=snakemake.output[0],
        dataset=setting["dataset"],
        model=setting.get("model"),
        method=setting.get("method"),
        method_entry=setting.get("method_entry"),
        method_code=setting.get("method_code"),
        fraction=setting.get("fraction", 0.0),
        arm=setting.get("arm"),
        order=setting.get("order", "signed"),
        repeat=setting["repeat"],
        recipe=setting["recipe"],
        code=setting["code"],
        device=setting["device"],
        threads=snakemake.threads,
        train_maps_path=snakemake.input.train_maps if masked else None,
        test_maps_paths=list(snakemake.input.test_maps) if masked else [],
    )
