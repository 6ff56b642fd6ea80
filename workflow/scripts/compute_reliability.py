"""Snakemake adapter: reliability table (allianceflow.stages.reliability_stage)."""

from allianceflow.stages import reliability_stage, run_step

with run_step(snakemake.log[0]):
    reliability_stage(
        snakemake.input.sessions,
        instruments=snakemake.params.instruments,
        seed=snakemake.params.seed,
        n_boot=snakemake.params.n_boot,
        alpha_missing=snakemake.params.alpha_missing,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
