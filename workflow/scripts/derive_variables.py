"""Snakemake adapter: derived variables (allianceflow.stages.derive_stage)."""

from allianceflow.stages import derive_stage, run_step

with run_step(snakemake.log[0], own_process=True, reuse_memory=True):
    derive_stage(
        snakemake.input.scored,
        measures=snakemake.params.measures,
        derive=snakemake.params.derive,
        analysis=snakemake.output.analysis,
        patients=snakemake.output.patients,
        sudden_gains=snakemake.output.sudden_gains,
        expected=snakemake.output.expected,
        reference=snakemake.input.reference[0] if snakemake.input.reference else None,
    )
