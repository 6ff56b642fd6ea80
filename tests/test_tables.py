"""Published tables: exact numbers, small-cell suppression, every format byte-identical."""

import io
import time
import zipfile
from fractions import Fraction

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allianceflow import tables as T
from allianceflow.clinical import RC_CATEGORIES
from allianceflow.io import sha256_file
from allianceflow.tables.suppression import CellSuppression


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
    assert one.body[one.body["Parameter"] == "ICC, patient"].iloc[0, 1] == ".31"
    assert one.body.iloc[list(one.sections)]["Parameter"].tolist() == [
        "Fixed effects",
        "Random effects (variance)",
        "Model fit",
    ]
    two = T.model_table([result, {**result, "name": "m2"}])
    assert two.body.columns[1:4].tolist() == ["Model 1 b (SE)", "Model 1 95% CI", "Model 1 p"]
    assert two.body.columns[4:7].tolist() == ["Model 2 b (SE)", "Model 2 95% CI", "Model 2 p"]
    assert "Model 1 = " in two.note and "Model 2 = " in two.note
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


def test_pearson_equals_scipy_pearsonr_exactly():
    """The table's r and p are SciPy's, to the last bit, on 300 random designs.

    Sizes 4 to 400, any scale and offset, rounded (tied) values, strong and null
    correlations; a constant score gives NaN for both.
    """
    import numpy as np
    from scipy import stats

    from allianceflow.tables.descriptive import _pearson

    rng = np.random.default_rng(20261130)
    for i in range(300):
        n = int(rng.integers(4, 400))
        x = rng.normal(size=n) * rng.uniform(0.1, 100) + rng.uniform(-50, 50)
        y = rng.normal() * x + rng.normal(size=n) * rng.uniform(0.01, 10)
        if i % 3 == 0:
            x = np.round(x)
        expected = stats.pearsonr(x, y)
        assert _pearson(x, y) == (float(expected.statistic), float(expected.pvalue))
    r, p = _pearson(np.array([1.0, 2, 3, 4, 5, 6]), np.array([2.0, 1, 4, 3, 6, 5]))
    assert (round(r, 12), round(p, 12)) == (0.828571428571, 0.041562682216)  # r = 29/35
    # a constant score (3.7: its computed mean is not exactly 3.7) has no correlation
    for n in (4, 6, 7, 10):
        constant = _pearson(np.full(n, 3.7), np.arange(float(n)))
        assert np.isnan(constant[0]) and np.isnan(constant[1]), n
        with pytest.warns(stats.ConstantInputWarning):
            assert all(np.isnan(stats.pearsonr(np.full(n, 3.7), np.arange(float(n)))))


def test_every_format_is_byte_identical_and_readable(tmp_path, result):
    table = T.model_table([result], number=3)
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
    heading = document.tables[0].cell(0, 1).paragraphs[0].runs
    assert [(r.text, r.italic) for r in heading] == [("b", True)]
    ci = document.tables[0].cell(0, 3).paragraphs[0].runs
    assert [(r.text, bool(r.italic)) for r in ci] == [("95% CI", False)]  # CI: not a symbol
    assert document.paragraphs[0].text == "Table 3"
    assert document.paragraphs[0].runs[0].bold
    title = "Change in Outcome Over Sessions (Random Intercepts for Patients)"
    assert document.paragraphs[1].text == title
    tex = (tmp_path / "a.tex").read_text()
    assert r"\renewcommand{\thetable}{3}" in tex and f"\\caption{{{title}}}" in tex
    assert r"\multicolumn{6}{l}{\textit{Fixed effects}} \\" in tex
    assert r"Session & $-$0.05 & 0.02 & [$-$0.09, $-$0.01] & $-$2.28 & .023 \\" in tex
    assert r"\textit{b} & \textit{SE} & 95\% CI & \textit{z} & \textit{p} \\" in tex
    assert "landscape" not in tex
    html = (tmp_path / "a.html").read_text()
    assert "<td>[−0.09, −0.01]</td>" in html
    assert f"<caption><strong>Table 3</strong><br><em>{title}</em></caption>" in html
    assert "<th><em>SE</em></th>" in html and "<th>95% CI</th>" in html
    assert (tmp_path / "a.md").read_text().startswith(f"**Table 3**\n\n*{title}*\n")
    csv = pd.read_csv(tmp_path / "a.csv")
    assert csv.columns.tolist() == ["model", "section", "term", "statistic", "value"]


