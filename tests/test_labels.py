"""Labels: column codes and model terms in words, with defaults from the instrument files."""

import patsy
import pytest

from allianceflow.config import flat_study, load_config
from allianceflow.labels import Labels, abbreviation, identifier, lower_first
from allianceflow.models import preset_formula

STUDY = {
    "read": {"labels": {"condition": {"ROM feedback": "feedback", "TAU": "tau"}}},
    "measures": {
        "instruments": {"wai_sr": {"max_missing": 1}, "ors": {"rci": 5}},
        "alliance": "wai_sr_total",
        "outcome": "ors_total",
    },
}


@pytest.fixture(scope="module")
def labels():
    return Labels.from_config(STUDY)


@pytest.mark.parametrize(
    ("name", "version", "short"),
    [
        ("Working Alliance Inventory - Short Revised", "client (WAI-SR)", "WAI-SR"),
        ("Working Alliance Inventory - Short Revised", None, "WAI-SR"),
        ("Outcome Rating Scale", "adult", "ORS"),
        ("Session Rating Scale", "3.0", "SRS"),
        ("Patient Health Questionnaire-9", None, "PHQ-9"),
        ("Generalized Anxiety Disorder-7", None, "GAD-7"),
        ("Outcome Questionnaire-45.2", "45.2", "OQ-45.2"),
        ("CORE-10", None, "CORE-10"),
    ],
)
def test_abbreviation_of_each_shipped_instrument(name, version, short):
    assert abbreviation(name, version) == short


@pytest.mark.parametrize(
    ("column", "words"),
    [
        ("wai_sr_total", "WAI-SR total"),
        ("ors_total", "ORS total"),
        ("wai_sr_bond", "WAI-SR affective bond"),
        ("alliance", "WAI-SR total"),
        ("outcome", "ORS total"),
        (
            "wai_sr_total_within",
            "WAI-SR total, within-patient (deviation from the patient's mean)",
        ),
        ("wai_sr_total_between", "WAI-SR total, patient mean"),
        (
            "alliance_within_lag",
            "WAI-SR total at the previous session, within-patient "
            "(deviation from the patient's mean)",
        ),
        (
            "alliance_within_detrended_lag",
            "WAI-SR total at the previous session, deviation from the patient's own linear trend",
        ),
        ("alliance_between", "WAI-SR total, patient mean"),
        ("alliance_pmean", "WAI-SR total, patient mean (uncentred)"),
        ("alliance_gmc", "WAI-SR total, grand-mean centred"),
        ("alliance_lag", "WAI-SR total at the previous session"),
        ("outcome_lag", "ORS total at the previous session"),
        ("outcome_lag2", "ORS total two sessions earlier"),
        ("outcome_lead", "ORS total at the next session"),
        ("outcome_next", "ORS total at the next session"),
        ("outcome_baseline", "ORS total at intake"),
        ("alliance_therapist_mean", "WAI-SR total, therapist mean"),
        (
            "alliance_patient_deviation",
            "WAI-SR total, patient's deviation from the therapist's mean",
        ),
        ("alliance_goal_between", "WAI-SR agreement on goals, patient mean"),
        (
            "alliance_task_within_lag",
            "WAI-SR agreement on tasks at the previous session, within-patient "
            "(deviation from the patient's mean)",
        ),
        ("alliance_rater_therapist_between", "WAI-SR total (therapist-rated), patient mean"),
        ("session", "Session"),
        ("log_session", "Session (natural log)"),
        ("off_track", "Not on track"),
        ("ruptures_before", "Ruptures at earlier sessions"),
        ("repairs_before", "Repairs at earlier sessions"),
        ("unknown_code", "unknown_code"),
    ],
)
def test_variable_labels(labels, column, words):
    assert labels.variable(column) == words


@pytest.mark.parametrize(
    ("term", "words"),
    [
        ("Intercept", "Intercept"),
        ("(Intercept)", "Intercept"),
        ("C(condition)[T.tau]", "Treatment as usual vs feedback"),
        ("C(condition)[T.tau]:off_track", "Treatment as usual vs feedback × not on track"),
        (
            "session:C(condition)[T.tau]:off_track",
            "Session × treatment as usual vs feedback × not on track",
        ),
        (
            "C(condition, Treatment(reference='tau'))[T.feedback]",
            "Feedback vs treatment as usual",
        ),
        ("condition[T.tau]", "Treatment as usual vs feedback"),
        ("C(condition)[feedback]", "Feedback"),
        ("session:off_track", "Session × not on track"),
        ("I(session^2)", "Session squared"),
        ("I(session ** 3)", "Session cubed"),
        ("center(alliance_lag)", "WAI-SR total at the previous session (centred)"),
        ("np.log(session)", "Session (natural log)"),
        (
            "alliance_within_lag:alliance_between",
            "WAI-SR total at the previous session, within-patient (deviation from the patient's "
            "mean) × WAI-SR total, patient mean",
        ),
        ("C(informant)[T.therapist]", "Therapist vs the reference level of informant"),
    ],
)
def test_terms_in_words_with_the_reference_level(labels, term, words):
    assert labels.term(term) == words


