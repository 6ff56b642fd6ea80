"""Figures: every format, same bytes on a rerun, no dates in the metadata."""

import pytest
from conftest import EXAMPLE_ORS

from allianceflow.derive import derive_analysis
from allianceflow.figures import plot_within_between, save_figure
from allianceflow.io import sha256_file
from allianceflow.simulate import simulate_study


@pytest.fixture(scope="module")
def analysis():
    df = simulate_study(seed=7, n_patients=40, n_therapists=4, max_sessions=8)
    df["wai"] = df.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    df["ors"] = df.filter(regex=r"^ors_\d+$").sum(axis=1)
    return derive_analysis(df, alliance="wai", outcome="ors")


def test_saved_twice_gives_identical_bytes(analysis, tmp_path):
    paths = {}
    for run in ("a", "b"):
        paths[run] = [tmp_path / f"{run}.{ext}" for ext in ("png", "pdf", "svg")]
        save_figure(plot_within_between(analysis), paths[run])
    for a, b in zip(paths["a"], paths["b"]):
        assert sha256_file(a) == sha256_file(b), a.suffix


def test_metadata_carries_no_date_and_fonts_are_embedded(analysis, tmp_path):
    pdf, svg = tmp_path / "f.pdf", tmp_path / "f.svg"
    save_figure(plot_within_between(analysis), [pdf, svg])
    pdf_bytes = pdf.read_bytes()
    assert b"CreationDate" not in pdf_bytes
    assert b"/FontFile2" in pdf_bytes  # TrueType (Type 42) font embedded
    svg_text = svg.read_text()
    assert "<dc:date>" not in svg_text
    assert "Within patients" in svg_text  # text kept as text


def test_without_a_model_the_titles_call_the_ols_slopes_orientation(analysis):
    import numpy as np

    fig = plot_within_between(analysis)
    within = analysis.dropna(subset=["alliance_within_lag", "outcome_within"])
    slope = np.polyfit(within["alliance_within_lag"], within["outcome_within"], 1)[0]
    assert fig.axes[0].get_title() == f"Within patients\n(OLS slope {slope:.2f}, for orientation)"


def test_with_a_model_the_panels_show_its_estimates_not_ols(analysis):
    """Issue 16: titles printed OLS slopes (0.32, 0.35) against the model's 0.162, 0.294."""
    model = {
        "name": "alliance_outcome",
        "fixed": [
            {"term": "Intercept", "estimate": 20.0, "ci_low": 19.0, "ci_high": 21.0},
            {"term": "alliance_within_lag", "estimate": 0.162, "ci_low": 0.121, "ci_high": 0.203},
            {"term": "alliance_between", "estimate": 0.294, "ci_low": 0.2, "ci_high": 0.388},
        ],
    }
    fig = plot_within_between(analysis, model)
    left, right = fig.axes
    assert left.get_title() == "Within patients\nb = 0.16, 95% CI [0.12, 0.20]"
    assert right.get_title() == "Between patients\nb = 0.29, 95% CI [0.20, 0.39]"
    x, y = left.lines[0].get_data()
    assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(0.162)
    x, y = right.lines[0].get_data()
    assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(0.294)
    with pytest.raises(KeyError, match="has no within-patient term"):
        plot_within_between(analysis, {"name": "growth", "fixed": model["fixed"][:1]})


def test_unknown_format_is_refused(analysis, tmp_path):
    with pytest.raises(ValueError, match=r"`paths` must end in .png, .pdf or .svg; got 'f.jpg'."):
        save_figure(plot_within_between(analysis), [tmp_path / "f.jpg"])


# --------------------------------------------------------------------------- issue 7 figures


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from allianceflow import figures as F  # noqa: E402


@pytest.fixture(scope="module")
def derived():
    from allianceflow.derive import derive_tables

    df = simulate_study(seed=7, n_patients=80, n_therapists=6, max_sessions=10)
    df["wai"] = df.filter(regex=r"^wai_sr_\d+$").sum(axis=1)
    df["ors"] = df.filter(regex=r"^ors_\d+$").sum(axis=1)
    return derive_tables(
        df,
        alliance="wai",
        outcome="ors",
        **EXAMPLE_ORS,
    )


