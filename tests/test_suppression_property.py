r"""Suppression that holds, checked by an audit written independently of the module's own.

Random two-way tables of patient counts (categories × arms) are published with their
margins (row totals, column ns, the total n), a mean outcome per arm and overall. After
:meth:`CellSuppression.solve`, a reader knows every shown cell and the linear relations the
table states; a hidden cell is recoverable when those relations determine it.

For counts the relations are linear in the hidden values: with :math:`A` the matrix of the
published equations restricted to the hidden cells, a hidden cell :math:`u` is determined
exactly when the unit vector :math:`e_u` lies in the row space of :math:`A`, i.e. when
``rank([A; e_u]) == rank(A)``. For means, the relation :math:`N\bar y = \sum_i n_i \bar y_i`
is linear once each product :math:`n_i \bar y_i` of two hidden values is an unknown of its
own; a hidden mean is recovered when it is determined (its n shown) or when both its
product and its n are.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from allianceflow.tables.suppression import CellSuppression

MIN_CELL = 5


def _determined(rows: list[dict], unknowns: list) -> set:
    """Unknowns whose unit vector lies in the row space of the equations (rank test)."""
    if not rows or not unknowns:
        return set()
    index = {u: j for j, u in enumerate(unknowns)}
    a = np.zeros((len(rows), len(unknowns)))
    for i, row in enumerate(rows):
        for u, c in row.items():
            a[i, index[u]] += c
    a = a[np.abs(a).sum(axis=1) > 0]
    if not len(a):
        return set()
    rank = np.linalg.matrix_rank(a)
    out = set()
    for u, j in index.items():
        e = np.zeros(len(unknowns))
        e[j] = 1.0
        if np.linalg.matrix_rank(np.vstack([a, e])) == rank:
            out.add(u)
    return out


tables = st.integers(min_value=2, max_value=4).flatmap(
    lambda k: st.integers(min_value=2, max_value=4).flatmap(
        lambda r: st.tuples(
            st.lists(
                st.lists(st.integers(min_value=0, max_value=12), min_size=k, max_size=k),
                min_size=r,
                max_size=r,
            ),
            st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=k, max_size=k),
        )
    )
)


def _publish(counts: list[list[int]], means: list[float]):
    """Build the table's cells and relations; return the solver and the true values."""
    r, k = len(counts), len(counts[0])
    s = CellSuppression(min_cell=MIN_CELL)
    col_n = [sum(counts[i][j] for i in range(r)) for j in range(k)]
    total = sum(col_n)
    values = {}
    for i in range(r):
        for j in range(k):
            s.count(("cell", i, j), counts[i][j])
            values[("cell", i, j)] = counts[i][j]
        s.count(("rowtotal", i), sum(counts[i]))
        values[("rowtotal", i)] = sum(counts[i])
    for j in range(k):
        s.count(("n", j), col_n[j])
        values[("n", j)] = col_n[j]
    s.count("N", total)
    values["N"] = total
    for i in range(r):
        s.add_sum(("rowtotal", i), [("cell", i, j) for j in range(k)])
    for j in range(k):
        s.add_sum(("n", j), [("cell", i, j) for i in range(r)])
    s.add_sum("N", [("n", j) for j in range(k)])
    s.add_sum("N", [("rowtotal", i) for i in range(r)])
    # a mean outcome per arm on the arm's n patients, and overall
    grand = sum(m * n for m, n in zip(means, col_n)) / total if total else None
    for j in range(k):
        s.mean(("mean", j), means[j] if col_n[j] else None, col_n[j])
        s.add_same_n(("mean", j), ("n", j))
        s.add_follows(("n", j), ("mean", j))
    s.mean("mean_all", grand, total)
    s.add_same_n("mean_all", "N")
    s.add_mean_relation("mean_all", [("mean", j) for j in range(k)])
    return s, values, col_n, grand


