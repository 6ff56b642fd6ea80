"""Snakemake adapter: the reliability table (allianceflow.stages.reliability_table_stage)."""

from allianceflow.stages import reliability_table_stage, run_step

with run_step(snakemake.log[0]):
    reliability_table_stage(
        snakemake.input.csv, outputs=list(snakemake.output), **snakemake.params.settings
    )
