"""Snakemake adapter: one chunk of power replications (allianceflow.power.power_chunk_stage)."""

from allianceflow.pipeline import run_step
from allianceflow.power import power_chunk_stage

with run_step(snakemake.log[0]):
    power_chunk_stage(
        design=snakemake.params.design,
        seeds=snakemake.params.seeds,
        label=snakemake.wildcards.design,
        fitted=snakemake.input.fitted[0] if snakemake.input.fitted else None,
        alliance_items=snakemake.params.alliance_items,
        formula=snakemake.params.formula,
        alpha=snakemake.params.alpha,
        vary=snakemake.params.vary,
        output=snakemake.output.chunk,
    )
