"""Snakemake adapter: meta-analysis forest plot (allianceflow.stages.meta_forest_figure_stage)."""

from allianceflow.stages import meta_forest_figure_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    meta_forest_figure_stage(
        snakemake.input.meta,
        benchmark=snakemake.params.benchmark,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