@pytest.fixture
def result():
    return {
        "name": "m",
        "formula": "outcome ~ session + (1 + session | patient)",
        "fixed": [
            {"term": "Intercept", "estimate": 20.0, "se": 1.0, "ci_low": 18.04, "ci_high": 21.96},
            {"term": "session", "estimate": 0.5, "se": 0.1, "ci_low": 0.304, "ci_high": 0.696},
            {
                "term": "alliance_between",
                "estimate": 0.3,
                "se": 0.05,
                "ci_low": 0.202,
                "ci_high": 0.398,
            },
        ],
        "random": [
            {"group": "patient", "term": "(Intercept)", "variance": 16.0},
            {"group": "patient", "term": "session", "variance": 0.25},
        ],
        "covariances": [
            {"group": "patient", "term1": "(Intercept)", "term2": "session", "covariance": -0.5}
        ],
    }


def test_model_implied_mean_and_patient_band(result):
    grid = pd.DataFrame({"session": [1.0, 3.0]})
    pred = F.model_implied_mean(result, grid, hold={"alliance_between": 2.0})
    assert pred["mean"].tolist() == pytest.approx([20.5 + 0.6, 21.5 + 0.6])
    # var(t) = 16 + 0.25 t^2 + 2 (-0.5) t
    half = 1.96 * np.sqrt([16 + 0.25 - 1.0, 16 + 2.25 - 3.0])
    assert (pred["upper"] - pred["mean"]).tolist() == pytest.approx(half.tolist())
    with pytest.raises(KeyError, match="'vcov_fixed'"):
        F.model_implied_mean(result, grid, band="confidence")
    vc = {
        "terms": ["session", "Intercept", "alliance_between"],
        "matrix": [[0.01, 0, 0], [0, 1.0, 0], [0, 0, 0.0025]],
    }
    ci = F.model_implied_mean({**result, "vcov_fixed": vc}, grid, band="confidence")
    assert (ci["upper"] - ci["mean"]).iloc[1] == pytest.approx(1.96 * np.sqrt(1.0 + 9 * 0.01))


def test_caterpillar_names_the_key_it_needs(result):
    with pytest.raises(KeyError, match=r"result\['conditional_modes'\]"):
        F.plot_caterpillar(result)
    modes = [
        {"group": "therapist", "level": f"T{i}", "term": "(Intercept)", "estimate": e, "se": 0.5}
        for i, e in enumerate([0.3, -1.2, 0.9])
    ]
    fig = F.plot_caterpillar({**result, "conditional_modes": modes})
    ys = fig.axes[0].lines[0].get_ydata()
    assert list(ys) == [-1.2, 0.3, 0.9]  # ranked


def test_flow_diagram_prints_the_counts(tmp_path):
    flow = {
        "source_file": "x.csv",
        "sessions": {
            "read": 120,
            "kept": 100,
            "excluded": 20,
            "excluded_by_rule": {"duplicate_identical": 20},
        },
        "patients": {
            "read": 12,
            "kept": 10,
            "excluded": 2,
            "excluded_by_rule": {"min_sessions": 2},
        },
    }
    fig = F.plot_flow(
        flow,
        arms={"tau": {"patients": 5, "sessions": 50}, "feedback": {"patients": 5, "sessions": 50}},
    )
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "Read from x.csv\n12 patients, 120 sessions" in texts
    assert (
        "Excluded\n2 patients\n  min sessions: 2\n20 sessions\n  duplicate identical: 20" in texts
    )
    assert "Feedback\n5 patients, 50 sessions" in texts
    assert "Treatment as usual\n5 patients, 50 sessions" in texts
    with pytest.raises(KeyError, match=r"`flow` has no 'patients' block"):
        F.plot_flow({"sessions": flow["sessions"]})


def test_every_new_figure_saves_identically_twice(derived, result, tmp_path):
    a, p, g = derived.analysis, derived.patients, derived.sudden_gains
    makers = {
        "trajectories": lambda: F.plot_trajectories(a, result),
        "forest": lambda: F.plot_forest([result, {**result, "name": "m2"}]),
        "forest_one": lambda: F.plot_forest(result, title="A question"),
        "trajectories_aggregate": lambda: F.plot_trajectories(a, result, patient_lines=False),
        "feedback": lambda: F.plot_feedback_curves(a),
        "etr": lambda: F.plot_expected_response(a),
        "ruptures": lambda: F.plot_ruptures(a),
        "sudden_gains": lambda: F.plot_sudden_gains(a, g),
        "reliable_change": lambda: F.plot_reliable_change(p, rci=5.0, cutoff=25.0),
    }
    for name, make in makers.items():
        hashes = []
        for run in ("a", "b"):
            paths = [tmp_path / f"{name}_{run}.{ext}" for ext in ("png", "pdf", "svg")]
            save_figure(make(), paths)
            hashes.append([sha256_file(x) for x in paths])
        assert hashes[0] == hashes[1], name