def test_a_wide_table_is_set_landscape(result):
    models = [{**result, "name": f"m{i}"} for i in range(3)]
    wide = T.model_table(models)
    assert len(wide.body.columns) == 10 and wide.wide
    tex = T.render_latex(wide)
    assert tex.splitlines()[1] == r"\begin{landscape}" and tex.rstrip().endswith(r"\end{landscape}")
    assert "pdflscape" in tex.splitlines()[0]
    import docx
    from docx.enum.section import WD_ORIENT

    document = docx.Document(io.BytesIO(T.render_docx(wide)))
    assert document.sections[0].orientation == WD_ORIENT.LANDSCAPE
    assert not T.model_table([result]).wide


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
    row = body.loc["Patient intercept with session slope, covariance (r)"]
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


# --------------------------------------------------------------------------- suppression


def test_the_audit_hides_a_cell_that_two_hidden_cells_per_sum_do_not_protect():
    # a + b = 5, b + c = 7, a + c = 6: every sum has two hidden cells, yet
    # a = (5 - 7 + 6) / 2 = 2. The audit finds it and hides the smallest total a appears in
    # (a + b = 5); then the null space (1, -1, -1, -2) on (c, b, a, a + b) leaves all four open.
    s = CellSuppression(min_cell=5)
    for key, value in {"a": 2, "b": 3, "c": 4, "ab": 5, "bc": 7, "ac": 6}.items():
        s.count(key, value)
    s.add_sum("ab", ["a", "b"])
    s.add_sum("bc", ["b", "c"])
    s.add_sum("ac", ["a", "c"])
    hidden = s.solve()
    assert [k for k, h in hidden.items() if h] == ["a", "b", "c", "ab"]
    assert s.primary == {"a", "b", "c"} and s.complementary == {"ab"}
    assert s.recoverable() == []


def test_one_arm_is_protected_by_hiding_the_total():
    # a single arm with 3 patients: the Total column equals it, so the Total is hidden too
    p = _patients({"only": {"recovered": 3, "unchanged": 10}})
    t = T.clinical_significance_table(p, min_cell=5)
    body = t.body.set_index("Measure")
    assert body.columns.tolist() == ["only (n = 13)", "Total (n = 13)"]
    assert body.loc["Recovered"].tolist() == ["suppressed", "suppressed"]
    # the column's n (13) would give 3 back from 10: the 10 goes too, in both columns
    assert body.loc["Unchanged"].tolist() == ["suppressed", "suppressed"]
    assert body.loc["Deteriorated"].tolist() == ["0 (0.0)", "0 (0.0)"]


def _gains_patients(arms):
    """Patients with n_sudden_gains / _reversed / _losses and the gains' magnitudes."""
    rows, events = [], []
    for arm, (n, gains, reversed_, magnitudes) in arms.items():
        for i in range(n):
            pid = f"{arm}{i}"
            g = 1 if i < gains else 0
            rows.append(
                {
                    "patient": pid,
                    "condition": arm,
                    "n_sudden_gains": g,
                    "n_sudden_gains_reversed": int(i < reversed_),
                    "n_sudden_losses": 0,
                }
            )
            if g:
                events.append({"patient": pid, "event": "gain", "magnitude": magnitudes[i]})
    return pd.DataFrame(rows), pd.DataFrame(events)


def test_example2_sudden_gains_arm_and_mean_cannot_be_worked_out():
    # example2 (the case of the issues): feedback 4 of 57 patients with one gain each,
    # tau 7 of 63; 1 and 2 reversed. Before, feedback showed "< 5", tau 7 and Total 11
    # (so feedback = 4), and the Total mean with tau's mean on 7 gave feedback's mean.
    patients, gains = _gains_patients(
        {
            "feedback": (57, 4, 1, [9.0, 10.5, 8.0, 11.5]),
            "tau": (63, 7, 2, [6.0, 7.5, 6.5, 8.0, 7.0, 5.5, 7.5]),
        }
    )
    t = T.sudden_gains_table(patients, gains, min_cell=5)
    body = t.body.set_index("Measure")
    assert body.columns.tolist() == ["feedback (n = 57)", "tau (n = 63)", "Total (n = 120)"]
    assert body.to_dict("split")["data"] == [
        ["suppressed", "suppressed", "11 (9.2)"],
        ["suppressed", "suppressed", "11"],
        ["suppressed", "suppressed", "suppressed"],
        ["suppressed", "suppressed", "7.91 (1.83)"],
        ["0 (0.0)", "0 (0.0)", "0 (0.0)"],
        ["0", "0", "0"],
    ]
    # (9 + 10.5 + 8 + 11.5 + 6 + 7.5 + 6.5 + 8 + 7 + 5.5 + 7.5) / 11 = 87 / 11 = 7.909
    magnitude = t.data[t.data["variable"] == "gain_magnitude"]
    assert magnitude["mean"].iloc[2] == pytest.approx(87.0 / 11)
    assert magnitude["denominator"].iloc[2] == 11
    hidden = t.data[t.data["suppressed"]]
    assert hidden[["count", "denominator", "percent", "mean", "sd"]].isna().all().all()
    assert "complementary suppression" in t.note


