"""Snakemake adapter: likelihood-ratio test of two models.

The work is done by allianceflow.stages.comparison_stage.
"""

from allianceflow.stages import comparison_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    comparison_stage(
        snakemake.input.analysis,
        snakemake.params.models,
        json=snakemake.output.json,
        txt=snakemake.output.txt,
    )
