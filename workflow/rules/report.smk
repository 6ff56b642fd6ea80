rule write_manifest:
    input:
        raw=get_raw,
        config=get_config_files(),
        outputs=get_manifest_outputs,
        lock=get_lock_file(),
    output:
        manifest="results/{study}/manifest.json",
    log:
        "logs/{study}/write_manifest.log",
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        resolved=get_resolved_config,
    script:
        "../scripts/write_manifest.py"
