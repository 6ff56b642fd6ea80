"""The summary in words (allianceflow.summary): every number it prints is a record's number.

The records are real fits on the second example study (SRS alliance, PHQ-9 outcome, lower
is better), cleaned, scored and derived as the pipeline does.
"""

import math
import re

import pytest
from docutils.core import publish_parts

from allianceflow.config import load_config
from allianceflow.labels import Labels
from allianceflow.models import fit_model, preset_formula
from allianceflow.stages import prepare_study
from allianceflow.summary import (
    BENCHMARK,
    apa_p,
    apa_r,
    column_label,
    markdown_to_rst,
    r_equivalent,
    study_summary,
)

FORMULA = (
    "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 | patient)"
)
GROWTH = "outcome ~ session + (1 | therapist) + (1 | patient)"


@pytest.fixture(scope="module")
def study(root):
    config = load_config(root / "config.yaml")
    labels = Labels.from_config(config["studies"]["example2"])
    with pytest.warns(UserWarning, match="answered some but not enough items"):
        prepared = prepare_study(config["studies"]["example2"], root=root, name="example2")
    analysis = prepared.analysis
    few = analysis[analysis["therapist"].isin(sorted(analysis["therapist"].unique())[:3])]
    patients = prepared.patients
    records = [
        fit_model(analysis, FORMULA, name="alliance_outcome", ddf="kenward-roger").to_dict(),
        fit_model(analysis, GROWTH, name="growth").to_dict(),
        fit_model(few, FORMULA, name="three_therapists", ddf="satterthwaite").to_dict(),
        # the binary and count presets: patient-level GLMMs
        fit_model(
            patients,
            preset_formula("improvement", by_track=True),
            family="binomial",
            name="improvement_by_track",
        ).to_dict(),
        fit_model(patients, preset_formula("dropout"), family="binomial", name="dropout").to_dict(),
        fit_model(
            patients, preset_formula("attendance"), family="poisson", name="attendance"
        ).to_dict(),
    ]
    text = study_summary(
        records,
        prepared.flow,
        study="example2",
        alliance="srs_total",
        outcome="phq9_total",
        outcome_direction="lower_is_better",
        labels=labels,
    )
    return {"records": records, "flow": prepared.flow, "text": text, "labels": labels}


def _sections(text):
    """Model name -> its paragraph; "Data" -> the data paragraph (references cut off)."""
    body = text.split("\nReferences\n")[0]
    parts = re.split(r"\n(.+)\n-+\n", body)
    out = {}
    for title, content in zip(parts[1::2], parts[2::2], strict=True):
        name = re.search(r"\(model (\w+)\)$", title)
        out[name[1] if name else title] = content
    return out


# a number as the summary prints it: optional minus, thousands separators, optional decimals
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\w])")


def _value(text):
    return float(text.replace(",", ""))


def _decimals(text):
    return len(text.split(".")[1]) if "." in text else 0


def _matches(text, value):
    """*text* is *value* rounded to the decimals *text* shows."""
    return abs(_value(text) - value) <= 0.5 * 10 ** -_decimals(text) + 1e-9


def _record_values(record):
    values = [record["n_obs"], record["n_dropped_missing"], *record["n_groups"].values()]
    values += list(record["dropped_missing_by_variable"].values())
    for row in record["fixed"]:
        values += [row[k] for k in ("estimate", "ci_low", "ci_high", "statistic", "p", "df", "r")]
        values.append(abs(row["estimate"]))
    for term in record["dropped_random_terms"]:
        values += [term["n_levels"], term["min_levels"]]
    for ratio in record.get("ratios") or []:  # a GLMM's OR / IRR and their intervals
        values += [ratio["ratio"], ratio["ci_low"], ratio["ci_high"]]
    for icc in record["icc"].values():  # the ICC, and as a percentage
        values += [icc, 100 * icc]
    return [v for v in values if v is not None]


def _flow_values(flow):
    values = []
    for level in ("sessions", "patients"):
        block = flow[level]
        values += [block["read"], block["kept"], block["excluded"]]
        for key in ("excluded_by_rule", "flagged_by_rule", "altered_by_rule"):
            values += list((block.get(key) or {}).values())
    values += [c["kept_missing"] for c in flow["values"]["missing_by_column"].values()]
    return values


def _strip_labels(text, flow, labels):
    """Remove the labels (which may hold digits, as "PHQ-9 item 4") and the fixed phrases."""
    names = ["srs_total", "phq9_total", *flow["values"]["missing_by_column"]]
    for label in sorted({column_label(labels, n) for n in names}, key=len, reverse=True):
        text = text.replace(label, "")
    text = text.replace("95% CI", "").replace("1 point", "")
    benchmark = "*r* = {}, 95% CI [{}, {}]".format(
        *(f"{BENCHMARK[k]:.3f}"[1:] for k in ("r", "ci_low", "ci_high"))
    )
    return text.replace(benchmark.replace("95% CI", ""), "").replace(BENCHMARK["label"], "")


