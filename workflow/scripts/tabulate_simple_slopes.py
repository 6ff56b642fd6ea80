"""Snakemake adapter: simple-slopes table (allianceflow.stages.simple_slopes_table_stage)."""

from allianceflow.stages import run_step, simple_slopes_table_stage

with run_step(snakemake.log[0]):
    simple_slopes_table_stage(
        snakemake.input.model, outputs=list(snakemake.output), **snakemake.params.settings
    )
