"""Snakemake adapter: merge power chunks (allianceflow.power.power_summary_stage)."""

from allianceflow.pipeline import run_step
from allianceflow.power import power_summary_stage

with run_step(snakemake.log[0]):
    power_summary_stage(
        snakemake.input.chunks,
        designs=snakemake.params.designs,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