def test_every_number_in_the_text_is_a_record_value_rounded_as_shown(study):
    sections = _sections(study["text"])
    sources = {r["name"]: _record_values(r) for r in study["records"]}
    sources["Data"] = _flow_values(study["flow"])
    assert set(sections) == set(sources)
    checked = 0
    for name, content in sections.items():
        # the clean stage's warnings are quoted word for word (tested below)
        content = "\n".join(line for line in content.splitlines() if not line.startswith("- "))
        content = _strip_labels(content, study["flow"], study["labels"]).replace("*p* < .001", "")
        for number in NUMBER.findall(content):
            assert any(_matches(number, v) for v in sources[name]), (name, number)
            checked += 1
    assert checked > 40


def test_each_effect_states_its_row(study):
    """b, CI, t(df), p and r of each fixed effect, in order, rounded as shown."""
    pattern = re.compile(
        r"\(\*b\* = (?P<b>\S+), 95% CI \[(?P<lo>\S+), (?P<hi>\S+)\], "
        r"\*(?P<test>[tz])\*(?:\((?P<df>\S+)\))? = (?P<t>\S+), \*p\* (?P<p>[=<] \S+), "
        r"\*r\* = (?P<r>\S+)\)"
    )
    sections = _sections(study["text"])
    for record in study["records"]:
        if "family" in record:
            continue  # GLMMs are stated as OR / IRR (test_glmm_effects_as_ratios)
        stated = [m.groupdict() for m in pattern.finditer(sections[record["name"]])]
        rows = [row for row in record["fixed"] if row["term"] != "Intercept"]
        assert len(stated) == len(rows)
        for numbers, row in zip(stated, rows, strict=True):
            assert _matches(numbers["b"], row["estimate"])
            assert _decimals(numbers["b"]) == _decimals(numbers["lo"]) == _decimals(numbers["hi"])
            assert _matches(numbers["lo"], row["ci_low"]) and _matches(
                numbers["hi"], row["ci_high"]
            )
            # t on Kenward-Roger or Satterthwaite df; Wald z (no df shown) with containment df
            assert numbers["test"] == ("z" if record.get("ddf") is None else "t")
            assert numbers["df"] is None or _matches(numbers["df"], row["df"])
            assert _matches(numbers["t"], row["statistic"])
            assert _matches(numbers["r"], row["r"]) and _decimals(numbers["r"]) == 2
            # the record's r is Rosenthal's r-equivalent of its t on its df
            assert row["r"] == pytest.approx(r_equivalent(row["statistic"], row["df"]), abs=1e-9)
            if numbers["p"].startswith("<"):
                assert numbers["p"] == "< .001" and row["p"] < 0.001
            else:
                assert _matches(numbers["p"][2:], row["p"]) and _decimals(numbers["p"][2:]) == 3


def test_directions_units_and_ns_in_words(study):
    sections = _sections(study["text"])
    main = sections["alliance_outcome"]
    record = study["records"][0]
    within = next(r for r in record["fixed"] if r["term"] == "alliance_within_lag")
    assert within["estimate"] < 0  # more alliance, fewer PHQ-9 symptoms next session
    assert (
        "A session whose SRS total was 1 point above the patient's usual level was followed at "
        f"the next session by a PHQ-9 total {abs(within['estimate']):.2f} points lower (better)"
    ) in main
    assert (
        f"The model used {record['n_obs']} sessions of {record['n_groups']['patient']} patients "
        f"and {record['n_groups']['therapist']} therapists."
    ) in main
    lag = record["dropped_missing_by_variable"]["alliance_within_lag"]
    assert f"{record['n_dropped_missing']} sessions were left out because" in main
    assert (
        f"{lag} had no SRS total at the previous session, within-patient (deviation from the "
        "patient's mean), as at every patient's first session"
    ) in main
    assert "The fit converged without warnings." in main
    # the benchmark, on alliance-outcome models only, with the outcome's direction
    assert "*r* = .278, 95% CI [.256, .299], in Flückiger et al. (2018)" in main
    assert "a negative *r* is in the benchmark's direction" in main
    assert "Flückiger" not in sections["growth"]
    assert sections["growth"].startswith("\nWith each further session, the PHQ-9 total was")


