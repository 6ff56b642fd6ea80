"""Snakemake adapter: model table (allianceflow.stages.model_table_stage)."""

from allianceflow.stages import model_table_stage, run_step

with run_step(snakemake.log[0]):
    model_table_stage(
        snakemake.input.model,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
        html=snakemake.output.html,
        tex=snakemake.output.tex,
        docx=snakemake.output.docx,
        **snakemake.params.settings,
    )
