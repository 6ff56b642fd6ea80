"""Snakemake adapter: fit one model (allianceflow.pipeline.fit_stage)."""

from allianceflow.pipeline import fit_stage, run_step

with run_step(snakemake.log[0]):
    fit_stage(
        snakemake.input.analysis,
        snakemake.params.model,
        name=snakemake.wildcards.model,
        json=snakemake.output.json,
        txt=snakemake.output.txt,
    )
