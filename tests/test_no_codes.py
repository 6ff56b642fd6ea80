"""No published figure or table prints a column code or a formula term (issue 16).

A small simulated study runs through the pipeline's own stage functions (score, derive,
fit, every table and every figure of the study, with the example study's config), and
every SVG ``<text>``/``<title>`` and every table cell, heading, title and note is searched
for the codes of the data: the column names of the analysis, patient and sudden-gain
tables, the fixed- and random-effect term names of the fitted models, and the arm codes
that differ from their labels ("tau").
"""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import run_study_stages

from allianceflow import io, stages
from allianceflow.config import load_config
from allianceflow.labels import Labels
from allianceflow.simulate import simulate_study

MODELS = [
    "alliance_outcome",
    "feedback",
    "therapist_effects",
    "rupture_repair",
    "alliance_outcome_modality",
]
#: Patient-level GLMMs (the binary and count presets), fitted to the patients table.
PATIENT_MODELS = ["dropout", "improvement", "attendance"]
TABLES = ["table1", "intake_correlations", "clinical_significance", "sudden_gains", "ruptures"]


@pytest.fixture(scope="module")
def study(root, tmp_path_factory):
    """Run the stages on a simulated study with the example study's settings."""
    config = load_config(root / "config.yaml")
    block = dict(config["studies"]["example"])
    block["models"] = MODELS
    out = tmp_path_factory.mktemp("study")
    sessions = simulate_study(
        seed=11,
        n_patients=60,
        n_therapists=6,
        max_sessions=10,
        modality={"shares": {"in_person": 0.6, "video": 0.4}, "within_effect": {"video": 0.5}},
    )
    files, models = run_study_stages(sessions, block, config["models"], MODELS, out)
    for name in PATIENT_MODELS:
        stages.patient_fit_stage(
            files["patients"],
            config["models"][name],
            name=name,
            json=out / f"{name}.json",
            txt=out / f"{name}.txt",
        )
        models.append(out / f"{name}.json")
    return {"config": block, "dir": out, "files": files, "models": models}


def _codes(study) -> set[str]:
    """Codes a reader must never see: column names and model terms, and arm codes."""
    found: set[str] = set()
    for path in study["files"].values():
        found |= set(io.read_table(path).columns)
    for path in study["models"]:
        result = io.read_json(path)
        found |= {f["term"] for f in result["fixed"]}
        found |= {r["term"] for r in result["random"]} | {r["group"] for r in result["random"]}
    # plain words (session, patient, outcome, condition) are English as well as codes;
    # a code has an underscore, a digit or formula syntax
    codes = {c for c in found if re.search(r"[_\d(\[:]", c) and c != "Intercept"}
    labels = Labels.from_config(study["config"])
    words = " ".join(labels.arm(level) for level in labels.levels["condition"])
    codes |= {level for level in labels.levels["condition"] if not _hits(words, {level})}
    return codes


def _hits(text: str, codes: set[str]) -> list[str]:
    return sorted(c for c in codes if re.search(r"(?<![\w])" + re.escape(c) + r"(?![\w])", text))


def _svg_texts(path) -> list[str]:
    tree = ET.parse(path)
    out = []
    for element in tree.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ("text", "title"):
            out.append("".join(element.itertext()))
    return out


def test_the_codes_are_real(study):
    """The search could fail: the data do hold the codes issue 16 found in the outputs."""
    codes = _codes(study)
    assert {"ors_total", "wai_sr_total", "alliance_within_lag", "tau"} <= codes
    assert "C(condition)[T.tau]:off_track" in codes
    assert {"early_alliance", "outcome_baseline", "sessions_attended"} <= codes
    assert _hits("x ors_total y", codes) == ["ors_total"]
    assert _hits("ORS total, treatment as usual", codes) == []