def test_feedback_curves_label_groups_with_their_size(derived):
    a = derived.analysis
    fig = F.plot_feedback_curves(a, min_n=1)
    labels = sorted(t.get_text() for t in fig.legends[0].get_texts())
    status = F._patient_status(a, "patient", "track_status")
    arm = a.groupby("patient")["condition"].first()
    n = int(((arm == "tau") & (status == "on track")).sum())
    assert f"Treatment as usual, on track (n = {n})" in labels


def test_example_patient_is_the_first_off_track(derived):
    a = derived.analysis
    pid = F.pick_example_patient(a)
    off = sorted(set(a.loc[a["track_status"] == "not_on_track", "patient"]))
    sizes = a.groupby("patient").size()
    assert pid == next(x for x in off if sizes[x] >= 6)


# --------------------------------------------------------------------------- issue 16 layout


def _figures(derived, result):
    a, p, g = derived.analysis, derived.patients, derived.sudden_gains
    many = {
        **result,
        "fixed": result["fixed"]
        + [
            {
                "term": f"C(condition)[T.tau]:x{i}",
                "estimate": 0.1 * i,
                "se": 0.1,
                "ci_low": 0.1 * i - 0.2,
                "ci_high": 0.1 * i + 0.2,
            }
            for i in range(30)
        ],
    }
    modes = [
        {"group": "therapist", "level": f"T{i}", "term": "(Intercept)", "estimate": e, "se": 0.5}
        for i, e in enumerate([0.3, -1.2, 0.9])
    ]
    flow = {
        "source_file": "sessions_export.csv",
        "sessions": {"read": 1200, "kept": 1100, "excluded": 100, "excluded_by_rule": {"a": 1}},
        "patients": {"read": 120, "kept": 110, "excluded": 10, "excluded_by_rule": {"b": 10}},
    }
    return {
        "within_between": F.plot_within_between(a),
        "trajectories": F.plot_trajectories(a, result),
        "trajectories_aggregate": F.plot_trajectories(a, result, patient_lines=False),
        "forest": F.plot_forest(
            result,
            title="Change in ORS total over sessions by arm and on-track status (random "
            "intercepts for therapists; random intercepts and session slopes for patients)",
        ),
        "forest_many_terms": F.plot_forest(many),
        "forest_odds_ratios": F.plot_forest(
            _odds_ratio_record(),
            labels={
                "feedback": "Routine outcome feedback arm (vs treatment as usual)",
                "outcome_baseline": "ORS total at intake",
            },
            title="Reliable deterioration by arm, adjusting for ORS total at intake "
            "(random intercepts for therapists)",
        ),
        "caterpillar": F.plot_caterpillar({**result, "conditional_modes": modes}),
        "feedback": F.plot_feedback_curves(a, min_n=1),
        "expected_response": F.plot_expected_response(a),
        "ruptures": F.plot_ruptures(a, min_n=1),
        "sudden_gains": F.plot_sudden_gains(a, g),
        "reliable_change": F.plot_reliable_change(p, rci=5.0, cutoff=25.0),
        "flow": F.plot_flow(
            flow,
            arms={"tau": {"patients": 55, "sessions": 550}, "feedback": {"patients": 55}},
            analysed={"alliance_outcome": {"n_obs": 900, "n_groups": {"patient": 110}}},
        ),
        "binary_rates": F.plot_binary_rates(p, min_n=1),
        "dropout_curve": F.plot_dropout_curve(_dropout_model(p), p),
        "meta_forest": _meta_forest(),
    }


def _odds_ratio_record():
    """A logistic GLMM's record as the fit stage writes it: b and the odds ratios."""
    fixed = [
        ("Intercept", -3.22, -4.91, -1.54),
        ("feedback", -0.66, -1.48, 0.16),
        ("outcome_baseline", 0.01, -0.05, 0.07),
    ]
    return {
        "name": "deterioration",
        "family": "binomial",
        "fixed": [
            {"term": t, "estimate": b, "ci_low": lo, "ci_high": hi} for t, b, lo, hi in fixed
        ],
        "ratios": [
            {"term": t, "ratio": np.exp(b), "ci_low": np.exp(lo), "ci_high": np.exp(hi)}
            for t, b, lo, hi in fixed
        ],
    }


