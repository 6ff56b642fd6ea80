"""The couples study's outputs: labels, figures, tables and summary in words (issue 17).

A small simulated couples study (:func:`allianceflow.simulate.simulate_couples`) goes
through the pipeline's own stage functions with example3's config block; the recovery of
the README's true effects is checked on the committed example3 data itself.
"""

import re

import numpy as np
import pandas as pd
import pytest
from conftest import run_study_stages

from allianceflow import io, stages
from allianceflow.config import load_config
from allianceflow.figures import pick_systems, plot_couple_trajectories, plot_split_outcome
from allianceflow.labels import Labels
from allianceflow.simulate import simulate_couples
from allianceflow.summary import question_of, study_summary

#: example3's models, fitted to the small study (Satterthwaite df: quicker, same estimates).
MODELS = [
    "couple_alliance_outcome",
    "couple_alliance_outcome_roles",
    "split_alliance",
    "split_trajectory",
    "split_dropout",
]


@pytest.fixture(scope="module")
def config(root):
    return load_config(root / "config.yaml")


@pytest.fixture(scope="module")
def block(config):
    return config["studies"]["example3"]


@pytest.fixture(scope="module")
def labels(block):
    return Labels.from_config(block)


@pytest.fixture(scope="module")
def study(config, block, tmp_path_factory):
    """Score, derive and fit a 40-couple study with example3's settings."""
    out = tmp_path_factory.mktemp("couples")
    sessions = simulate_couples(seed=5, n_systems=40, n_therapists=8, max_sessions=8)
    files, models = run_study_stages(sessions, block, config["models"], MODELS, out)
    return {"dir": out, "files": files, "models": models}


# --------------------------------------------------------------------------- labels


def test_couple_variables_read_in_words(labels):
    assert labels.system_word() == "couple"
    assert labels.variable("system") == "Couple"
    assert labels.variable("alliance_partner_within_lag") == (
        "Partner's SRS total at the previous session, within-partner (deviation from the "
        "partner's own mean)"
    )
    assert labels.variable("alliance_partner_between") == (
        "Partner's SRS total, partner's mean over sessions"
    )
    assert labels.variable("alliance_split_within_lag") == (
        "Split in SRS total between the partners at the previous session, within the couple "
        "(deviation from its mean over sessions)"
    )
    assert labels.variable("alliance_system_mean_between") == (
        "Couple mean SRS total, the couple's mean over sessions (deviation from the mean of "
        "couples)"
    )
    assert labels.variable("early_alliance_split") == (
        "Split in SRS total between the partners, mean of the first sessions"
    )
    # the actor's own terms read as the partner's do: couples work speaks of clients
    assert labels.person == "client"
    assert labels.term("alliance_within_lag:role_partner_b") == (
        "SRS total at the previous session, within-client (deviation from the client's own "
        "mean) × partner B (vs partner A)"
    )
    assert labels.term("alliance_between") == "SRS total, client's mean over sessions"
    assert labels.variable("patient") == "Client"
    assert labels.random_part("y ~ x + (1 | system) + (1 | patient)") == (
        "random intercepts for couples; random intercepts for clients"
    )


def test_a_family_is_not_called_a_couple():
    family = Labels(
        variables={"srs_total": "SRS total"},
        alliance="srs_total",
        levels={"role": ["child", "father", "mother"]},
    )
    assert family.system_word() == "family"
    assert family.variable("alliance_partner") == "Other members' mean SRS total"
    assert family.variable("alliance_split") == "Split in SRS total among the members (SD)"
    assert family.variable("role_mother") == "Mother (vs child)"
    assert Labels().variable("system") == "Couple or family"


def test_every_term_of_the_couple_models_is_in_words(study, labels):
    for path in study["models"]:
        result = io.read_json(path)
        for row in result["fixed"]:
            words = labels.term(row["term"])
            assert not re.search(r"[_:\[]|\bC\(", words), (row["term"], words)
        question = labels.question(result)
        assert "_" not in question, question


# --------------------------------------------------------------------------- figures


def test_the_sample_of_couples_is_fixed_by_the_ids():
    frame = pd.DataFrame({"system": [f"C{i:03d}" for i in range(150)] * 2})
    chosen = pick_systems(frame.sample(frac=1, random_state=3), n=12)
    assert chosen == pick_systems(frame, n=12)
    assert chosen[0] == "C000" and chosen[-1] == "C149" and len(chosen) == 12
    with pytest.raises(ValueError, match=r"`n` must be a positive whole number of systems; got 0"):
        pick_systems(frame, n=0)


