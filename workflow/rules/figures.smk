rule plot_within_between:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        png=report(
            "results/{study}/figures/within_between.png",
            caption="../report/within_between.rst",
            category="Figures",
            subcategory="{study}",
        ),
        pdf="results/{study}/figures/within_between.pdf",
        svg="results/{study}/figures/within_between.svg",
    params:
        study=get_study,
    log:
        "logs/{study}/plot_within_between.log",
    script:
        "../scripts/plot_within_between.py"