def test_ruptures_mean_per_patient_goes_with_the_hidden_rupture_count():
    # arm a: 12 patients, 3 with one rupture each (hidden); ruptures per patient = 3 / 12
    # would give the count back, so the mean is hidden with it; b's 20 ruptures go so that
    # Total - b does not reveal a, and with them b's mean; the % of a hidden number of
    # ruptures would give it back, so the repaired, unrepaired and censored cells go too.
    rows = []
    for arm, n, ruptures in (("a", 12, [1, 1, 1]), ("b", 10, [2] * 10)):
        for i in range(n):
            k = ruptures[i] if i < len(ruptures) else 0
            rows.append(
                {
                    "patient": f"{arm}{i}",
                    "condition": arm,
                    "n_ruptures": k,
                    "n_repaired": k,
                    "n_unrepaired": 0,
                    "n_censored": 0,
                }
            )
    t = T.ruptures_table(pd.DataFrame(rows), min_cell=5)
    body = t.body.set_index("Measure")
    assert body.columns.tolist() == ["a (n = 12)", "b (n = 10)", "Total (n = 22)"]
    assert body.to_dict("split")["data"] == [
        ["suppressed", "suppressed", "13 (59.1)"],
        ["suppressed", "suppressed", "1.05 (0.95)"],  # 23 / 22
        ["suppressed", "suppressed", "23"],
        ["suppressed", "suppressed", "23 (100.0)"],
        ["suppressed", "suppressed", "0 (0.0)"],
        ["suppressed", "suppressed", "0 (0.0)"],
    ]


def test_table1_categories_are_protected_across_arms_too():
    # x: 3 planned, 10 dropout; y: 8 planned, 9 dropout. The old rule hid x's 3 and 10
    # down the column only, and Total 11 - y's 8 gave x's 3 back. Now y's 8 goes (the row)
    # and y's 9 (y's column): every row and column of the 2 x 2 holds two hidden cells.
    ids = [f"p{i}" for i in range(30)]
    arm = ["x"] * 13 + ["y"] * 17
    ending = ["planned"] * 3 + ["dropout"] * 10 + ["planned"] * 8 + ["dropout"] * 9
    analysis = pd.DataFrame({"patient": ids, "session": 1, "condition": arm})
    people = pd.DataFrame(
        {"patient": ids, "ending": pd.Categorical(ending, categories=["planned", "dropout"])}
    )
    t = T.table1(
        analysis,
        therapist=None,
        continuous={},
        categorical={"ending": "Ending"},
        patients=people,
        min_cell=5,
    )
    body = t.body.set_index("Characteristic")
    assert body.columns.tolist() == ["x (n = 13)", "y (n = 17)", "Total (n = 30)"]
    assert body.loc["  planned"].tolist() == ["suppressed", "suppressed", "11 (36.7)"]
    assert body.loc["  dropout"].tolist() == ["suppressed", "suppressed", "19 (63.3)"]
    assert body.loc["Sessions attended, M (SD)"].tolist() == [
        "1.00 (0.00)",
        "1.00 (0.00)",
        "1.00 (0.00)",
    ]
    ending_rows = t.data[t.data["variable"] == "ending"]
    assert ending_rows["suppressed"].tolist() == [True, True, True, True, False, False]
    assert ending_rows.loc[ending_rows["suppressed"], "count"].isna().all()


# ------------------------------------------------- property: nothing hidden can be worked out
#
# The checker below is written from what a reader sees (the CSV and the column headings)
# and from what the tables mean, not from the suppression code: every relation a reader
# knows becomes a linear equation in the hidden values, solved exactly with fractions. A
# hidden value is determined when some row of the reduced row echelon form is its unit
# vector. A product of two hidden values (a hidden mean times its hidden n) is one unknown.


def _determined(rows):
    names = sorted({k for r in rows for k in r}, key=repr)
    col = {n: j for j, n in enumerate(names)}
    mat = []
    for r in rows:
        line = [Fraction(0)] * len(names)
        for k, v in r.items():
            line[col[k]] += v
        if any(line):
            mat.append(line)
    pivots, top = [], 0
    for j in range(len(names)):
        pick = next((i for i in range(top, len(mat)) if mat[i][j] != 0), None)
        if pick is None:
            continue
        mat[top], mat[pick] = mat[pick], mat[top]
        mat[top] = [x / mat[top][j] for x in mat[top]]
        for i in range(len(mat)):
            if i != top and mat[i][j] != 0:
                f = mat[i][j]
                mat[i] = [a - f * b for a, b in zip(mat[i], mat[top], strict=True)]
        pivots.append(j)
        top += 1
    return {names[j] for i, j in enumerate(pivots) if sum(x != 0 for x in mat[i]) == 1}