def _dropout_model(patients):
    from allianceflow.models import fit_model

    return fit_model(
        patients, "dropout ~ early_alliance + (1 | therapist)", family="binomial"
    ).to_dict()


def _meta_forest():
    from allianceflow.pool import meta_analysis, plot_forest

    effects = pd.DataFrame({"study": ["example", "example2"], "r": [0.2, 0.3], "n": [900, 400]})
    meta = {**meta_analysis(effects), "term": "alliance_within_lag"}
    meta["studies"][0]["label"] = "example: alliance WAI-SR total, outcome ORS total"
    return plot_forest(meta)


@pytest.fixture(scope="module")
def couples():
    """The analysis table of a small simulated couples study, and its labels."""
    from allianceflow.derive import derive_tables
    from allianceflow.labels import Labels
    from allianceflow.simulate import simulate_couples

    df = simulate_couples(seed=3, n_systems=30, n_therapists=6, max_sessions=8)
    df["srs"] = df.filter(regex=r"^srs_\d+$").sum(axis=1)
    df["ors"] = df.filter(regex=r"^ors_\d+$").sum(axis=1)
    analysis = derive_tables(
        df,
        alliance="srs",
        outcome="ors",
        **EXAMPLE_ORS,
    ).analysis
    labels = Labels(
        variables={"srs": "SRS total", "ors": "ORS total"},
        alliance="srs",
        outcome="ors",
        levels={"role": ["partner_a", "partner_b"]},
    )
    return analysis, labels


def _couple_figures(couples):
    analysis, labels = couples
    split = {
        "name": "split_alliance",
        "fixed": [
            {
                "term": "alliance_split_within_lag",
                "estimate": -0.3,
                "ci_low": -0.4,
                "ci_high": -0.2,
            },
            {"term": "alliance_split_between", "estimate": -0.5, "ci_low": -0.8, "ci_high": -0.2},
        ],
    }
    return {
        "couple_trajectories": F.plot_couple_trajectories(analysis, labels=labels),
        "couple_trajectories_ten": F.plot_couple_trajectories(
            analysis, labels=labels, n_systems=10
        ),
        "split_outcome": F.plot_split_outcome(analysis, split, labels=labels),
    }


@pytest.fixture(scope="module")
def drawn(derived, couples):
    import io

    import matplotlib.pyplot as plt

    result = {
        "name": "m",
        "formula": "outcome ~ session + (1 + session | patient)",
        "fixed": [
            {"term": "Intercept", "estimate": 20.0, "se": 1.0, "ci_low": 18.04, "ci_high": 21.96},
            {"term": "session", "estimate": 0.5, "se": 0.1, "ci_low": 0.304, "ci_high": 0.696},
        ],
        "random": [
            {"group": "patient", "term": "(Intercept)", "variance": 16.0},
            {"group": "patient", "term": "session", "variance": 0.25},
        ],
        "covariances": [],
    }
    figs = {**_figures(derived, result), **_couple_figures(couples)}
    for fig in figs.values():
        # as the files are made (figures._save_all): laid out by the PDF's save, then drawn
        # on that layout at the PNG's 300 dpi
        with F.style():
            fig.savefig(io.BytesIO(), format="pdf", dpi=300)
        fig.set_layout_engine("none")
        fig.set_dpi(300)
        fig.canvas.draw()
    yield figs
    for fig in figs.values():
        plt.close(fig)


def _drawn_texts(fig):
    """The texts a reader sees: titles, axis and tick labels in view, legends, free texts."""
    texts = list(fig.texts)
    for legend in fig.legends:
        texts += legend.get_texts()
    for ax in fig.axes:
        texts += list(ax.texts) + [ax.title, ax._left_title, ax._right_title]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label]
            for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
                lo, hi = min(lo, hi), max(lo, hi)
                pad = 1e-9 * (hi - lo)
                texts += [  # tick labels in view (matplotlib draws no others)
                    tick.label1
                    for tick in axis.get_major_ticks()
                    if lo - pad <= tick.get_loc() <= hi + pad
                ]
        if ax.get_legend():
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def test_no_text_is_clipped_by_the_figure_edge(drawn):
    """Every visible text's bounding box lies inside the figure (1 px tolerance)."""
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        texts = _drawn_texts(fig)
        assert texts, name
        for text in texts:
            box = text.get_window_extent(renderer)
            inside = box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1
            assert inside, (name, text.get_text(), box.bounds, (width, height))


