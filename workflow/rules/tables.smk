# Tables: CSV (the unrounded numbers) and the APA table as Markdown, HTML, LaTeX and Word.
PUBLISHED_TABLE_FORMATS = ["csv", "md", "html", "tex", "docx"]


rule tabulate_model:
    input:
        model=rules.fit_model.output.json,
    output:
        csv="results/{study}/tables/{model}.csv",
        md=report(
            "results/{study}/tables/{model}.md",
            caption="../report/model_table.rst",
            category="Tables",
            subcategory="{study}",
        ),
        html="results/{study}/tables/{model}.html",
        tex="results/{study}/tables/{model}.tex",
        docx="results/{study}/tables/{model}.docx",
    log:
        "logs/{study}/tabulate_model_{model}.log",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
    script:
        "../scripts/tabulate_model.py"


rule tabulate_models:
    input:
        models=get_model_results,
    output:
        csv="results/{study}/tables/models.csv",
        md=report(
            "results/{study}/tables/models.md",
            caption="../report/models_table.rst",
            category="Tables",
            subcategory="{study}",
        ),
        html="results/{study}/tables/models.html",
        tex="results/{study}/tables/models.tex",
        docx="results/{study}/tables/models.docx",
    log:
        "logs/{study}/tabulate_models.log",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
    script:
        "../scripts/tabulate_models.py"


rule render_reliability:
    input:
        csv=rules.compute_reliability.output.csv,
    output:
        html="results/{study}/tables/reliability.html",
        tex="results/{study}/tables/reliability.tex",
        docx="results/{study}/tables/reliability.docx",
    log:
        "logs/{study}/render_reliability.log",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
    script:
        "../scripts/render_reliability.py"


rule tabulate_descriptives:
    input:
        analysis=rules.derive_variables.output.analysis,
        patients=rules.derive_variables.output.patients,
        sudden_gains=rules.derive_variables.output.sudden_gains,
    output:
        csv="results/{study}/tables/{table}.csv",
        md=report(
            "results/{study}/tables/{table}.md",
            caption="../report/descriptive_table.rst",
            category="Tables",
            subcategory="{study}",
        ),
        html="results/{study}/tables/{table}.html",
        tex="results/{study}/tables/{table}.tex",
        docx="results/{study}/tables/{table}.docx",
    log:
        "logs/{study}/tabulate_{table}.log",
    wildcard_constraints:
        table="table1|intake_correlations|clinical_significance|sudden_gains|ruptures",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        min_cell=get_min_cell,
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
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        direction=get_outcome_direction,
    script:
        "../scripts/tabulate_binary_effects.py"
