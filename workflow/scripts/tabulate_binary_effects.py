"""Snakemake adapter: arm contrasts of the binary outcomes (stages.binary_effects_stage)."""

from allianceflow.stages import binary_effects_stage, run_step

with run_step(snakemake.log[0]):
    binary_effects_stage(
        snakemake.input.patients,
        direction=snakemake.params.direction,
        csv=snakemake.output.csv,
        outputs=[
            snakemake.output.md,
            snakemake.output.html,
            snakemake.output.tex,
            snakemake.output.docx,
        ],
        **snakemake.params.settings,
    )
