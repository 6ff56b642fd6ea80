# Moderated models (a preset with `options: {moderator: <column>}`): the simple slopes of the
# alliance at each moderator level, as a table and a figure, from the fitted model's JSON.


rule tabulate_simple_slopes:
    input:
        model=rules.fit_model.output.json,
    output:
        csv="results/{study}/tables/simple_slopes_{model}.csv",
        md=report(
            "results/{study}/tables/simple_slopes_{model}.md",
            caption="../report/simple_slopes_table.rst",
            category="2. Tables",
            subcategory="{study}",
        ),
        html="results/{study}/tables/simple_slopes_{model}.html",
        tex="results/{study}/tables/simple_slopes_{model}.tex",
        docx="results/{study}/tables/simple_slopes_{model}.docx",
    log:
        "logs/{study}/tabulate_simple_slopes_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/tabulate_simple_slopes_{model}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        settings=get_table_settings(wildcard="model", prefix="simple_slopes_"),
    script:
        "../scripts/tabulate_simple_slopes.py"


rule plot_simple_slopes:
    input:
        model=rules.fit_model.output.json,
    output:
        png=report(
            "results/{study}/figures/simple_slopes_{model}.png",
            caption="../report/simple_slopes.rst",
            category="3. Figures",
            subcategory="{study}",
        ),
        pdf="results/{study}/figures/simple_slopes_{model}.pdf",
        svg="results/{study}/figures/simple_slopes_{model}.svg",
    log:
        "logs/{study}/plot_simple_slopes_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/plot_simple_slopes_{model}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        outcome=get_outcome_score,
        labels=get_study_labels,
    script:
        "../scripts/plot_simple_slopes.py"