def test_config_labels_win_over_defaults():
    study = {
        **STUDY,
        "report": {
            "labels": {
                "variables": {"ors_total": "Outcome Rating Scale total"},
                "instruments": {"wai_sr": "WAI"},
                "arms": {"tau": "usual care", "feedback": "ROM feedback"},
                "informants": {"observer": "independent observer"},
            }
        },
    }
    labels = Labels.from_config(study)
    assert labels.variable("outcome_next") == "Outcome Rating Scale total at the next session"
    assert labels.variable("alliance_between") == "WAI total, patient mean"
    assert labels.term("C(condition)[T.tau]") == "Usual care vs ROM feedback"
    assert labels.informant("observer") == "independent observer"
    assert labels.levels == {"condition": ["feedback", "tau"], "informant": ["observer"]}


def test_round_trip_through_a_plain_record(labels):
    again = Labels.from_dict(labels.to_dict())
    assert again == labels
    assert again.term("C(condition)[T.tau]") == "Treatment as usual vs feedback"


def test_every_preset_term_of_the_example_config_is_in_words(root):
    """No term of a configured model keeps a column code once rendered."""
    config = load_config(root / "config.yaml")
    study = config["studies"]["example"]
    labels = Labels.from_config(study)
    seen = 0
    for name in study["models"]:
        spec = config["models"][name]
        formula = spec.get("formula") or preset_formula(spec["preset"], **spec.get("options", {}))
        fixed = formula.split("~")[1].split("+ (")[0]
        desc = patsy.ModelDesc.from_formula("y ~ " + fixed)
        for term in desc.rhs_termlist:
            name_ = term.name().replace("C(condition)", "C(condition)[T.tau]")
            words = labels.term(name_)
            seen += 1
            assert not any(mark in words for mark in ("C(", "[T.", ":", "_", "**")), (name_, words)
    assert seen >= 20  # every fixed term of the seven models (the intercept excluded)


def test_report_labels_do_not_reach_the_clean_step():
    study = {
        "read": {"labels": {"condition": {"TAU": "tau"}}},
        "report": {"labels": {"arms": {"tau": "usual care"}}},
    }
    assert flat_study(study)["labels"] == {"condition": {"TAU": "tau"}}


@pytest.mark.parametrize(
    ("section", "error", "message"),
    [
        ([1], TypeError, r"`report.labels` must be a mapping; got list."),
        ({"colours": {}}, KeyError, r"`report.labels` has no key 'colours'"),
        ({"arms": ["tau"]}, TypeError, r"`report.labels.arms` must be a mapping of code to label"),
        ({"arms": {"tau": ""}}, TypeError, r"`report.labels.arms.tau` must be a non-empty string"),
    ],
)
def test_bad_labels_are_named(section, error, message):
    with pytest.raises(error, match=message):
        Labels.from_config({**STUDY, "report": {"labels": section}})


def test_lower_first_keeps_abbreviations():
    assert [lower_first(x) for x in ("Session", "WAI-SR total", "PHQ-9", "X")] == [
        "session",
        "WAI-SR total",
        "PHQ-9",
        "x",
    ]


def _result(formula, terms):
    return {"formula": formula, "fixed": [{"term": t} for t in ["Intercept", *terms]]}


@pytest.mark.parametrize(
    ("formula", "terms", "question"),
    [
        (
            "outcome ~ alliance_within_lag + alliance_between + session"
            " + (1 | therapist) + (1 | patient)",
            ["alliance_within_lag", "alliance_between", "session"],
            "WAI-SR total within and between patients predicting ORS total "
            "(random intercepts for therapists; random intercepts for patients)",
        ),
        (
            "outcome ~ alliance_within_lag + alliance_between + session"
            " + (1 | therapist) + (1 + session | patient)",
            ["alliance_within_lag", "alliance_between", "session"],
            "WAI-SR total within and between patients predicting ORS total (random intercepts "
            "for therapists; random intercepts and session slopes for patients)",
        ),
        (
            "outcome ~ session + (1 | therapist) + (1 + session | patient)",
            ["session"],
            "Change in ORS total over sessions (random intercepts for therapists; random "
            "intercepts and session slopes for patients)",
        ),
        (
            "outcome ~ session * C(condition) * off_track + (1 | patient)",
            ["C(condition)[T.tau]", "session", "off_track", "session:C(condition)[T.tau]"],
            "Change in ORS total over sessions by arm and on-track status "
            "(random intercepts for patients)",
        ),
        (
            "outcome ~ outcome_lag + (1 | patient)",
            ["outcome_lag"],
            "ORS total predicted by ORS total at the previous session "
            "(random intercepts for patients)",
        ),
    ],
)
def test_each_model_is_named_by_its_question(labels, formula, terms, question):
    assert labels.question(_result(formula, terms)) == question


