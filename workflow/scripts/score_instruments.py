"""Snakemake adapter: score the study's instruments (allianceflow.stages.score_stage)."""

from allianceflow.stages import run_step, score_stage

with run_step(snakemake.log[0]):
    score_stage(snakemake.input.sessions, snakemake.params.study, scored=snakemake.output.scored)