class _Reader:
    """What a reader knows: shown values, hidden unknowns, and the relations among them."""

    def __init__(self):
        self.known, self.hidden, self.rows = {}, set(), []

    def value(self, name, shown, number):
        if not shown:
            self.hidden.add(name)
        elif not pd.isna(number):  # a percentage of zero events is not printed
            self.known[name] = Fraction(str(round(float(number), 6)))

    def relation(self, *terms):
        """Σ coef · a (· b) = known constant (nothing when a value is not printed)."""
        names = [n for _, *ab in terms for n in ab]
        if any(n not in self.known and n not in self.hidden for n in names):
            return
        row = {}
        for coef, a, *b in terms:
            coef = Fraction(coef)
            if b:
                b = b[0]
                if a in self.hidden and b in self.hidden:
                    key, factor = ("product", a, b), 1
                elif a in self.hidden:
                    key, factor = a, self.known[b]
                elif b in self.hidden:
                    key, factor = b, self.known[a]
                else:
                    continue
            elif a in self.hidden:
                key, factor = a, 1
            else:
                continue
            row[key] = row.get(key, 0) + coef * factor
        self.rows.append(row)


def _groups_and_ns(table, reader):
    groups = []
    for heading in table.body.columns[1:]:
        g, n = heading.rsplit(" (n ", 1)
        groups.append(g)
        reader.value(("n", g), not n.startswith("suppressed"), n.strip("= )") or 0)
    arms = groups[:-1]
    if arms:
        reader.relation((1, ("n", "Total")), *[(-1, ("n", g)) for g in arms])
    return groups, arms


def _count_table_reader(table, kinds):
    """kinds: variable -> ("patients" | "events" | "mean", denominator variable or None)."""
    r = _Reader()
    groups, arms = _groups_and_ns(table, r)
    for rec in table.data.itertuples():
        var, g, shown = rec.variable, rec.group, not rec.suppressed
        kind, den = kinds[var]
        if kind == "mean":
            r.value(("mean", var, g), shown, rec.mean if shown else 0)
            r.value(("nmean", var, g), shown, rec.denominator if shown else 0)
        else:
            r.value(("count", var, g), shown, rec.count if shown else 0)
            if kind == "patients" or den is not None:  # a percentage is printed
                r.value(("pct", var, g), shown, rec.percent if shown else 0)
    for var, (kind, den) in kinds.items():
        if kind == "mean":
            r.relation(
                (1, ("mean", var, "Total"), ("nmean", var, "Total")),
                *[(-1, ("mean", var, g), ("nmean", var, g)) for g in arms],
            )
            r.relation((1, ("nmean", var, "Total")), *[(-1, ("nmean", var, g)) for g in arms])
            continue
        r.relation((1, ("count", var, "Total")), *[(-1, ("count", var, g)) for g in arms])
        for g in groups:
            d = ("n", g) if kind == "patients" else ("count", den, g) if den else None
            if d is not None and (("pct", var, g) in r.known or ("pct", var, g) in r.hidden):
                r.relation((1, ("count", var, g)), (Fraction(-1, 100), ("pct", var, g), d))
    return r, groups


def _leaks(reader, truth, min_cell):
    """Hidden non-zero counts (and means) the reader can work out exactly."""
    fixed = _determined(reader.rows)
    leaks = []
    for name in reader.hidden:
        if name[0] in ("count", "n") and name in fixed and truth[name] > 0:
            leaks.append(name)
        if name[0] == "mean" and truth[("nmean", *name[1:])] > 0:
            n = ("nmean", *name[1:])
            if name in fixed or (n in fixed and ("product", name, n) in fixed):
                leaks.append(name)
        if name[0] == "nmean" and name in fixed and 0 < truth[name] < min_cell:
            leaks.append(name)
    return sorted(leaks, key=repr)


def _truth(table):
    """Every value of the same table built with min_cell=1 (nothing small to hide)."""
    truth = {}
    for heading in table.body.columns[1:]:
        g, n = heading.rsplit(" (n = ", 1)
        truth[("n", g)] = int(n.rstrip(")"))
    for rec in table.data.itertuples():
        key = (rec.variable, *((rec.level,) if hasattr(rec, "level") else ()), rec.group)
        truth[("count", *key)] = 0 if pd.isna(rec.count) else rec.count
        n = rec.denominator if "denominator" in table.data.columns else rec.n
        truth[("nmean", *key)] = 0 if pd.isna(n) else n
    return truth