def test_no_figure_prints_a_code(study, tmp_path):
    codes = _codes(study)
    block = study["config"]
    inputs = {
        "analysis": study["files"]["analysis"],
        "patients": study["files"]["patients"],
        "sudden_gains": study["files"]["sudden_gains"],
        "models": study["models"],
        "model": study["models"][0],
        "flow": tmp_path / "flow.json",
        "sessions": study["files"]["analysis"],
    }
    io.write_json(
        {
            "source_file": "sessions.csv",
            "sessions": {"read": 10, "kept": 10, "excluded": 0, "excluded_by_rule": {}},
            "patients": {"read": 2, "kept": 2, "excluded": 0, "excluded_by_rule": {}},
        },
        inputs["flow"],
    )
    wanted = {
        "within_between": ("analysis", "models"),
        "trajectories": ("analysis", "model"),
        "forest": ("model",),
        "flow": ("flow", "sessions", "models"),
        "expected_response": ("analysis",),
        "feedback": ("analysis",),
        "ruptures": ("analysis",),
        "sudden_gains": ("analysis", "sudden_gains"),
        "reliable_change": ("patients",),
        "caterpillar": ("model",),
        "binary_rates": ("patients",),
        "dropout_curve": ("model", "patients"),
    }
    drawn = []
    for name, keys in wanted.items():
        settings = stages.figure_settings(name, block)
        for i, model in enumerate(study["models"] if name == "forest" else [None]):
            given = {k: inputs[k] for k in keys}
            if model is not None:
                given["model"] = model
            if name == "dropout_curve":
                given["model"] = study["dir"] / "dropout.json"
            svg = tmp_path / f"{name}_{i}.svg"
            stages.figure_stage(name, inputs=given, settings=settings, outputs=[svg])
            texts = _svg_texts(svg)
            assert texts, name
            for text in texts:
                assert _hits(text, codes) == [], (svg.name, text)
            drawn.append(svg.name)
    assert len(drawn) == len(wanted) + len(study["models"]) - 1


