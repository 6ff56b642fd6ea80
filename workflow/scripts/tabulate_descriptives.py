"""Snakemake adapter: one descriptive table (allianceflow.stages.descriptive_table_stage)."""

from allianceflow.stages import descriptive_table_stage, run_step

with run_step(snakemake.log[0]):
    descriptive_table_stage(
        snakemake.wildcards.table,
        analysis=snakemake.input.analysis,
        patients=snakemake.input.patients,
        sudden_gains=snakemake.input.sudden_gains,
        min_cell=snakemake.params.min_cell,
        outputs=list(snakemake.output),
        **snakemake.params.settings,
    )