_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _arms(draw):
    sizes = draw(st.lists(st.integers(1, 14), min_size=1, max_size=3))
    return [(f"arm{i}", n) for i, n in enumerate(sizes)]


@_SETTINGS
@given(arms=_arms(), data=st.data(), min_cell=st.sampled_from([3, 5]))
def test_no_suppressed_clinical_significance_cell_can_be_worked_out(arms, data, min_cell):
    levels = [*RC_CATEGORIES, None]
    rows = []
    for arm, n in arms:
        cats = data.draw(st.lists(st.sampled_from(levels), min_size=n, max_size=n))
        rows += [
            {"patient": f"{arm}-{i}", "condition": arm, "rc_category": c}
            for i, c in enumerate(cats)
        ]
    patients = pd.DataFrame(rows)
    t = T.clinical_significance_table(patients, min_cell=min_cell)
    kinds = {v: ("patients", None) for v in [*levels[:-1], "not_assessable"]}
    reader, groups = _count_table_reader(t, kinds)
    for g in groups:  # the categories split each column's patients
        reader.relation((1, ("n", g)), *[(-1, ("count", v, g)) for v in kinds])
    truth = _truth(T.clinical_significance_table(patients, min_cell=1))
    assert _leaks(reader, truth, min_cell) == []


@_SETTINGS
@given(arms=_arms(), data=st.data(), min_cell=st.sampled_from([3, 5]))
def test_no_suppressed_sudden_gains_cell_or_mean_can_be_worked_out(arms, data, min_cell):
    rows, events = [], []
    for arm, n in arms:
        for i in range(n):
            gains = data.draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
            rows.append(
                {
                    "patient": f"{arm}-{i}",
                    "condition": arm,
                    "n_sudden_gains": gains,
                    "n_sudden_gains_reversed": data.draw(st.integers(0, gains)),
                    "n_sudden_losses": data.draw(st.sampled_from([0, 0, 0, 1])),
                }
            )
            for _ in range(gains):
                size = data.draw(st.integers(40, 200)) / 10
                events.append({"patient": f"{arm}-{i}", "event": "gain", "magnitude": size})
    patients = pd.DataFrame(rows)
    gains = pd.DataFrame(events, columns=["patient", "event", "magnitude"])
    t = T.sudden_gains_table(patients, gains, min_cell=min_cell)
    kinds = {
        "patients_with_gain": ("patients", None),
        "gains": ("events", None),
        "gains_reversed": ("events", "gains"),
        "patients_with_loss": ("patients", None),
        "losses": ("events", None),
    }
    if len(gains):
        kinds["gain_magnitude"] = ("mean", None)
    reader, groups = _count_table_reader(t, kinds)
    if len(gains):  # the n of the mean size of the gains is the number of gains
        for g in groups:
            reader.relation((1, ("nmean", "gain_magnitude", g)), (-1, ("count", "gains", g)))
    truth = _truth(T.sudden_gains_table(patients, gains, min_cell=1))
    assert _leaks(reader, truth, min_cell) == []


@_SETTINGS
@given(arms=_arms(), data=st.data(), min_cell=st.sampled_from([3, 5]))
def test_no_suppressed_rupture_cell_or_mean_can_be_worked_out(arms, data, min_cell):
    rows = []
    for arm, n in arms:
        for i in range(n):
            parts = {k: data.draw(st.sampled_from([0, 0, 1, 2])) for k in ("rep", "unrep", "cens")}
            rows.append(
                {
                    "patient": f"{arm}-{i}",
                    "condition": arm,
                    "n_ruptures": sum(parts.values()),
                    "n_repaired": parts["rep"],
                    "n_unrepaired": parts["unrep"],
                    "n_censored": parts["cens"],
                }
            )
    patients = pd.DataFrame(rows)
    t = T.ruptures_table(patients, min_cell=min_cell)
    kinds = {
        "patients_with_rupture": ("patients", None),
        "ruptures_per_patient": ("mean", None),
        "ruptures": ("events", None),
        "repaired": ("events", "ruptures"),
        "unrepaired": ("events", "ruptures"),
        "censored": ("events", "ruptures"),
    }
    reader, groups = _count_table_reader(t, kinds)
    for g in groups:
        parts = [(-1, ("count", v, g)) for v in ("repaired", "unrepaired", "censored")]
        reader.relation((1, ("count", "ruptures", g)), *parts)
        # ruptures per patient x patients = ruptures; every patient is counted
        m, n = ("mean", "ruptures_per_patient", g), ("nmean", "ruptures_per_patient", g)
        reader.relation((1, m, n), (-1, ("count", "ruptures", g)))
        reader.relation((1, n), (-1, ("n", g)))
    truth = _truth(T.ruptures_table(patients, min_cell=1))
    assert _leaks(reader, truth, min_cell) == []


