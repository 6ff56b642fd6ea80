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
    log:
        "logs/{study}/tabulate_model_{model}.log",
    script:
        "../scripts/tabulate_model.py"
