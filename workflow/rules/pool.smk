# Across studies: random-effects meta-analysis of the per-study alliance-outcome effect
# (two stages), the same model fitted once to the stacked studies (one stage), and the
# forest plot. Helpers (get_pool_*) live in common.smk.


rule pool_studies:
    input:
        unpack(get_pool_inputs),
    output:
        meta="results/pooled/meta_analysis.json",
        csv="results/pooled/tables/meta_analysis.csv",
        md="results/pooled/tables/meta_analysis.md",
        html=report(
            "results/pooled/tables/meta_analysis.html",
            caption="../report/meta_analysis.rst",
            category="5. Pooled across studies",
            labels={"table": "Random-effects meta-analysis"},
        ),
        tex="results/pooled/tables/meta_analysis.tex",
        docx="results/pooled/tables/meta_analysis.docx",
        one_stage="results/pooled/models/one_stage.json",
        comparison="results/pooled/tables/one_vs_two_stage.csv",
    log:
        "logs/pooled/pool_studies.log",
    benchmark:
        "logs/pooled/benchmarks/pool_studies.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        models=get_pool_models,
        analyses=get_pool_analyses,
        directions=get_pool_directions,
        model=get_pool_model_spec,
        settings=get_pool_settings(),
        labels=get_pool_labels,
    script:
        "../scripts/pool_studies.py"


rule plot_meta_forest:
    input:
        meta=rules.pool_studies.output.meta,
    output:
        png=report(
            "results/pooled/figures/meta_forest.png",
            caption="../report/meta_forest.rst",
            category="5. Pooled across studies",
            labels={"figure": "Forest plot of the studies"},
        ),
        pdf="results/pooled/figures/meta_forest.pdf",
        svg="results/pooled/figures/meta_forest.svg",
    log:
        "logs/pooled/plot_meta_forest.log",
    benchmark:
        "logs/pooled/benchmarks/plot_meta_forest.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        benchmark=config["pool"]["benchmark"],
    script:
        "../scripts/plot_meta_forest.py"
