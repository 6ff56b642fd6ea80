"""Published tables: exact numbers, small-cell suppression, every format byte-identical."""

import io
import time
import zipfile

import pandas as pd
import pytest

from allianceflow import tables as T
from allianceflow.io import sha256_file


def _patients(counts):
    """Build a patients table with the given rc_category counts per arm."""
    rows = []
    for arm, cats in counts.items():
        for cat, n in cats.items():
            rows += [
                {"patient": f"{arm}{cat}{i}", "condition": arm, "rc_category": cat}
                for i in range(n)
            ]
    return pd.DataFrame(rows)


@pytest.fixture
def result():
    return {
        "name": "m1",
        "formula": "outcome ~ session + (1 | patient)",
        "reml": True,
        "n_obs": 100,
        "n_groups": {"patient": 20},
        "n_dropped_missing": 3,
        "fixed": [
            {
                "term": "Intercept",
                "estimate": 10.0,
                "se": 0.5,
                "ci_low": 9.02,
                "ci_high": 10.98,
                "statistic": 20.0,
                "p": 1e-9,
            },
            {
                "term": "session",
                "estimate": -0.0456,
                "se": 0.02,
                "ci_low": -0.085,
                "ci_high": -0.006,
                "statistic": -2.28,
                "p": 0.0226,
            },
        ],
        "random": [
            {
                "group": "patient",
                "term": "(Intercept)",
                "variance": 4.0,
                "sd": 2.0,
                "boundary": False,
            }
        ],
        "covariances": [],
        "residual_variance": 9.0,
        "icc": {"patient": 4 / 13},
        "r2_marginal": 0.051,
        "r2_conditional": 0.34,
        "loglik": -250.125,
        "aic": 508.25,
        "bic": 518.67,
        "n_params": 4,
        "convergence": {
            "converged": True,
            "optimizer": "lbfgs",
            "max_abs_gradient": 1e-8,
            "boundary": [],
            "warnings": [],
        },
    }


def test_apa_numbers():
    assert T.format_p(0.0004) == "< .001"
    assert T.format_p(0.0456) == ".046"
    assert T.format_r(0.283) == ".28"
    assert T.format_r(-0.05) == "−.05"


def test_model_table_single_and_side_by_side(result):
    one = T.model_table([result])
    assert list(one.body.columns) == ["Parameter", "b", "SE", "95% CI", "z", "p"]
    row = one.body[one.body["Parameter"] == "Session"].iloc[0].tolist()
    assert row == ["Session", "−0.05", "0.02", "[−0.09, −0.01]", "−2.28", ".023"]
    assert one.body[one.body["Parameter"] == "ICC patient"].iloc[0, 1] == ".31"
    assert one.body.iloc[list(one.sections)]["Parameter"].tolist() == [
        "Fixed effects",
        "Random effects (variance)",
        "Model fit",
    ]
    two = T.model_table([result, {**result, "name": "m2"}])
    assert two.body.columns[1:4].tolist() == ["m1 b (SE)", "m1 95% CI", "m1 p"]
    assert two.body[two.body["Parameter"] == "Intercept"].iloc[0, 4] == "10.00 (0.50)"
    assert set(two.data["model"]) == {"m1", "m2"}
    with pytest.raises(ValueError, match=r"`results` must have unique names; got \['m1', 'm1'\]"):
        T.model_table([result, result])


