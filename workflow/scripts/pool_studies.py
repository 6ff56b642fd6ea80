"""Snakemake adapter: two-stage and one-stage pooling (allianceflow.stages.pool_stage)."""

from allianceflow.stages import one_stage_spec, pool_stage, run_step

with run_step(snakemake.log[0], own_process=True):
    settings = snakemake.params.settings
    pool_stage(
        models=snakemake.params.models,
        analyses=snakemake.params.analyses,
        directions=snakemake.params.directions,
        **one_stage_spec(snakemake.params.model),
        reml=snakemake.params.model.get("reml", True),
        term=settings["term"],
        method=settings["method"],
        hksj=settings["hksj"],
        hksj_adhoc=settings.get("hksj_adhoc", True),
        alpha=settings["alpha"],
        pi_type=settings.get("pi_type", "default"),
        one_stage=settings["one_stage"],
        standardise=settings["standardise"],
        meta_json=snakemake.output.meta,
        table_csv=snakemake.output.csv,
        table_md=snakemake.output.md,
        table_formats=[snakemake.output.html, snakemake.output.tex, snakemake.output.docx],
        labels=snakemake.params.labels,
        one_stage_json=snakemake.output.one_stage,
        comparison_csv=snakemake.output.comparison,
    )
