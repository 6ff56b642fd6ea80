"""Snakemake adapter: a study's models side by side (allianceflow.stages.models_table_stage)."""

from allianceflow.stages import models_table_stage, run_step

with run_step(snakemake.log[0]):
    models_table_stage(
        snakemake.input.models, outputs=list(snakemake.output), **snakemake.params.settings
    )
