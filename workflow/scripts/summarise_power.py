"""Snakemake adapter: merge power chunks (allianceflow.stages.power_summary_stage)."""

from allianceflow.stages import power_summary_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    power_summary_stage(
        snakemake.input.chunks,
        designs=snakemake.params.designs,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
