"""Snakemake adapter: the reliability table in every format.

The numbers come from allianceflow.stages.reliability_stage (CSV and Markdown), the
rendered html, tex and docx from reliability_table_stage.
"""

from allianceflow.stages import reliability_stage, reliability_table_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    reliability_stage(
        snakemake.input.sessions,
        instruments=snakemake.params.instruments,
        seed=snakemake.params.seed,
        n_boot=snakemake.params.n_boot,
        alpha_missing=snakemake.params.alpha_missing,
        csv=snakemake.output.csv,
        md=snakemake.output.md,
    )
    reliability_table_stage(
        snakemake.output.csv,
        outputs=[snakemake.output.html, snakemake.output.tex, snakemake.output.docx],
        **snakemake.params.table,
    )