def test_no_table_prints_a_code(study, tmp_path):
    from allianceflow.tables import render_html

    codes = _codes(study)
    built = []
    for name in TABLES:
        stages.descriptive_table_stage(
            name,
            analysis=study["files"]["analysis"],
            patients=study["files"]["patients"],
            sudden_gains=study["files"]["sudden_gains"],
            labels=Labels.from_config(study["config"]).to_dict(),
            outputs=[tmp_path / f"{name}.html"],
        )
        built.append(tmp_path / f"{name}.html")
    for path in study["models"]:
        stages.model_table_stage(
            path,
            csv=tmp_path / f"{path.stem}.csv",
            md=tmp_path / f"{path.stem}.md",
            html=tmp_path / f"{path.stem}.html",
            labels=Labels.from_config(study["config"]).to_dict(),
        )
        built.append(tmp_path / f"{path.stem}.html")
    stages.binary_effects_stage(
        study["files"]["patients"],
        direction="higher_is_better",
        csv=tmp_path / "binary_effects.csv",
        outputs=[tmp_path / "binary_effects.html"],
        labels=Labels.from_config(study["config"]).to_dict(),
    )
    built.append(tmp_path / "binary_effects.html")
    stages.models_table_stage(
        study["models"],
        labels=Labels.from_config(study["config"]).to_dict(),
        outputs=[tmp_path / "models.html"],
    )
    built.append(tmp_path / "models.html")
    assert render_html  # the HTML files hold every heading, cell, title and note
    for path in built:
        text = re.sub(r"<[^>]+>", "\n", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            assert _hits(line, codes) == [], (path.name, line)


def test_no_simple_slopes_output_prints_a_code(study, tmp_path):
    codes = _codes(study)
    labels = Labels.from_config(study["config"]).to_dict()
    moderated = study["models"][MODELS.index("alliance_outcome_modality")]
    svg, html = tmp_path / "slopes.svg", tmp_path / "slopes.html"
    outcome = study["config"]["measures"]["outcome"]
    stages.simple_slopes_figure_stage(moderated, outcome=outcome, outputs=[svg], labels=labels)
    stages.simple_slopes_table_stage(moderated, outputs=[html], labels=labels)
    texts = _svg_texts(svg)
    assert any("video" in t.lower() for t in texts)
    for text in texts:
        assert _hits(text, codes) == [], text
    table = re.sub(r"<[^>]+>", "\n", html.read_text(encoding="utf-8"))
    assert "Video" in table
    for line in table.splitlines():
        assert _hits(line, codes) == [], line


def test_no_pooled_output_prints_a_code(study, tmp_path):
    """The pooled forest plot and table name the studies, the effect and its unit in words."""
    codes = _codes(study) | {"alliance_within_lag", "alliance_between"}
    # the fit and a copy with a shifted within-patient estimate stand for two studies
    # (unmoderated both: a moderated and an unmoderated model are not pooled)
    model = study["models"][MODELS.index("alliance_outcome")]
    record = json.loads(Path(model).read_text(encoding="utf-8"))
    for row in record["fixed"]:
        if row["term"] == "alliance_within_lag":
            row.update({k: row[k] + 0.05 for k in ("estimate", "ci_low", "ci_high")})
            row["r"] = row["r"] + 0.05
    other = tmp_path / "other.json"
    other.write_text(json.dumps(record), encoding="utf-8")
    labels = Labels.from_config(study["config"]).to_dict()
    meta = tmp_path / "meta.json"
    tables = [tmp_path / f"meta.{ext}" for ext in ("html", "tex")]
    stages.pool_stage(
        models={"example": model, "example2": other},
        analyses={},
        directions={"example": "higher_is_better", "example2": "higher_is_better"},
        formula="",
        one_stage=False,
        meta_json=meta,
        table_csv=tmp_path / "meta.csv",
        table_md=tmp_path / "meta.md",
        one_stage_json=tmp_path / "one.json",
        comparison_csv=tmp_path / "comparison.csv",
        table_formats=tables,
        labels={"example": labels, "example2": labels},
    )
    svg = tmp_path / "forest.svg"
    stages.meta_forest_figure_stage(
        meta,
        benchmark={
            "label": "Flückiger et al. (2018)",
            "r": 0.278,
            "ci_low": 0.256,
            "ci_high": 0.299,
        },
        outputs=[svg],
    )
    texts = " ".join(" ".join(t.split()) for t in _svg_texts(svg))
    assert "example: alliance WAI-SR total, outcome ORS total" in texts
    assert "within-patient alliance–outcome association" in texts
    for text in _svg_texts(svg):
        assert _hits(text, codes) == [], text
    html = re.sub(r"<[^>]+>", "\n", tables[0].read_text(encoding="utf-8"))
    assert "example2: alliance WAI-SR total, outcome ORS total" in html
    assert "<strong>Table 1</strong>" in tables[0].read_text(encoding="utf-8")
    for line in html.splitlines() + (tmp_path / "meta.md").read_text().splitlines():
        assert _hits(line, codes) == [], line
    assert "\\begin{table}" in tables[1].read_text(encoding="utf-8")


# --------------------------------------------------------------------------- couples (issue 17)

#: Models of the couples study whose terms reach its figures and tables.
COUPLE_MODELS = ["couple_alliance_outcome_roles", "split_alliance"]


@pytest.fixture(scope="module")
def couples(root, tmp_path_factory):
    """Run the stages on a simulated couples study with the example3 study's settings."""
    from allianceflow.simulate import simulate_couples

    config = load_config(root / "config.yaml")
    block = dict(config["studies"]["example3"])
    out = tmp_path_factory.mktemp("couples")
    sessions = simulate_couples(seed=9, n_systems=30, n_therapists=6, max_sessions=8)
    files, models = run_study_stages(sessions, block, config["models"], COUPLE_MODELS, out)
    return {"config": block, "files": files, "models": models}


def _couple_codes(couples) -> set[str]:
    found: set[str] = set()
    for path in couples["files"].values():
        found |= set(io.read_table(path).columns)
    for path in couples["models"]:
        result = io.read_json(path)
        found |= {f["term"] for f in result["fixed"]} | {r["group"] for r in result["random"]}
    found |= {"partner_a", "partner_b"}  # role codes: printed "partner A", "partner B"
    return {c for c in found if re.search(r"[_\d(\[:]", c) and c != "Intercept"}


def test_no_couples_figure_or_table_prints_a_code(couples, tmp_path):
    codes = _couple_codes(couples)
    assert {"alliance_split_between", "role_partner_b", "alliance_partner_within_lag"} <= codes
    assert "alliance_within_lag:role_partner_b" in codes
    block = couples["config"]
    inputs = {"analysis": couples["files"]["analysis"], "models": couples["models"]}
    wanted = {
        "couple_trajectories": ("analysis",),
        "split_outcome": ("analysis", "models"),
        "within_between": ("analysis", "models"),
        "forest": ("model",),
    }
    for name, keys in wanted.items():
        for i, model in enumerate(couples["models"] if name == "forest" else [None]):
            given = {k: inputs[k] for k in keys if k != "model"}
            if model is not None:
                given["model"] = model
            svg = tmp_path / f"{name}_{i}.svg"
            stages.figure_stage(
                name, inputs=given, settings=stages.figure_settings(name, block), outputs=[svg]
            )
            texts = _svg_texts(svg)
            assert texts, name
            for text in texts:
                assert _hits(text, codes) == [], (svg.name, text)
    labels = Labels.from_config(block).to_dict()
    for path in couples["models"]:
        html = tmp_path / f"{path.stem}.html"
        md, csv = tmp_path / f"{path.stem}.md", tmp_path / f"{path.stem}.csv"
        stages.model_table_stage(path, csv=csv, md=md, html=html, labels=labels)
        text = re.sub(r"<[^>]+>", "\n", html.read_text(encoding="utf-8"))
        assert ("Partner B (vs partner A)" in text) == ("roles" in path.stem)
        for line in text.splitlines():
            assert _hits(line, codes) == [], (path.name, line)