def test_clinical_significance_suppresses_small_cells_and_their_complement():
    # tau: 3 deteriorated (< 5) is hidden; the row total 9 would reveal it, so the next
    # smallest arm cell of the row (feedback 6) is hidden; each arm's n would reveal its
    # hidden cell down the column, so the next smallest of each column (tau 9, feedback 10)
    # too. Rows and columns then hold two hidden cells each (a 2 x 2 cycle): no cell is
    # determined.
    p = _patients(
        {
            "feedback": {"recovered": 10, "unchanged": 12, "deteriorated": 6},
            "tau": {"recovered": 9, "unchanged": 11, "deteriorated": 3},
        }
    )
    t = T.clinical_significance_table(p, min_cell=5)
    body = t.body.set_index("Measure")
    assert body.columns.tolist() == ["feedback (n = 28)", "tau (n = 23)", "Total (n = 51)"]
    assert body.loc["Deteriorated"].tolist() == ["suppressed", "suppressed", "9 (17.6)"]
    assert body.loc["Recovered"].tolist() == ["suppressed", "suppressed", "19 (37.3)"]
    assert body.loc["Unchanged"].tolist() == ["12 (42.9)", "11 (47.8)", "23 (45.1)"]
    assert body.loc["Improved"].tolist() == ["0 (0.0)", "0 (0.0)", "0 (0.0)"]
    cells = t.data[(t.data["variable"] == "deteriorated")]
    assert cells["suppressed"].tolist() == [True, True, False]
    assert cells["count"].isna().tolist() == [True, True, False]  # no small count in the CSV
    assert cells["percent"].isna().tolist() == [True, True, False]
    assert "Complementary suppression" not in t.note  # the note names it in its own words
    assert "by complementary suppression" in t.note and "Hundepool" in t.note
    # a threshold of 3 shows everything
    t3 = T.clinical_significance_table(p, min_cell=3)
    assert t3.body[t3.body["Measure"] == "Deteriorated"].iloc[0, 2] == "3 (13.0)"
    assert "complementary" not in t3.note


def test_min_cell_is_validated():
    with pytest.raises(
        ValueError, match=r"`min_cell` must be a whole number of at least 1; got 0."
    ):
        T.clinical_significance_table(_patients({"a": {"recovered": 5}}), min_cell=0)


def test_table1_describes_intake_by_arm():
    df = pd.DataFrame(
        {
            "patient": ["a", "a", "b", "b", "c", "d", "e", "f"],
            "session": [1, 2, 1, 2, 1, 1, 1, 1],
            "condition": ["x", "x", "x", "x", "y", "y", "y", "y"],
            "outcome": [10.0, 99, 14, 99, 20, 22, 24, 26],
        }
    )
    t = T.table1(df, therapist=None, continuous={"outcome": "Outcome"}, min_cell=2)
    assert t.body.columns.tolist() == ["Characteristic", "x (n = 2)", "y (n = 4)", "Total (n = 6)"]
    outcome = t.body.iloc[-1].tolist()
    assert outcome == ["  Outcome", "12.00 (2.83)", "23.00 (2.58)", "19.33 (6.15)"]
    t5 = T.table1(df, therapist=None, continuous={"outcome": "Outcome"}, min_cell=5)
    # both arms are small: hidden, the total of 6 shown (2 + 4: two unknowns, one sum)
    assert t5.body.iloc[0].tolist() == ["Patients, n", "suppressed", "suppressed", "6"]
    assert t5.body.columns.tolist()[1:] == ["x (n suppressed)", "y (n suppressed)", "Total (n = 6)"]
    assert t5.body.iloc[-1].tolist() == ["  Outcome", "suppressed", "suppressed", "19.33 (6.15)"]


def test_table1_endings_in_category_order_and_weeks_in_treatment():
    df = pd.DataFrame({"patient": list("abcdef"), "session": 1, "condition": ["x"] * 3 + ["y"] * 3})
    endings = pd.Categorical(
        ["dropout", "planned", "dropout", "ongoing", "planned", "dropout"],
        categories=["planned", "unilateral", "dropout", "ongoing", "unknown"],
    )
    people = pd.DataFrame(
        {"patient": list("abcdef"), "ending": endings, "weeks": [1.0, 3, 5, 2, 2, 8]}
    )
    t = T.table1(
        df,
        therapist=None,
        continuous={},
        categorical={"ending": "Ending"},
        patients=people,
        min_cell=1,
    )
    body = t.body.set_index("Characteristic")
    # M (SD) of 1, 3, 5 = 3 (2); of 2, 2, 8 = 4 (3.46); of all six = 3.5 (2.59)
    assert body.loc["Weeks in treatment, M (SD)"].tolist() == [
        "3.00 (2.00)",
        "4.00 (3.46)",
        "3.50 (2.59)",
    ]
    # planned before dropout before ongoing (the categories' order), unused levels left out
    assert [i for i in body.index if i.startswith("  ")] == ["  planned", "  dropout", "  ongoing"]
    assert body.loc["  dropout"].tolist() == ["2 (66.7)", "1 (33.3)", "3 (50.0)"]


