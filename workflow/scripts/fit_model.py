"""Snakemake adapter: fit one model (allianceflow.stages.fit_stage)."""

from allianceflow.stages import fit_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    fit_stage(
        snakemake.input.analysis,
        snakemake.params.model,
        name=snakemake.wildcards.model,
        json=snakemake.output.json,
        txt=snakemake.output.txt,
        patients=snakemake.input.patients,
    )
