"""Snakemake adapter: within/between figure (allianceflow.stages.within_between_figure_stage)."""

from allianceflow.stages import run_step, within_between_figure_stage

with run_step(snakemake.log[0]):
    within_between_figure_stage(
        snakemake.input.analysis,
        snakemake.params.study,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
