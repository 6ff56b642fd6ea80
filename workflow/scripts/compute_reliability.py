"""Snakemake adapter: reliability table (allianceflow.stages.reliability_stage)."""

from allianceflow.stages import reliability_stage, run_step

with run_step(snakemake.log[0]):
    reliability_stage(
        snakemake.input.sessions,
        instruments=snakemake.params.instruments,
        seed=snakemake.params.seed,
        n_boot=snakemake.params.n_boot,
        # measures.alpha_missing, once the rule passes it (schema default: listwise)
        alpha_missing=getattr(snakemake.params, "alpha_missing", "listwise"),
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
