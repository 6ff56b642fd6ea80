"""Snakemake adapter: power curve (allianceflow.power.power_curve_stage)."""

from allianceflow.pipeline import run_step
from allianceflow.power import power_curve_stage

with run_step(snakemake.log[0]):
    power_curve_stage(
        snakemake.input.summary,
        x=snakemake.params.x,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