@_SETTINGS
@given(arms=_arms(), data=st.data(), min_cell=st.sampled_from([3, 5]))
def test_no_suppressed_table1_cell_or_mean_can_be_worked_out(arms, data, min_cell):
    sessions, people = [], []
    endings = ["planned", "dropout", "ongoing"]
    for arm, n in arms:
        for i in range(n):
            pid = f"{arm}-{i}"
            therapist = f"t{data.draw(st.integers(0, 3))}"
            for s in range(1, data.draw(st.integers(1, 3)) + 1):
                outcome = data.draw(st.sampled_from([float("nan"), 10.0, 14.5, 20.0, 31.0]))
                sessions.append(
                    {
                        "patient": pid,
                        "session": s,
                        "condition": arm,
                        "therapist": therapist,
                        "outcome": outcome,
                    }
                )
            people.append({"patient": pid, "ending": data.draw(st.sampled_from(endings))})
    analysis, patients = pd.DataFrame(sessions), pd.DataFrame(people)

    def make(m):
        return T.table1(
            analysis,
            continuous={"outcome": "Outcome"},
            categorical={"ending": "Ending"},
            patients=patients,
            min_cell=m,
        )

    t = make(min_cell)
    reader = _Reader()
    groups, arms_ = _groups_and_ns(t, reader)
    levels = sorted(set(patients["ending"]))
    for rec in t.data.itertuples():
        key, shown = (rec.variable, rec.level, rec.group), not rec.suppressed
        if rec.variable == "patients":
            continue  # the heading's n
        if rec.variable in ("therapists", "ending"):
            reader.value(("count", *key), shown, rec.count if shown else 0)
            if rec.variable == "ending":
                reader.value(("pct", *key), shown, rec.percent if shown else 0)
        else:
            reader.value(("mean", *key), shown, rec.mean if shown else 0)
            reader.value(("nmean", *key), shown, rec.n if shown else 0)
    for var in ("sessions", "outcome"):
        m = [("mean", var, "", g) for g in groups]
        n = [("nmean", var, "", g) for g in groups]
        pairs = zip(m[:-1], n[:-1], strict=True)
        reader.relation((1, m[-1], n[-1]), *[(-1, a, b) for a, b in pairs])
        reader.relation((1, n[-1]), *[(-1, b) for b in n[:-1]])
    for g in groups:  # every patient has a number of sessions
        reader.relation((1, ("nmean", "sessions", "", g)), (-1, ("n", g)))
    rows = [("therapists", "")] + [("ending", lv) for lv in levels]
    for var, lv in rows:  # therapists treated as additive: a reader who assumes it
        cells = [("count", var, lv, g) for g in arms_]
        reader.relation((1, ("count", var, lv, "Total")), *[(-1, c) for c in cells])
    for g in groups:
        reader.relation((1, ("n", g)), *[(-1, ("count", "ending", lv, g)) for lv in levels])
        for lv in levels:
            c, p = ("count", "ending", lv, g), ("pct", "ending", lv, g)
            reader.relation((1, c), (Fraction(-1, 100), p, ("n", g)))
    truth = _truth(make(1))
    assert _leaks(reader, truth, min_cell) == []


def test_intake_correlations_hide_small_ns_and_their_statistics():
    # alliance observed for 6 patients, outcome for 3: the outcome's M, SD and n and the
    # pair's n (3) are not published at min_cell 5; the alliance's are (M 3.5, SD 1.87)
    df = pd.DataFrame(
        {
            "patient": list("abcdef"),
            "session": 1,
            "alliance": [1.0, 2, 3, 4, 5, 6],
            "outcome": [2.0, None, 4, None, 6, None],
        }
    )
    t = T.intake_correlations(df, min_cell=5)
    body = t.body.set_index("Variable")
    assert body.loc["M"].tolist() == ["3.50", "suppressed"]
    assert body.loc["SD"].tolist() == ["1.87", "suppressed"]
    assert body.loc["n"].tolist() == ["6", "suppressed"]
    assert body.loc["2. Outcome", "1"] == ""
    assert t.data["n"].isna().tolist() == [True]
    shown = T.intake_correlations(df, min_cell=3)
    assert shown.data["n"].tolist() == [3]
    assert shown.body.set_index("Variable").loc["n"].tolist() == ["6", "3"]


