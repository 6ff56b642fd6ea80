"""Snakemake adapter: the study's summary in words (allianceflow.stages.summary_stage)."""

from allianceflow.stages import run_step, summary_stage

with run_step(snakemake.log[0], own_process=True):
    summary_stage(
        snakemake.input.models,
        flow=snakemake.input.flow,
        study=snakemake.wildcards.study,
        measures=snakemake.params.measures,
        benchmark=snakemake.params.benchmark,
        labels=snakemake.params.labels,
        md=snakemake.output.md,
        rst=snakemake.output.rst,
    )