def test_legends_sit_outside_the_data(drawn):
    """No legend box overlaps an axes' data area."""
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                if ax.axison:
                    assert not box.overlaps(ax.get_window_extent(renderer)), name
    assert all(
        fig.legends
        for name, fig in drawn.items()
        if name
        in (
            "trajectories",
            "feedback",
            "expected_response",
            "reliable_change",
            "binary_rates",
            "couple_trajectories",
            "couple_trajectories_ten",
        )
    )


def test_session_ticks_are_whole_numbers(drawn):
    for name in ("trajectories", "trajectories_aggregate", "feedback", "expected_response"):
        ticks = drawn[name].axes[0].get_xticks()
        assert all(float(t).is_integer() for t in ticks), (name, ticks)
    for name in ("couple_trajectories", "couple_trajectories_ten"):  # every panel
        for ax in drawn[name].axes:
            assert all(float(t).is_integer() for t in ax.get_xticks()), (name, ax.get_title())


def test_a_forest_plot_is_at_most_9_inches_tall(drawn):
    assert drawn["forest_many_terms"].get_size_inches()[1] == pytest.approx(9.0)
    assert drawn["forest"].get_size_inches()[1] < 3.0
    labels = [
        t.get_text().replace("\n", " ")
        for t in drawn["forest_many_terms"].axes[0].get_yticklabels()
    ]
    assert "Treatment as usual vs the reference level of arm × x3" in labels


def test_aggregate_trajectories_draw_no_patient(derived, drawn):
    ax = drawn["trajectories_aggregate"].axes[0]
    n_sessions = derived.analysis["session"].nunique()
    # the observed mean and the model-implied mean; no line per patient
    assert len(ax.lines) == 2
    assert len(ax.lines[0].get_xdata()) <= n_sessions
    assert len(drawn["trajectories"].axes[0].lines) > 40


def test_a_glmm_forest_plot_shows_odds_ratios_on_a_log_axis():
    """A binomial GLMM's forest plot draws exp(b) with the record's ratio CIs around 1."""
    import matplotlib.pyplot as plt

    record = {
        "name": "dropout",
        "family": "binomial",
        "fixed": [
            {"term": "Intercept", "estimate": -1.0, "ci_low": -1.5, "ci_high": -0.5},
            {"term": "early_alliance", "estimate": -0.5, "ci_low": -0.9, "ci_high": -0.1},
        ],
        "ratios": [
            {"term": "Intercept", "ratio": 0.368, "ci_low": 0.223, "ci_high": 0.607},
            {"term": "early_alliance", "ratio": 0.607, "ci_low": 0.407, "ci_high": 0.905},
        ],
    }
    fig = F.plot_forest(record)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "Odds ratio\n(95% CI, log scale)"  # one column: two lines
    wide = F.plot_forest(record, width="two")
    assert wide.axes[0].get_xlabel() == "Odds ratio (95% CI, log scale)"
    plt.close(wide)
    points = ax.containers[0][0]  # the errorbar's data line
    assert list(points.get_xdata()) == [0.607]
    (bars,) = ax.containers[0][2]  # the CI: 0.407 to 0.905 at the term's row
    assert bars.get_segments()[0][:, 0].tolist() == pytest.approx([0.407, 0.905])
    reference = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert [list(line.get_xdata()) for line in reference] == [[1, 1]]
    # an identity-link record keeps b on its own scale, with the line at 0
    linear = F.plot_forest({**record, "family": "gaussian", "ratios": []})
    assert linear.axes[0].get_xscale() == "linear"
    assert linear.axes[0].get_xlabel() == "Estimate (95% CI)"
    plt.close(fig)
    plt.close(linear)


# --------------------------------------------------------------------------- saving cost (issue 20)


def test_the_order_of_the_paths_does_not_change_the_files(analysis, tmp_path):
    """The PDF first, then the SVG and the PNG on its layout, whatever order the paths come in."""
    made = {}
    for run, order in (("a", ("png", "pdf", "svg")), ("b", ("svg", "pdf", "png"))):
        paths = [tmp_path / f"{run}.{ext}" for ext in order]
        save_figure(plot_within_between(analysis), paths)
        made[run] = {p.suffix: sha256_file(p) for p in paths}
    assert made["a"] == made["b"]