def test_intake_correlation_matches_pearson():
    df = pd.DataFrame(
        {
            "patient": list("abcdef"),
            "session": 1,
            "alliance": [1.0, 2, 3, 4, 5, 6],
            "outcome": [2.0, 1, 4, 3, 6, 5],
        }
    )
    t = T.intake_correlations(df, min_cell=5)
    r = df["alliance"].corr(df["outcome"])
    assert t.data["r"].iloc[0] == pytest.approx(r)
    assert t.body.iloc[1, 1] == T.format_r(r) + "*"  # r = .83, p = .042


def test_every_format_is_byte_identical_and_readable(tmp_path, result):
    table = T.model_table([result])
    runs = {}
    for run in ("a", "b"):
        paths = [tmp_path / f"{run}.{ext}" for ext in T.TABLE_FORMATS]
        T.write_table_files(table, paths)
        runs[run] = [sha256_file(p) for p in paths]
        time.sleep(1.1)  # a clock-dependent byte would now differ
    assert runs["a"] == runs["b"]
    docx_bytes = (tmp_path / "a.docx").read_bytes()
    with zipfile.ZipFile(io.BytesIO(docx_bytes)) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        core = z.read("docProps/core.xml").decode()
    assert "2000-01-01T00:00:00Z" in core
    import docx

    document = docx.Document(io.BytesIO(docx_bytes))
    assert document.tables[0].cell(0, 1).text == "b"
    assert document.paragraphs[0].text == "Multilevel Model of Outcome"
    tex = (tmp_path / "a.tex").read_text()
    assert r"\multicolumn{6}{l}{\textit{Fixed effects}} \\" in tex
    assert r"Session & $-$0.05 & 0.02 & [$-$0.09, $-$0.01] & $-$2.28 & .023 \\" in tex
    html = (tmp_path / "a.html").read_text()
    assert "<td>[−0.09, −0.01]</td>" in html
    csv = pd.read_csv(tmp_path / "a.csv")
    assert csv.columns.tolist() == ["model", "section", "term", "statistic", "value"]


def test_unknown_suffix_is_refused(tmp_path, result):
    with pytest.raises(
        ValueError, match=r"`paths` must end in .csv, .md, .html, .tex or .docx; got 't.xlsx'."
    ):
        T.write_table_files(T.model_table([result]), [tmp_path / "t.xlsx"])


def test_model_table_reports_the_covariance_of_correlated_random_effects(result):
    correlated = {
        **result,
        "name": "m2",
        "formula": "outcome ~ session + (1 + session | patient)",
        "random": result["random"]
        + [{"group": "patient", "term": "session", "variance": 0.09, "sd": 0.3, "boundary": False}],
        "covariances": [
            {
                "group": "patient",
                "term1": "(Intercept)",
                "term2": "session",
                "covariance": -0.18,
                "correlation": -0.3,
            }
        ],
    }
    t = T.model_table([result, correlated])
    body = t.body.set_index("Parameter")
    row = body.loc["Patient intercept with Session, covariance (r)"]
    assert row.tolist() == [
        "",
        "",
        "",
        "−0.18 (r = −.30)",
        "",
        "",
    ]  # empty for the model without it
    assert "Random effects (variance, covariance)" in body.index
    cov = t.data[
        (t.data["model"] == "m2") & t.data["statistic"].isin(["covariance", "correlation"])
    ]
    assert cov["value"].tolist() == [-0.18, -0.3]
    assert (
        "Patient (Intercept) with session: covariance −0.180, correlation −0.300."
        in T.model_markdown(correlated)
    )
    # a model without correlated effects keeps the old section name
    assert "Random effects (variance)" in T.model_table([result]).body["Parameter"].tolist()
