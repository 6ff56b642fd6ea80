"""Snakemake adapter: one chunk of power replications (allianceflow.stages.power_chunk_stage)."""

from allianceflow.stages import power_chunk_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    power_chunk_stage(
        design=snakemake.params.design,
        seeds=snakemake.params.seeds,
        label=snakemake.wildcards.design,
        analysis=snakemake.wildcards.analysis,
        fitted=snakemake.input.fitted[0] if snakemake.input.fitted else None,
        alliance_items=snakemake.params.alliance_items,
        alpha=snakemake.params.alpha,
        vary=snakemake.params.vary,
        output=snakemake.output.chunk,
        **snakemake.params.settings,
    )
