"""The manifest: hashes of inputs and outputs, and verification of a reproduction."""

import hashlib
from pathlib import Path

import pytest

from allianceflow.cli import main
from allianceflow.io import write_json
from allianceflow.manifest import build_manifest, verify_manifest


def test_manifest_hashes_verify_and_tampering_is_found(tmp_path, capsys):
    raw = tmp_path / "raw.csv"
    raw.write_text("a,b\n1,2\n")
    out = tmp_path / "results" / "t.csv"
    out.parent.mkdir()
    out.write_text("x\n1\n")
    manifest = build_manifest(
        study="s", inputs=[raw], outputs=[out], config={"seed": 1}, root=tmp_path
    )
    assert manifest["inputs"] == {"raw.csv": hashlib.sha256(b"a,b\n1,2\n").hexdigest()}
    assert manifest["outputs"] == {"results/t.csv": hashlib.sha256(b"x\n1\n").hexdigest()}
    assert manifest["versions"]["pandas"].count(".") >= 1
    assert manifest["lock_sha256"] is None  # no lock file given
    assert list(manifest)[-1] == "lock_sha256"
    lock = tmp_path / "requirements.lock"
    lock.write_text("pandas==2.2.3 --hash=sha256:00\n")
    locked = build_manifest(
        study="s", inputs=[raw], outputs=[out], config={"seed": 1}, root=tmp_path, lock=lock
    )
    expected = hashlib.sha256(b"pandas==2.2.3 --hash=sha256:00\n").hexdigest()
    assert locked["lock_sha256"] == expected
    assert {k: v for k, v in locked.items() if k != "lock_sha256"} == {
        k: v for k, v in manifest.items() if k != "lock_sha256"
    }
    path = tmp_path / "manifest.json"
    write_json(manifest, path)
    assert verify_manifest(path, root=tmp_path) == []
    assert main(["verify", str(path), "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{path}: all files match\n"
    other = tmp_path / "other.json"
    write_json({**manifest, "allianceflow_source_sha256": "0" * 64}, other)
    assert main(["verify", str(other), "--root", str(tmp_path)]) == 0  # a note, not a failure
    assert capsys.readouterr().out.startswith(
        f"{other}: note: made by other allianceflow code than the one installed "
        "(package files sha256 000000000000..."
    )

    out.write_text("x\n2\n")
    raw.unlink()
    assert verify_manifest(path, root=tmp_path) == ["missing: raw.csv", "differs: results/t.csv"]
    assert main(["verify", str(path), "--root", str(tmp_path)]) == 1
    assert "2 file(s) do not match" in capsys.readouterr().out


def test_source_fingerprint_follows_the_package_files_only(tmp_path):
    import shutil

    import allianceflow
    from allianceflow.io import source_fingerprint

    copy = tmp_path / "allianceflow"
    shutil.copytree(
        Path(allianceflow.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    installed = source_fingerprint()
    assert (
        len(installed) == 64 and source_fingerprint(copy) == installed
    )  # same files, other folder
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"cache")
    (copy / "notes.txt").write_text("not part of the package", encoding="utf-8")
    (copy / ".ipynb_checkpoints").mkdir()
    (copy / ".ipynb_checkpoints" / "tables-checkpoint.py").write_text(
        "# an editor's copy\n", encoding="utf-8"
    )
    assert source_fingerprint(copy) == installed
    instrument = copy / "instruments" / "ors.yaml"
    instrument.write_bytes(instrument.read_bytes() + b"\n")  # an instrument definition is code too
    assert source_fingerprint(copy) != installed
    instrument.write_bytes(instrument.read_bytes()[:-1])
    assert source_fingerprint(copy) == installed
    (copy / "clinical.py").rename(copy / "clinical2.py")  # a renamed module
    assert source_fingerprint(copy) != installed
    assert (
        build_manifest(study="s", inputs=[], outputs=[], config={}, root=tmp_path)[
            "allianceflow_source_sha256"
        ]
        == installed
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No package files under"):
        source_fingerprint(tmp_path / "empty")


def test_every_rule_that_runs_code_takes_the_source_fingerprint():
    # Snakemake reruns a job when its params change, so each rule must carry the hash itself
    # (a rule whose inputs do not come from another rule, like the power rules, would
    # otherwise keep results made by other code)
    import re

    root = Path(__file__).resolve().parents[1]
    files = [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]
    checked, rules = [], []
    for path in files:
        # a rule is "rule name:" at the top level, or "rule:" with a `name:` (one per study,
        # defined in a loop: plot_figures_<study>)
        text = path.read_text(encoding="utf-8")
        for block in re.split(r"\n(?=rule \w+:|( +)rule:)", text):
            if not block:
                continue
            head = re.match(r"rule (\w+):", block) or re.match(
                r" +rule:\n +name:\n +f?\"([\w{}]+)\"", block
            )
            if head:
                rules.append(head.group(1))
            if not head or not re.search(r"^ +(script|run|shell|notebook|wrapper):", block, re.M):
                continue
            params = re.search(r"^( +)params:\n((?:\1    .*\n)+)", block, re.M)
            assert params and "allianceflow_source=SOURCE_FINGERPRINT," in params.group(2), (
                f"{path.name}: rule {head.group(1)}"
            )
            checked.append(head.group(1))
    assert {
        "clean_sessions",
        "fit_model",
        "simulate_power_chunk",
        "write_manifest",
        "plot_meta_forest",
        "plot_figures_{study}",
        "tabulate_tables_{study}",
    } <= set(checked)
    assert sorted(checked) == sorted(set(rules) - {"all"})  # every rule but the target list
