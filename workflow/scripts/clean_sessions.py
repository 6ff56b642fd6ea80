"""Snakemake adapter: clean one study's raw export (allianceflow.stages.clean_stage)."""

from allianceflow.stages import clean_stage, run_step

with run_step(snakemake.log[0], own_process=True, reuse_memory=True):
    clean_stage(
        snakemake.input.raw,
        read=snakemake.params.read,
        privacy=snakemake.params.privacy,
        clean=snakemake.params.clean,
        instruments=snakemake.params.instruments,
        sessions=snakemake.output.sessions,
        exclusions=snakemake.output.exclusions,
        flow=snakemake.output.flow,
        name=snakemake.params.name,
        config=snakemake.params.config_file,
    )
