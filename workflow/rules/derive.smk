rule derive_variables:
    input:
        scored=rules.score_instruments.output.scored,
    output:
        analysis="data/processed/{study}/analysis.parquet",
    params:
        study=get_study,
    log:
        "logs/{study}/derive_variables.log",
    script:
        "../scripts/derive_variables.py"
