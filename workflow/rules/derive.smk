rule derive_variables:
    input:
        scored=rules.score_instruments.output.scored,
        reference=get_reference_scored,
    output:
        analysis="data/processed/{study}/analysis.parquet",
        patients="data/processed/{study}/patients.parquet",
        sudden_gains="data/processed/{study}/sudden_gains.csv",
        expected="results/{study}/models/expected_response.json",
    log:
        "logs/{study}/derive_variables.log",
    benchmark:
        "logs/{study}/benchmarks/derive_variables.tsv"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        study=get_study,
    script:
        "../scripts/derive_variables.py"