def _audit(hidden, values, col_n, means, grand, r, k):
    """Independently list the hidden non-zero counts and hidden means a reader can recover."""
    count_keys = [key for key in values if hidden[key]]
    rows = []
    # row totals = sum of the row; column n = sum of the column; N = sum of ns = sum of rows
    relations = [(("rowtotal", i), [("cell", i, j) for j in range(k)]) for i in range(r)] + [
        (("n", j), [("cell", i, j) for i in range(r)]) for j in range(k)
    ]
    relations += [("N", [("n", j) for j in range(k)]), ("N", [("rowtotal", i) for i in range(r)])]
    for tot, parts in relations:
        row = {}
        for key, coef in [(tot, 1.0)] + [(p, -1.0) for p in parts]:
            if hidden[key]:
                row[key] = row.get(key, 0.0) + coef
        rows.append(row)
    # N * grand = sum n_j * mean_j: unknowns mean_j (n_j shown) or the product (n_j hidden)
    mean_rows = list(rows)
    row = {}
    for j in range(k):
        if not hidden[("mean", j)]:
            continue
        if hidden[("n", j)]:
            row[("product", j)] = -1.0
        else:
            row[("mean", j)] = -float(col_n[j])
    if hidden["mean_all"]:
        if hidden["N"]:
            row["product_all"] = 1.0
        else:
            row["mean_all"] = float(values["N"])
    mean_rows.append(row)
    unknowns = list(count_keys)
    unknowns += [("mean", j) for j in range(k) if hidden[("mean", j)] and not hidden[("n", j)]]
    unknowns += [("product", j) for j in range(k) if hidden[("mean", j)] and hidden[("n", j)]]
    if hidden["mean_all"]:
        unknowns.append("mean_all" if not hidden["N"] else "product_all")
    determined = _determined(mean_rows, unknowns)
    leaks = [key for key in count_keys if values[key] > 0 and key in determined]
    for j in range(k):
        if hidden[("mean", j)] and col_n[j] > 0:
            if ("mean", j) in determined or (
                ("product", j) in determined and ("n", j) in determined
            ):
                leaks.append(("mean", j))
    if hidden["mean_all"] and values["N"] > 0:
        if "mean_all" in determined or ("product_all" in determined and "N" in determined):
            leaks.append("mean_all")
    return leaks


@given(tables)
def test_no_hidden_count_or_mean_can_be_recovered_from_the_published_cells(table):
    counts, means = table
    r, k = len(counts), len(counts[0])
    s, values, col_n, grand = _publish(counts, means)
    hidden = s.solve()
    # every small count is hidden
    assert all(hidden[key] for key, v in values.items() if 0 < v < MIN_CELL)
    leaks = _audit(hidden, values, col_n, means, grand, r, k)
    assert leaks == [], (counts, sorted(k_ for k_, h in hidden.items() if h))


def test_the_audit_catches_a_single_hidden_cell():
    """The checker is not vacuous: hiding only the small cell leaves it recoverable."""
    counts, means = [[3, 10], [8, 9]], [10.0, 20.0]
    s, values, col_n, grand = _publish(counts, means)
    hidden = {key: False for key in list(values) + [("mean", 0), ("mean", 1), "mean_all"]}
    hidden[("cell", 0, 0)] = True
    assert _audit(hidden, values, col_n, means, grand, 2, 2) == [("cell", 0, 0)]
    # hiding the small arm's n and mean but showing the overall mean gives the mean back
    hidden = {key: False for key in hidden}
    hidden[("mean", 0)] = True
    assert _audit(hidden, values, col_n, means, grand, 2, 2) == [("mean", 0)]
    # a cycle of four hidden cells protects the small one
    hidden = {key: False for key in hidden}
    for key in [("cell", 0, 0), ("cell", 0, 1), ("cell", 1, 0), ("cell", 1, 1)]:
        hidden[key] = True
    assert _audit(hidden, values, col_n, means, grand, 2, 2) == []


def test_the_example2_pattern_one_small_arm_is_protected():
    """Issue 16: one arm showed "< 5" and the total minus the other arm gave it back."""
    counts, means = [[4, 11]], [7.5, 9.0]
    s, values, col_n, grand = _publish(counts, means)
    hidden = s.solve()
    assert hidden[("cell", 0, 0)] and hidden[("cell", 0, 1)]
    assert _audit(hidden, values, col_n, means, grand, 1, 2) == []
