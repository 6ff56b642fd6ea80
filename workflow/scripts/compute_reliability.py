"""Snakemake adapter: reliability table (allianceflow.stages.reliability_stage)."""

from allianceflow.stages import reliability_stage, run_step

with run_step(snakemake.log[0]):
    reliability_stage(
        snakemake.input.sessions,
        snakemake.params.study,
        seed=snakemake.params.seed,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