def test_couple_trajectories_draw_each_partner_of_each_couple(study, labels):
    analysis = io.read_table(study["files"]["analysis"])
    fig = plot_couple_trajectories(analysis, labels=labels, n_systems=6, ncols=3)
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in drawn] == [f"Couple {k}" for k in range(1, 7)]
    first = sorted(analysis["system"].unique())[0]
    rows = analysis[(analysis["system"] == first) & (analysis["role"] == "partner_a")]
    line = drawn[0].lines[0]
    assert line.get_label() == "Partner A"
    expected = rows.dropna(subset=["alliance"]).sort_values("session")
    np.testing.assert_allclose(line.get_ydata(), expected["alliance"])
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["Partner A", "Partner B"]
    assert "of 40 couples" in fig._suptitle.get_text()


def test_split_figure_prints_the_models_estimates(study, labels):
    analysis = io.read_table(study["files"]["analysis"])
    result = io.read_json(study["models"][MODELS.index("split_alliance")])
    fig = plot_split_outcome(analysis, result, labels=labels)
    rows = {f["term"]: f for f in result["fixed"]}
    between = rows["alliance_split_between"]
    title = fig.axes[1].get_title()
    assert title.startswith("Between couples\n")
    assert f"{between['estimate']:.2f}".replace("-", "−") in title
    # one dot per couple: its mean split and mean outcome
    dots = fig.axes[1].collections[0].get_offsets()
    assert len(dots) == analysis["system"].nunique() == 40
    without = plot_split_outcome(analysis, labels=labels)
    assert "for orientation" in without.axes[0].get_title()


def test_the_couples_study_has_its_two_figures(block, config):
    names = stages.study_figures(block)
    assert {"couple_trajectories", "split_outcome"} <= set(names)
    assert "couple_trajectories" not in stages.study_figures(config["studies"]["example"])


# --------------------------------------------------------------------------- summary


def test_summary_answers_the_couples_questions_in_units(study, block, labels):
    records = [io.read_json(p) for p in study["models"]]
    flow = {
        "sessions": {
            "read": 10,
            "kept": 10,
            "excluded": 0,
            "flagged_by_rule": {"system_sessions": 3},
        },
        "patients": {"read": 2, "kept": 2, "excluded": 0},
        "systems": {
            "read": 41,
            "kept": 40,
            "members": {"2": 40},
            "roles": ["partner_a", "partner_b"],
            "distinguishable": True,
            "sessions_shared": 0.9724,
        },
    }
    text = study_summary(
        records,
        flow,
        study="example3",
        alliance="srs_total",
        outcome="ors_total",
        outcome_direction="higher_is_better",
        labels=labels,
    )
    apim = records[0]
    # the summary's heading is the model's one wording of its question (Labels.question)
    question = question_of(apim, labels)
    assert question.startswith(
        "Own and partner's SRS total predicting ORS total (actor and partner effects)"
    )
    assert question in text
    partner = next(r for r in apim["fixed"] if r["term"] == "alliance_partner_within_lag")
    sign = "higher (better)" if partner["estimate"] > 0 else "lower (worse)"
    assert (
        "Partner effect: a session at which the partner's SRS total was 1 point above the "
        "partner's usual level was followed at the next session by an ORS total "
        f"{abs(partner['estimate']):.2f} points {sign} for the client "
        f"(*b* = {partner['estimate']:.2f}, 95% CI [{partner['ci_low']:.2f}, "
        f"{partner['ci_high']:.2f}]"
    ) in text
    # N reconciles with the analysis rows complete for the model's variables
    analysis = io.read_table(study["files"]["analysis"])
    used = analysis.dropna(subset=[f["term"] for f in apim["fixed"][1:]] + ["outcome"])
    n = apim["n_groups"]
    assert apim["n_obs"] == len(used)
    assert n == {k: used[k].nunique() for k in ("therapist", "system", "patient")}
    assert (
        f"The model used {apim['n_obs']:,} sessions of {n['patient']} clients, {n['system']} "
        f"couples and {n['therapist']} therapists."
    ) in text
    # the actor effects speak of the client, as the partner effects do
    rows = {r["term"]: r for r in apim["fixed"]}
    within, between = rows["alliance_within_lag"], rows["alliance_between"]
    assert (
        "Actor effect: a session whose SRS total was 1 point above the client's usual level "
        f"was followed at the next session by an ORS total {abs(within['estimate']):.2f} points "
    ) in text
    assert (
        "Actor effect: clients whose mean SRS total was 1 point higher than another client's "
        f"had an ORS total {abs(between['estimate']):.2f} points "
    ) in text
    assert "patient" not in text.lower()
    split = records[MODELS.index("split_alliance")]
    between = next(r for r in split["fixed"] if r["term"] == "alliance_split_between")
    assert (
        "Couples whose partners' SRS total scores were on average 1 point further apart than "
        f"another couple's had an ORS total {abs(between['estimate']):.2f} points"
    ) in text
    dropout = records[MODELS.index("split_dropout")]
    early = next(r for r in dropout["fixed"] if r["term"] == "early_alliance_split")
    assert (
        "One point more in the split in SRS total between the partners, mean of the first "
        f"sessions, multiplied the odds of an early ending (dropout or unilateral) by "
        f"{np.exp(early['estimate']):.2f} (odds ratio"
    ) in text
    assert f"The model used {dropout['n_obs']} couples of 8 therapists." in text
    trajectory = records[MODELS.index("split_trajectory")]
    assert f"The model used {trajectory['n_obs']:,} couple sessions of 40 couples" in text
    assert (
        "The export held 41 couples, of which 40 were kept (40 of 2 members). The partners are "
        "distinguishable by role: every couple has one partner A and one partner B. 97.2% of "
        "sessions were attended by every member of the couple."
    ) in text
    assert "a session no other member of the couple or family attended: 3" in text
    roles = records[MODELS.index("couple_alliance_outcome_roles")]
    assert question_of(roles, labels).startswith(
        "Own and partner's SRS total predicting ORS total (actor and partner effects, by role)"
    )
    assert question_of(roles, labels) in text
    assert "Flückiger" not in text  # the individual-therapy benchmark is not quoted
    assert "Kenny, D. A., Kashy, D. A., & Cook, W. L. (2006)" in text
    assert "Bartle-Haring, S., Glebova" in text
    assert not re.search(r"\b(alliance|early|role|system)_\w+", text)


