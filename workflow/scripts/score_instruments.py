"""Snakemake adapter: score the study's instruments (allianceflow.stages.score_stage)."""

from allianceflow.stages import run_step, score_stage

with run_step(snakemake.log[0], own_process=True):
    score_stage(
        snakemake.input.sessions,
        instruments=snakemake.params.instruments,
        scored=snakemake.output.scored,
    )
