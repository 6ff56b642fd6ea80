"""Snakemake adapter: simple-slopes figure (allianceflow.stages.simple_slopes_figure_stage)."""

from allianceflow.stages import run_step, simple_slopes_figure_stage

with run_step(snakemake.log[0]):
    simple_slopes_figure_stage(
        snakemake.input.model,
        outcome=snakemake.params.outcome,
        labels=snakemake.params.labels,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