def test_the_audit_protects_a_total_that_two_hidden_cells_per_line_leave_open():
    # min_cell 3. arm0: 2 recovered, 1 deteriorated; arm1: 3 recovered, 1 improved,
    # 1 unchanged; arm2 as arm0. Every row and column then holds two hidden cells, yet the
    # Total column gives deteriorated = 11 - 7 - (improved + unchanged), and arm1's column
    # gives improved + unchanged = 5 - 3 = 2, so the Total's 2 deteriorated would be known.
    # (Found by the property test without the audit.) The audit hides the Total's 7 recovered.
    p = _patients(
        {
            "arm0": {"recovered": 2, "deteriorated": 1},
            "arm1": {"recovered": 3, "improved": 1, "unchanged": 1},
            "arm2": {"recovered": 2, "deteriorated": 1},
        }
    )
    t = T.clinical_significance_table(p, min_cell=3)
    body = t.body.set_index("Measure")
    assert body.columns.tolist() == [
        "arm0 (n = 3)",
        "arm1 (n = 5)",
        "arm2 (n = 3)",
        "Total (n = 11)",
    ]
    hidden = "suppressed"
    assert body.to_dict("split")["data"] == [
        [hidden, "3 (60.0)", hidden, hidden],
        ["0 (0.0)", hidden, "0 (0.0)", hidden],
        ["0 (0.0)", hidden, "0 (0.0)", hidden],
        [hidden, "0 (0.0)", hidden, hidden],
        ["0 (0.0)", "0 (0.0)", "0 (0.0)", "0 (0.0)"],  # harmed
        ["0 (0.0)", "0 (0.0)", "0 (0.0)", "0 (0.0)"],  # not assessable
    ]


# --------------------------------------------------------------------------- pooled tables


def test_pooled_table_is_formatted_like_the_study_tables_and_explains_k_2():
    from allianceflow.pool import meta_analysis

    effects = pd.DataFrame({"study": ["example", "example2"], "r": [0.2, 0.3], "n": [200, 120]})
    meta = meta_analysis(effects)  # Paule–Mandel with the HKSJ interval, the pipeline default
    comparison = pd.DataFrame(
        {
            "approach": ["two-stage (PM, HKSJ)", "one-stage"],
            "r": [0.24, 0.25],
            "ci_low": [-0.4, 0.18],
            "ci_high": [0.7, 0.31],
        }
    )
    t = T.meta_analysis_table(meta, comparison, number=1)
    assert t.label == "Table 1"
    assert (
        t.title == "Random-Effects Meta-Analysis of the Within-Patient Alliance–Outcome Association"
    )
    assert t.body.columns.tolist() == ["Study", "n", "r", "95% CI", "Weight (%)"]
    # tau^2 = 0 here (Q = 0.84 < 1 df): weights 197 : 117 of the inverse variances n - 3
    assert t.body.iloc[1].tolist() == ["example", "200", ".20", "[.06, .33]", "62.7"]
    assert t.body.iloc[2].tolist() == ["example2", "120", ".30", "[.13, .45]", "37.3"]
    assert t.body.iloc[list(t.sections)]["Study"].tolist() == [
        "Studies",
        "Pooled",
        "Two-stage and one-stage estimates",
    ]
    assert "critical value 12.71 instead of 1.96" in t.note
    assert "IntHout et al., 2014; Röver et al., 2015" in t.note
    assert "k = 2 studies" in t.note and "Paule–Mandel" in t.note
    html = T.render_html(t)
    assert "<strong>Table 1</strong>" in html and "<th><em>r</em></th>" in html
    assert T.few_studies_note(5, hksj=True) == ""
    assert "critical value 4.30 instead of 1.96" in T.few_studies_note(3, hksj=True)


def test_tables_are_numbered_in_citation_order(root):
    from allianceflow import stages
    from allianceflow.config import load_config

    studies = load_config(root / "config.yaml")["studies"]
    example = studies["example"]
    names = stages.study_tables(example) + example["models"] + ["models"]
    assert names[:6] == [
        "table1",
        "reliability",
        "intake_correlations",
        "clinical_significance",
        "sudden_gains",
        "ruptures",
    ]
    numbers = [stages.table_settings(n, example)["number"] for n in names]
    assert numbers == list(range(1, 21))  # 6 descriptive, 13 models, all models side by side
    # a study that derives no ruptures: its tables close up
    study = {**studies["example2"]}
    study["derive"] = {**study["derive"], "ruptures": {"enabled": False}}
    assert stages.study_tables(study)[-1] == "sudden_gains"
    assert stages.table_settings("alliance_outcome", study)["number"] == 6
    assert stages.table_settings("models", study)["number"] == 6 + len(study["models"])
    with pytest.raises(KeyError, match="`name` must be one of 'table1'"):
        stages.table_settings("growth", studies["example2"])