@pytest.mark.parametrize(
    ("preset", "options", "extra", "question"),
    [
        (
            "deterioration",
            {},
            {},
            "Reliable deterioration by arm, adjusting for ORS total at intake "
            "(random intercepts for therapists)",
        ),
        (
            "deterioration",
            {"subgroup": "not_on_track"},
            {"rows": {"off_track": 1.0}},
            "Reliable deterioration by arm, adjusting for ORS total at intake, in patients not "
            "on track (random intercepts for therapists)",
        ),
        (
            "improvement",
            {"by_track": True},
            {},
            "Reliable improvement or recovery by arm and on-track status, adjusting for ORS "
            "total at intake (random intercepts for therapists)",
        ),
        (
            "dropout",
            {},
            {},
            "Early WAI-SR total (mean of the first sessions) predicting early ending (dropout "
            "or unilateral), adjusting for ORS total at intake (random intercepts for "
            "therapists)",
        ),
        (
            "attendance",
            {},
            {},
            "Early WAI-SR total (mean of the first sessions) predicting sessions attended "
            "(random intercepts for therapists)",
        ),
    ],
)
def test_each_patient_level_preset_has_its_question(labels, preset, options, extra, question):
    """The binary and count presets' questions, from the formulas the presets write."""
    from allianceflow.models import preset_formula

    formula = preset_formula(preset, **options)
    fixed = formula.split("~")[1].split("+ (")[0]
    terms = []
    for part in (p.strip() for p in fixed.split("+")):
        if "*" in part:
            a, b = (x.strip() for x in part.split("*"))
            terms += [a, b, f"{a}:{b}"]
        else:
            terms.append(part)
    assert labels.question({**_result(formula, terms), **extra}) == question


def test_a_moderated_model_says_its_moderator(labels):
    formula = "outcome ~ alliance_within_lag + alliance_between + session + (1 | patient)"
    result = _result(formula, ["alliance_within_lag", "alliance_between", "session"])
    plain = labels.question(result)
    moderated = labels.question({**result, "moderation": {"moderator": "modality"}})
    assert moderated == plain.replace(" (random", ", moderated by session modality (random")
    assert moderated != plain


# --------------------------------------------------------------------------- couples and families


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("partner_a", "partner_a"),
        ("Partner B", "partner_b"),
        ("  PARTNER   b ", "partner_b"),
        ("Mère", "mere"),
        ("Beau-père", "beau_pere"),
        ("Großmutter", "grossmutter"),
        ("Niño (2)", "nino_2"),
        ("Мать", "мать"),
    ],
)
def test_identifier_is_snake_case(label, name):
    assert identifier(label) == name
    assert f"role_{name}".isidentifier()


def test_identifier_refuses_a_label_without_a_letter():
    with pytest.raises(ValueError) as info:
        identifier(" – ", what="role")
    assert str(info.value) == (
        "the role ' – ' has no letter or digit to name a column by; give it a name that has one."
    )


def test_role_columns_read_as_the_roles_words():
    family = Labels(
        variables={"srs_total": "SRS total"},
        alliance="srs_total",
        levels={"role": ["Enfant", "Mère", "Père"]},
        person="client",
    )
    assert family.system_word() == "family"
    assert family.variable("role_mere") == "Mère (vs enfant)"
    assert family.term("alliance_within_lag:role_pere") == (
        "SRS total at the previous session, within-client (deviation from the client's own "
        "mean) × père (vs enfant)"
    )
    # the partners spelled as the export spells them are still a couple
    couple = Labels(levels={"role": ["Partner A", "Partner B"]})
    assert couple.system_word() == "couple"
    assert couple.variable("role_partner_b") == "Partner B (vs partner A)"


def test_a_study_with_systems_speaks_of_clients():
    study = {
        **STUDY,
        "read": {
            "columns": {"Couple": "system", "Client": "patient", "Partner": "role"},
            "labels": {"role": {"A": "partner_a", "B": "partner_b"}},
        },
    }
    clients = Labels.from_config(study)
    assert (clients.person, Labels.from_config(STUDY).person) == ("client", "patient")
    words = {
        "alliance_within_lag": (
            "WAI-SR total at the previous session, within-client (deviation from the client's "
            "own mean)"
        ),
        "alliance_between": "WAI-SR total, client's mean over sessions",
        "alliance_pmean": "WAI-SR total, client's mean over sessions (uncentred)",
        "alliance_within_detrended_lag": (
            "WAI-SR total at the previous session, deviation from the client's own linear trend"
        ),
        "alliance_patient_deviation": "WAI-SR total, client's deviation from the therapist's mean",
        "alliance_partner_between": "Partner's WAI-SR total, partner's mean over sessions",
        "patient": "Client",
    }
    assert {c: clients.variable(c) for c in words} == words
    record = {
        "formula": "outcome ~ alliance_within_lag + alliance_between + (1 | patient)",
        "fixed": [{"term": t} for t in ("Intercept", "alliance_within_lag", "alliance_between")],
        "rows": {"off_track": 1},
    }
    assert clients.question(record) == (
        "WAI-SR total within and between clients predicting ORS total, in clients not on "
        "track (random intercepts for clients)"
    )
    assert Labels.from_dict(clients.to_dict()) == clients
    assert clients.to_dict()["person"] == "client"


def test_person_is_checked():
    with pytest.raises(ValueError, match=r"^`person` must be 'patient' or 'client'; got 'user'\.$"):
        Labels(person="user")
