rule write_manifest:
    input:
        raw=get_raw,
        config=get_config_files(),
        outputs=get_manifest_outputs,
    output:
        manifest="results/{study}/manifest.json",
    params:
        study=get_study,
    log:
        "logs/{study}/write_manifest.log",
    script:
        "../scripts/write_manifest.py"
