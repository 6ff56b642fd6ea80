rule score_instruments:
    input:
        sessions=rules.clean_sessions.output.sessions,
    output:
        scored="data/processed/{study}/scored.parquet",
    log:
        "logs/{study}/score_instruments.log",
    benchmark:
        "logs/{study}/benchmarks/score_instruments.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        instruments=get_score_instruments,
    script:
        "../scripts/score_instruments.py"


rule compute_reliability:
    input:
        sessions=rules.clean_sessions.output.sessions,
    output:
        csv="results/{study}/tables/reliability.csv",
        md="results/{study}/tables/reliability.md",
        html=report(
            "results/{study}/tables/reliability.html",
            caption="../report/reliability.rst",
            category="2. Tables",
            subcategory="{study}",
            labels=get_report_labels("table", "reliability"),
        ),
        tex="results/{study}/tables/reliability.tex",
        docx="results/{study}/tables/reliability.docx",
    log:
        "logs/{study}/compute_reliability.log",
    benchmark:
        "logs/{study}/benchmarks/compute_reliability.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        instruments=get_reliability_instruments,
        n_boot=get_reliability_bootstrap,
        alpha_missing=get_alpha_missing,
        seed=config["seed"],
        table=get_reliability_table_settings,
    script:
        "../scripts/compute_reliability.py"
