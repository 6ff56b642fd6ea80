"""Snakemake adapter: a study's figures or tables (allianceflow.stages.outputs_stage)."""

from allianceflow.stages import outputs_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    outputs_stage(snakemake.params.steps)