def test_pdf_font_subsets_keep_every_outline_and_width_and_drop_layout_tables():
    """The lean subset draws each glyph as matplotlib's own subset does."""
    from fontTools.ttLib import TTFont
    from matplotlib.backends import _backend_pdf_ps
    from matplotlib.font_manager import FontProperties, findfont, get_font

    path = findfont(FontProperties(family="DejaVu Sans"))
    font = get_font(path)
    glyphs = {font.get_char_index(ord(c)) for c in "Odds ratio (95% CI) −0.25 × b² ≥ fi"}
    with _backend_pdf_ps.get_glyphs_subset(path, glyphs) as theirs:
        theirs_font = TTFont(_backend_pdf_ps.font_as_file(theirs.font))
        their_map = dict(theirs.glyph_index_map)
    with F._glyphs_subset(path, glyphs) as ours:
        ours_font = TTFont(_backend_pdf_ps.font_as_file(ours.font))
        our_map = dict(ours.glyph_index_map)
    assert glyphs <= set(our_map)  # every glyph drawn is in the subset
    assert not {"GSUB", "GPOS", "GDEF", "kern", "MATH"} & set(ours_font.keys())
    assert {"GSUB", "GPOS"} <= set(theirs_font.keys())
    for tag in ("name", "cvt ", "fpgm", "prep"):  # names and hinting programs
        assert ours_font.reader[tag] == theirs_font.reader[tag], tag
    our_order, their_order = ours_font.getGlyphOrder(), theirs_font.getGlyphOrder()
    for gid in glyphs:
        ours_name, theirs_name = our_order[our_map[gid]], their_order[their_map[gid]]
        assert ours_name == theirs_name
        ours_glyph, theirs_glyph = ours_font["glyf"][ours_name], theirs_font["glyf"][theirs_name]
        assert ours_glyph.compile(ours_font["glyf"]) == theirs_glyph.compile(theirs_font["glyf"])
        assert ours_font["hmtx"][ours_name] == theirs_font["hmtx"][theirs_name]


def test_pdfs_embed_the_lean_subset_and_are_the_same_bytes_twice(analysis, tmp_path):
    import re
    import zlib

    from fontTools.ttLib import TTFont

    pdfs = [tmp_path / "a.pdf", tmp_path / "b.pdf"]
    for pdf in pdfs:
        save_figure(plot_within_between(analysis), [pdf])
    data = pdfs[0].read_bytes()
    assert data == pdfs[1].read_bytes()
    (ref,) = set(re.findall(rb"/FontFile2 (\d+) 0 R", data))
    stream = re.search(rb"\n" + ref + rb" 0 obj\n<<.*?>>\nstream\n(.*?)\nendstream", data, re.S)
    import io

    font = TTFont(io.BytesIO(zlib.decompress(stream.group(1))))
    assert "glyf" in font and not {"GSUB", "GPOS", "kern"} & set(font.keys())


def _ratio_record(low: float, ratio: float, high: float) -> dict:
    return {
        "name": "m",
        "family": "binomial",
        "fixed": [{"term": "x", "estimate": np.log(ratio), "ci_low": 0.0, "ci_high": 0.0}],
        "ratios": [{"term": "x", "ratio": ratio, "ci_low": low, "ci_high": high}],
    }


@pytest.mark.parametrize(
    ("low", "ratio", "high", "labels"),
    [
        (0.22, 0.6, 2.9, ["0.2", "0.5", "1", "2"]),  # a decade: 1, 2, 5 times powers of ten
        (1.011, 1.016, 1.0214, ["1", "1.005", "1.01", "1.015", "1.02"]),  # 2 %: even steps
        (0.004, 0.05, 0.9, ["0.01", "0.03", "0.1", "0.3", "1"]),  # over two decades
    ],
)
def test_ratio_axes_are_labelled_in_plain_numbers_that_do_not_overlap(low, ratio, high, labels):
    """Issue 20: log-axis labels such as 1.005×10⁰ printed over each other."""
    import matplotlib.pyplot as plt

    fig = F.plot_forest(_ratio_record(low, ratio, high))
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = sorted(ax.get_xlim())
    shown = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert [t.get_text() for t in shown] == labels
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    boxes = [t.get_window_extent() for t in shown]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
