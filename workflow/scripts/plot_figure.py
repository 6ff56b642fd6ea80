"""Snakemake adapter: one study figure (allianceflow.stages.figure_stage, FIGURES registry)."""

from allianceflow.stages import figure_stage, run_step

with run_step(snakemake.log[0]):
    figure_stage(
        snakemake.params.figure,
        inputs=dict(snakemake.input.items()),
        settings=snakemake.params.settings,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
