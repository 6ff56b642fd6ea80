"""Snakemake adapter: meta-analysis forest plot (allianceflow.pool.forest_figure_stage)."""

from allianceflow.pipeline import run_step
from allianceflow.pool import forest_figure_stage

with run_step(snakemake.log[0]):
    forest_figure_stage(
        snakemake.input.meta,
        benchmark=snakemake.params.benchmark,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
