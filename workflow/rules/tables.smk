# Tables: CSV (the unrounded numbers) and the APA table as Markdown, HTML, LaTeX and Word.
PUBLISHED_TABLE_FORMATS = ["csv", "md", "html", "tex", "docx"]


rule tabulate_model:
    input:
        model=rules.fit_model.output.json,
    output:
        csv="results/{study}/tables/{model}.csv",
        md="results/{study}/tables/{model}.md",
        html=report(
            "results/{study}/tables/{model}.html",
            caption="../report/model_table.rst",
            category="2. Tables",
            subcategory="{study}",
            labels=get_report_labels("table", "model_table"),
        ),
        tex="results/{study}/tables/{model}.tex",
        docx="results/{study}/tables/{model}.docx",
    log:
        "logs/{study}/tabulate_model_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/tabulate_model_{model}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        settings=get_table_settings(wildcard="model"),
    script:
        "../scripts/tabulate_model.py"


rule tabulate_models:
    input:
        models=get_model_results,
    output:
        csv="results/{study}/tables/models.csv",
        md="results/{study}/tables/models.md",
        html=report(
            "results/{study}/tables/models.html",
            caption="../report/models_table.rst",
            category="2. Tables",
            subcategory="{study}",
            labels=get_report_labels("table", "models"),
        ),
        tex="results/{study}/tables/models.tex",
        docx="results/{study}/tables/models.docx",
    log:
        "logs/{study}/tabulate_models.log",
    benchmark:
        "logs/{study}/benchmarks/tabulate_models.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        settings=get_table_settings(name="models"),
    script:
        "../scripts/tabulate_models.py"


rule tabulate_descriptives:
    input:
        analysis=rules.derive_variables.output.analysis,
        patients=rules.derive_variables.output.patients,
        sudden_gains=rules.derive_variables.output.sudden_gains,
    output:
        csv="results/{study}/tables/{table}.csv",
        md="results/{study}/tables/{table}.md",
        html=report(
            "results/{study}/tables/{table}.html",
            caption="../report/descriptive_table.rst",
            category="2. Tables",
            subcategory="{study}",
            labels=get_report_labels("table"),
        ),
        tex="results/{study}/tables/{table}.tex",
        docx="results/{study}/tables/{table}.docx",
    log:
        "logs/{study}/tabulate_{table}.log",
    benchmark:
        "logs/{study}/benchmarks/tabulate_descriptives_{table}.tsv"
    wildcard_constraints:
        table="table1|intake_correlations|clinical_significance|sudden_gains|ruptures",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        min_cell=get_min_cell,
        settings=get_table_settings(wildcard="table"),
    script:
        "../scripts/tabulate_descriptives.py"


rule tabulate_binary_effects:
    input:
        patients=rules.derive_variables.output.patients,
    output:
        csv="results/{study}/tables/binary_effects.csv",
        md=report(
            "results/{study}/tables/binary_effects.md",
            caption="../report/binary_effects.rst",
            category="Tables",
            subcategory="{study}",
        ),
        html="results/{study}/tables/binary_effects.html",
        tex="results/{study}/tables/binary_effects.tex",
        docx="results/{study}/tables/binary_effects.docx",
    log:
        "logs/{study}/tabulate_binary_effects.log",
    benchmark:
        "logs/{study}/benchmarks/tabulate_binary_effects.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        direction=get_outcome_direction,
        settings=get_table_settings(name="binary_effects"),
    script:
        "../scripts/tabulate_binary_effects.py"