def test_a_study_of_clients_speaks_of_clients(study):
    """Labels.person words the same record's sentences, N and reasons (couple therapy)."""
    from dataclasses import replace

    from allianceflow.summary import data_paragraph, model_paragraph

    record = study["records"][0]
    clients = replace(study["labels"], person="client")
    text = model_paragraph(
        record,
        labels=clients,
        alliance="srs_total",
        outcome="phq9_total",
        outcome_direction="lower_is_better",
        benchmark=None,  # the benchmark's own studies are of patients
    )
    within = next(r for r in record["fixed"] if r["term"] == "alliance_within_lag")
    between = next(r for r in record["fixed"] if r["term"] == "alliance_between")
    assert (
        "A session whose SRS total was 1 point above the client's usual level was followed at "
        f"the next session by a PHQ-9 total {abs(within['estimate']):.2f} points lower (better)"
    ) in text
    assert (
        "Clients whose mean SRS total was 1 point higher than another client's had a PHQ-9 "
        f"total {abs(between['estimate']):.2f} points"
    ) in text
    lag = record["dropped_missing_by_variable"]["alliance_within_lag"]
    assert (
        f"{lag} had no SRS total at the previous session, within-client (deviation from the "
        "client's own mean), as at every client's first session"
    ) in text
    assert f"sessions of {record['n_groups']['patient']} clients and" in text
    assert "SRS total within and between clients predicting PHQ-9 total" in text
    assert "random intercepts for clients" in text
    assert "patient" not in text
    s, p = study["flow"]["sessions"], study["flow"]["patients"]
    assert (
        f"The export held {s['read']:,} session rows of {p['read']:,} clients; {s['kept']:,} "
        f"rows of {p['kept']:,} clients were kept"
    ) in data_paragraph(study["flow"], labels=clients)


def test_dropped_random_terms_are_stated(study):
    few = _sections(study["text"])["three_therapists"]
    assert "Warning: The grouping factor 'therapist' has 3 levels in the rows used" in few
    assert "of 3 therapists" not in few  # the dropped level is not reported as a level
    assert "*t* on Satterthwaite degrees of freedom (Kuznetsova et al., 2017)" in study["text"]


def test_data_paragraph_reconciles_and_quotes_the_clean_warnings(study):
    data = _sections(study["text"])["Data"]
    s, p = study["flow"]["sessions"], study["flow"]["patients"]
    assert (
        f"The export held {s['read']:,} session rows of {p['read']:,} patients; {s['kept']:,} "
        f"rows of {p['kept']:,} patients were kept and {s['excluded']:,} rows excluded."
    ) in data
    assert "Rows flagged but kept, by reason: sessions missing before it: 27." in data
    assert "PHQ-9 item 4: 15;" in data  # kept_missing of phq9_4
    for warning in study["flow"]["warnings"]:
        assert f"- {warning}" in data
    assert any(w.startswith("phq9: 84 of 1048 kept sessions") for w in study["flow"]["warnings"])


def test_the_summary_is_valid_restructuredtext(study):
    """The report includes it as its front page; docutils must read it without a warning."""
    html = publish_parts(
        markdown_to_rst(study["text"]), writer="html", settings_overrides={"halt_level": 2}
    )["html_body"]
    assert '<h1 class="title">Results: example2</h1>' in html
    # six models, the data and the references, each a section of its own
    assert html.count('<div class="section"') == 8
    assert "<em>t</em>(" in html and "*" not in html


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.0341, "p = .034"), (0.0009999, "p < .001"), (0.001, "p = .001"), (0.5, "p = .500")],
)
def test_apa_p(p, text):
    assert apa_p(p) == text


def test_apa_r_and_r_equivalent_by_hand():
    # t = 3, df = 16: r = 3 / sqrt(9 + 16) = 0.6 exactly
    assert r_equivalent(3.0, 16.0) == pytest.approx(0.6, abs=1e-15)
    assert apa_r(-0.6) == "-.60" and apa_r(-0.001) == ".00"
    with pytest.raises(ValueError, match=r"`df` must be positive .* got df=0"):
        r_equivalent(1.0, 0)


@pytest.mark.parametrize(
    ("records", "error", "match"),
    [
        (
            {"name": "m"},
            TypeError,
            r"`records` must be a list of model records \(dicts\); got dict",
        ),
        (["m"], TypeError, r"`records` must be a list of model records"),
        (
            [{"name": "m", "fixed": []}],
            KeyError,
            r"the record 'm' lacks \['n_obs', 'n_groups'\]",
        ),
    ],
)
def test_bad_records(records, error, match):
    with pytest.raises(error, match=match):
        study_summary(records, {}, study="s", alliance="wai_sr_total", outcome="ors_total")


def test_every_clean_rule_has_words():
    from allianceflow.clean import RULES
    from allianceflow.summary import RULE_WORDS

    assert sorted(RULE_WORDS) == sorted(RULES)


