"""Snakemake adapter: power curve (allianceflow.stages.power_curve_stage)."""

from allianceflow.stages import power_curve_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    power_curve_stage(
        snakemake.input.summary,
        x=snakemake.params.x,
        outputs=[snakemake.output.png, snakemake.output.pdf, snakemake.output.svg],
    )
