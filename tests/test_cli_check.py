"""Tests of ``allianceflow check``: a table of problems, exit 0 only when clean."""

import shutil

import yaml

from allianceflow.cli import main


def _project(tmp_path, root, raw_name, **study):
    config = yaml.safe_load((root / "config.yaml").read_text())
    block = config["studies"]["example"]
    block["read"]["raw"] = raw_name
    for section, settings in study.items():
        block.setdefault(section, {}).update(settings)
    (tmp_path / "workflow" / "schemas").mkdir(parents=True)
    shutil.copy(
        root / "workflow" / "schemas" / "config.schema.yaml", tmp_path / "workflow" / "schemas"
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config.yaml"


def test_example_is_clean(root, capsys):
    status = main(
        [
            "check",
            str(root / "data/raw/example/sessions_export.csv"),
            "--config",
            str(root / "config.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith(
        "sessions_export.csv (study 'example'): 3374 rows read, 3374 kept, 0 excluded "
        "(0 by rules set to error); 300 patients, 300 kept."
    )
    assert "31    SessionNo  session_gap  flagged  session 11 missing before session 12" in out
    assert out.rstrip().endswith("sessions_export.csv: clean.")


def test_problems_are_listed_and_exit_1(root, tmp_path, capsys):
    lines = (root / "data/raw/example/sessions_export.csv").read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(",4,", ",twelve,", 1)  # text in an item (rule set to error)
    lines.append(lines[5])  # an identical duplicate
    (tmp_path / "bad.csv").write_text("".join(lines))
    config = _project(tmp_path, root, "bad.csv")
    status = main(["check", str(tmp_path / "bad.csv"), "--config", str(config)])
    out = capsys.readouterr().out
    assert status == 1
    assert (
        "3374 rows read" not in out
        and "3375 rows read, 3373 kept, 2 excluded (1 by rules set to error)" in out
    )
    assert "4     WAI_SR_01  not_a_number" in out and "'twelve' is not a number" in out
    assert "duplicate_identical  excluded" in out


def test_fatal_error_is_one_paragraph(root, tmp_path, capsys):
    (tmp_path / "e.csv").write_text("ClientCode,Email\nP1,a@b.org\n")
    config = _project(tmp_path, root, "e.csv")
    status = main(["check", str(tmp_path / "e.csv"), "--config", str(config)])
    out = capsys.readouterr().out
    assert status == 1
    assert out == (
        "e.csv: cannot be cleaned\n\ne.csv: column 'Email' looks like it holds e-mail addresses "
        "(by its name and content; first at row 2). The input must be de-identified before the "
        "pipeline reads it. Remove the column from the export, or add 'Email' to "
        "`studies.example.privacy.drop_columns` in config.yaml to drop it explicitly before "
        "anything is "
        "read from it.\n"
    )


def test_debug_shows_the_traceback(root, tmp_path):
    import pytest

    from allianceflow.io import DataError

    (tmp_path / "e.csv").write_text("")
    config = _project(tmp_path, root, "e.csv")
    with pytest.raises(DataError, match="e.csv: the file is empty"):
        main(["check", str(tmp_path / "e.csv"), "--config", str(config), "--debug"])


def test_unknown_study(root, capsys):
    status = main(["check", "x.csv", "--config", str(root / "config.yaml"), "--study", "nope"])
    assert status == 1
    assert "there is no study 'nope'; the studies are example" in capsys.readouterr().out


def _many_problems(tmp_path, root):
    """An export whose problem table (about 300 kB) is larger than a pipe's buffer (64 kB)."""
    lines = (root / "data/raw/example/sessions_export.csv").read_text().splitlines(keepends=True)
    (tmp_path / "twice.csv").write_text("".join(lines + lines[1:]))  # every row twice
    return tmp_path / "twice.csv", _project(tmp_path, root, "twice.csv")


def test_a_closed_pipe_ends_quietly(root, tmp_path):
    """`allianceflow check ... | head -1`: the first line, then no traceback (status 1)."""
    import subprocess
    import sys

    raw, config = _many_problems(tmp_path, root)
    command = [sys.executable, "-m", "allianceflow", "check", str(raw), "--config", str(config)]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head alone reads the pipe, as in a shell
    first_line, _ = head.communicate(timeout=300)
    stderr = producer.stderr.read().decode()
    producer.stderr.close()
    assert producer.wait(timeout=300) == 1
    assert stderr == ""
    assert first_line.decode() == (
        "twice.csv (study 'example'): 6748 rows read, 3374 kept, 3374 excluded (0 by rules set "
        "to error); 300 patients, 300 kept.\n"
    )


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"allianceflow {version('allianceflow')}\n"


def test_help_is_plain_text(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: allianceflow [-h] [--version] COMMAND ...\n")
    assert "  allianceflow check data/raw/example/sessions_export.csv\n" in out
    assert "`" not in out and "::" not in out  # no reStructuredText markup