def test_variance_components_in_words(study):
    """Each model's ICCs, as the share of the variance the fixed effects leave unexplained."""
    sections = _sections(study["text"])
    record = study["records"][0]
    icc = record["icc"]
    assert list(icc) == ["therapist", "patient"]
    assert (
        "Of the variance in the PHQ-9 total that the fixed effects leave unexplained, "
        f"{100 * icc['therapist']:.0f}% lay between therapists (ICC = "
        f"{apa_r(icc['therapist'])}) and {100 * icc['patient']:.0f}% between patients "
        f"(ICC = {apa_r(icc['patient'])})."
    ) in sections["alliance_outcome"]
    # a GLMM's ICC is on the latent scale; no model states an interval the record lacks
    attendance = study["records"][-1]
    assert (
        "Of the variance in sessions attended (on the latent log-rate scale) that the fixed "
        f"effects leave unexplained, {100 * attendance['icc']['therapist']:.0f}% lay between "
        "therapists"
    ) in sections["attendance"]
    assert not re.search(r"ICC = [^)]*CI", study["text"])


RATIO = re.compile(
    r"\((?P<name>OR|IRR) = (?P<ratio>\S+), 95% CI \[(?P<lo>\S+), (?P<hi>\S+)\], "
    r"\*b\* = (?P<b>\S+), \*z\* = (?P<z>\S+), \*p\* (?P<p>[=<] [^)]+)\)"
)


def test_glmm_effects_as_ratios(study):
    """Each GLMM effect as OR or IRR with its CI, b, z and p, equal to the record."""
    sections = _sections(study["text"])
    glmms = [r for r in study["records"] if "family" in r]
    assert [r["name"] for r in glmms] == ["improvement_by_track", "dropout", "attendance"]
    for record in glmms:
        text = sections[record["name"]]
        stated = [m.groupdict() for m in RATIO.finditer(text)]
        ratios = {r["term"]: r for r in record["ratios"]}
        rows = [row for row in record["fixed"] if row["term"] != "Intercept"]
        assert len(stated) == len(rows)
        for numbers, row in zip(stated, rows, strict=True):
            ratio = ratios[row["term"]]
            assert numbers["name"] == ("OR" if record["family"] == "binomial" else "IRR")
            for key, value in (("ratio", "ratio"), ("lo", "ci_low"), ("hi", "ci_high")):
                assert _matches(numbers[key], ratio[value]), (record["name"], key)
            assert ratio["ratio"] == pytest.approx(math.exp(row["estimate"]), rel=1e-9)
            assert _matches(numbers["b"], row["estimate"])
            assert _matches(numbers["z"], row["statistic"])
        assert "*r* =" not in text  # no r-equivalent for a binary or count outcome
        assert f"The model used {record['n_obs']} patients of " in text
    improvement = glmms[0]
    arm = next(r for r in improvement["fixed"] if r["term"] == "feedback")
    word = "higher" if arm["estimate"] > 0 else "lower"
    judged = "better" if arm["estimate"] > 0 else "worse"
    assert (
        f"Patients in the feedback-informed treatment arm had {word} odds of reliable "
        f"improvement or recovery ({judged}) than patients in usual care, where the terms it "
        "interacts with are zero or at their reference level (OR = "
    ) in sections["improvement_by_track"]
    assert "by the ratio of odds ratios (OR = " in sections["improvement_by_track"]
    assert (
        "Each 1 point higher early SRS total (mean of the first sessions) went with"
        in (sections["dropout"])
    )
    assert "conditional on the random effects (a typical therapist)" in study["text"]


def test_one_question_for_summary_forest_plot_and_table(study, tmp_path):
    """The summary's heading, the forest plot's title and the table's title word one question."""
    import xml.etree.ElementTree as ET

    from allianceflow import io, stages
    from allianceflow.labels import title_case
    from allianceflow.summary import question_of
    from allianceflow.tables import model_table, ratio_table

    labels = study["labels"]
    for record in study["records"]:
        question = labels.question(record)
        assert question_of(record, labels) == question
        assert f"\n{question} (model {record['name']})\n" in study["text"]
        path = tmp_path / f"{record['name']}.json"
        io.write_json(record, path)
        svg = tmp_path / f"{record['name']}.svg"
        stages.model_forest_figure_stage(model=path, labels=labels.to_dict(), outputs=[svg])
        texts = [
            " ".join("".join(e.itertext()).split())
            for e in ET.parse(svg).iter()
            if e.tag.endswith("}text")
        ]
        assert " ".join(question.split()) in " ".join(texts), record["name"]
        table = (
            ratio_table(record, labels=labels)
            if "family" in record
            else model_table([record], name=record["name"], labels=labels)
        )
        assert table.title == title_case(question)