def test_supplementary_tables_are_numbered_after_the_models(root):
    """The arm contrasts of the binary outcomes, then each moderated model's simple slopes."""
    from allianceflow import stages
    from allianceflow.config import load_config

    config = load_config(root / "config.yaml")
    example, example2 = config["studies"]["example"], config["studies"]["example2"]
    # example: 6 descriptive tables, 13 models, all models side by side (20), then these
    assert stages.table_settings("binary_effects", example, config["models"])["number"] == 21
    # example2: arms, on-track status and reliable change, and one moderated model
    models = config["models"]
    assert stages.moderated_models(example2, models) == ["alliance_outcome_modality"]
    last = stages.table_settings("models", example2, models)["number"]
    slopes = "simple_slopes_alliance_outcome_modality"
    assert stages.table_settings("binary_effects", example2, models)["number"] == last + 1
    assert stages.table_settings(slopes, example2, models)["number"] == last + 2
    assert stages.table_settings(slopes, example2, models)["labels"]["arms"] == {
        "feedback": "feedback-informed treatment",
        "tau": "usual care",
    }
    # without on-track status there are no arm contrasts, and the slopes close up
    study = {**example2, "derive": {**example2["derive"], "on_track": {"enabled": False}}}
    assert stages.table_settings(slopes, study, models)["number"] == last + 1
    with pytest.raises(KeyError, match="got 'binary_effects'"):
        stages.table_settings("binary_effects", study, models)
    # the simple slopes are known only with the models block
    with pytest.raises(KeyError, match=f"got '{slopes}'"):
        stages.table_settings(slopes, example2)


def test_glmm_and_binary_effects_tables_are_numbered_and_in_words():
    from allianceflow.effects import BENCHMARKS
    from allianceflow.labels import Labels

    labels = Labels(
        arms={"feedback": "routine outcome feedback"},
        levels={"condition": ["feedback", "tau"]},
        variables={"ors_total": "ORS total"},
        outcome="ors_total",
    )
    record = {
        "name": "deterioration",
        "family": "binomial",
        "formula": "deteriorated ~ feedback + outcome_baseline + (1 | therapist)",
        "n_obs": 250,
        "nAGQ": 1,
        "fixed": [
            {"term": t, "estimate": b, "se": 0.2, "ci_low": b - 0.4, "ci_high": b + 0.4, "p": p}
            for t, b, p in [
                ("Intercept", -1.0, 0.001),
                ("feedback", -0.5, 0.01),
                ("outcome_baseline", 0.02, 0.3),
            ]
        ],
        "random": [{"group": "therapist", "term": "(Intercept)", "variance": 0.1}],
        "rows": {"off_track": 1.0},
    }
    t = T.ratio_table(record, labels=labels.to_dict(), number=9)
    assert t.label == "Table 9"
    assert t.title == (
        "Reliable Deterioration by Arm, Adjusting for ORS Total at Intake, in Patients Not on "
        "Track (Random Intercepts for Therapists)"
    )
    assert t.body["Predictor"].tolist() == [
        "Intercept",
        "Routine outcome feedback arm (vs treatment as usual)",
        "ORS total at intake",
    ]
    # OR = e^b and its interval e^(b -+ 0.4): e^-0.5 = 0.6065, e^-0.9 = 0.4066, e^-0.1 = 0.9048
    assert t.body.iloc[1].tolist()[3:5] == ["0.61", "[0.41, 0.90]"]
    assert "Random intercepts for therapists: the ratios are conditional on them" in t.note
    assert "Laplace approximation" in t.note
    contrasts = pd.DataFrame(
        [
            {
                "outcome": "deteriorated",
                "subgroup": "all",
                "events_treated": 3,
                "n_treated": 60,
                "rate_treated": 0.05,
                "events_control": 9,
                "n_control": 60,
                "rate_control": 0.15,
                "success_rate_difference": 0.1,
                "srd_low": -0.01,
                "srd_high": 0.21,
                "nnt_text": "NNTB 10.0",
                "hedges_g": 0.2,
                "g_low": -0.1,
                "g_high": 0.5,
            }
        ]
    )
    b = T.binary_effects_table(contrasts, BENCHMARKS, labels=labels, number=21)
    assert b.label == "Table 21"
    assert b.body.columns[1:3].tolist() == [
        "Routine outcome feedback: events/N (%)",
        "Treatment as usual: events/N (%)",
    ]
    assert b.body.iloc[0, 1:3].tolist() == ["3/60 (5.0%)", "9/60 (15.0%)"]
    assert "(routine outcome feedback minus treatment as usual:" in b.note
    assert "tau" not in b.note.split()
