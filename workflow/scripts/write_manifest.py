"""Snakemake adapter: the study's manifest (allianceflow.stages.manifest_stage)."""

from allianceflow.stages import manifest_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    manifest_stage(
        study=snakemake.wildcards.study,
        study_config=snakemake.params.resolved,
        inputs=[snakemake.input.raw, *snakemake.input.config],
        outputs=snakemake.input.outputs,
        manifest=snakemake.output.manifest,
        lock=snakemake.input.lock[0] if snakemake.input.lock else None,
    )