# --------------------------------------------------------------------------- recovery


def _readme_truths(root) -> dict[str, tuple[float, float]]:
    """The true (within, between) effects in example3's README table, by effect."""
    text = (root / "data/raw/example3/README.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| (actor|partner|split) \(.*?\) \| \*\*(\S+)\*\* \| \*\*(\S+)\*\* \|$", text, re.M
    )
    return {name: (float(w), float(b)) for name, w, b in rows}


def test_example3_readme_states_the_simulators_truths(root):
    from allianceflow.simulate import EXAMPLE3_DESIGN as D

    assert _readme_truths(root) == {
        "actor": (D.actor_within, D.actor_between),
        "partner": (D.partner_within, D.partner_between),
        "split": (D.split_within, D.split_between),
    }


@pytest.fixture(scope="module")
def example3_fits(root, config, block):
    """The actor-partner and split models fitted to the committed example3 export.

    The export is prepared as the pipeline does (clean, score, derive) and fitted with the
    pipeline's default Kenward-Roger df.
    """
    from allianceflow.models import fit_model

    prepared = stages.prepare_study(block, root=root, name="example3")
    fits = {}
    for name in ("couple_alliance_outcome", "split_alliance"):
        spec = config["models"][name]
        fits[name] = fit_model(
            prepared.analysis, stages.model_formula(spec), name=name, ddf=stages.MODEL_DDF
        ).to_dict()
    return prepared, fits


@pytest.mark.slow
def test_example3_recovers_the_true_actor_partner_and_split_effects(root, example3_fits):
    """Each 95% CI of example3's actor, partner and split effects holds the README's truth."""
    prepared, fits = example3_fits
    truths = _readme_truths(root)
    terms = {
        "couple_alliance_outcome": {
            "alliance_within_lag": truths["actor"][0],
            "alliance_between": truths["actor"][1],
            "alliance_partner_within_lag": truths["partner"][0],
            "alliance_partner_between": truths["partner"][1],
        },
        "split_alliance": {
            "alliance_split_within_lag": truths["split"][0],
            "alliance_split_between": truths["split"][1],
        },
    }
    for name, wanted in terms.items():
        result = fits[name]
        assert result["convergence"]["converged"], name
        rows = {f["term"]: f for f in result["fixed"]}
        for term, truth in wanted.items():
            row = rows[term]
            assert row["ci_low"] < truth < row["ci_high"], (name, term, truth, row)
        # the design the README states: 150 couples (300 clients) of 20 therapists
        assert result["n_groups"] == {"therapist": 20, "system": 150, "patient": 300}
    assert prepared.flow["systems"]["kept"] == 150
    assert prepared.flow["systems"]["distinguishable"] is True


def test_committed_example3_is_what_the_simulator_writes(root, tmp_path):
    """data/raw/example3 is write_example3_study's output, byte for byte (`make example`)."""
    from allianceflow.io import sha256_file
    from allianceflow.simulate import write_example3_study

    write_example3_study(tmp_path)
    for name in ("couple_sessions.csv", "README.md"):
        assert sha256_file(tmp_path / name) == sha256_file(root / "data/raw/example3" / name), name
