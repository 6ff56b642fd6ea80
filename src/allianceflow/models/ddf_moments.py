r"""REML moments of a linear mixed model for Satterthwaite and Kenward–Roger df.

:mod:`allianceflow.models.ddf` needs, at the REML estimate :math:`\hat\psi`, the GLS
pieces :math:`\Phi = (X^\top V^{-1}X)^{-1}` and :math:`\hat\beta`, and for every pair of
variance parameters

.. math::

    O_a = X^\top V^{-1} V_a V^{-1} X, \quad
    Q_{ab} = X^\top V^{-1} V_a V^{-1} V_b V^{-1} X, \quad
    \operatorname{tr}(V^{-1} V_a V^{-1} V_b), \quad \operatorname{tr}(V^{-1} V_a),

and the residual forms :math:`r^\top V_a V^{-1} V_b r`, :math:`r^\top V_a V^{-1} X`,
:math:`r^\top V_a r` with :math:`r = V^{-1}(y - X\hat\beta)`. Two functions compute
them and return the same dictionary:

- :func:`reml_moments` never forms an :math:`n_j \times n_j` matrix. With
  :math:`V = \sigma^2 I + Z G Z^\top` and :math:`G = \Lambda\Lambda^\top` (any square root,
  so a variance estimated as 0 is allowed), Woodbury's identity gives

  .. math::

      V^{-1} = \sigma^{-2}\,(I - Z K Z^\top), \qquad
      K = \Lambda\,(\sigma^2 I + \Lambda^\top Z^\top Z \Lambda)^{-1}\Lambda^\top,

  and every derivative :math:`V_a = \partial V/\partial\psi_a` is :math:`Z\Delta_a Z^\top`
  (:math:`\Delta_a` picks the variance or covariance *a* of its term at every level) or
  :math:`I` (the residual variance). With :math:`H = Z^\top Z`, :math:`\tilde X = [X, y]`
  and :math:`G_{z} = Z^\top\tilde X`, the products needed are

  .. math::

      B &= Z^\top V^{-1}\tilde X = \sigma^{-2}(G_z - HKG_z), &
      C &= Z^\top V^{-1} Z = \sigma^{-2}(H - HKH), \\
      B_2 &= Z^\top V^{-2}\tilde X = \sigma^{-2}(B - HKB), &
      C_2 &= Z^\top V^{-2} Z = \sigma^{-2}(C - HKC),

  so that :math:`\tilde X^\top V^{-1} V_a V^{-1} \tilde X = B^\top\Delta_a B`,
  :math:`\tilde X^\top V^{-1} V_a V^{-1} V_b V^{-1}\tilde X = B^\top \Delta_a C \Delta_b
  B`, :math:`\operatorname{tr}(V^{-1}V_aV^{-1}V_b) = \operatorname{tr}(C\Delta_a
  C\Delta_b)`, :math:`\operatorname{tr}(V^{-1}V_aV^{-1}) = \operatorname{tr}(\Delta_a
  C_2)`, :math:`\operatorname{tr}(V^{-1}) = \sigma^{-2}(n - \operatorname{tr}KH)`,
  :math:`\operatorname{tr}(V^{-2}) = \sigma^{-4}(n - 2\operatorname{tr}KH +
  \operatorname{tr}KHKH)`, and the residual-variance terms use :math:`\tilde X^\top
  V^{-2}\tilde X = \sigma^{-4}(\tilde X^\top\tilde X - 2G_z^\top K G_z + G_z^\top KHK
  G_z)`, :math:`\tilde X^\top V^{-3}\tilde X = \sigma^{-2}(\tilde X^\top V^{-2}\tilde X -
  B^\top K B)` and :math:`B^\top\Delta_a B_2`. The residual forms follow from the
  :math:`\tilde X` forms with the vector :math:`(-\hat\beta, 1)`, so one pass suffices; *y*
  is first replaced by its OLS residual (which leaves *r* unchanged) to avoid cancellation.
  *K*, *C* and :math:`C_2` are block diagonal, one dense :math:`q_j \times q_j` block per
  independent block *j* of *V* (:math:`q_j` random effects: with patients nested in
  therapists, one therapist intercept and the patients' effects), and blocks of similar
  size are processed together as batched dense arrays. Cost: :math:`O(\sum_j q_j^3)` time
  and memory bounded by about :math:`2^{19}` block entries per batch (times the number of
  variance parameters), against :math:`O(\sum_j n_j^3)` time and :math:`(m + 3) n_j^2`
  memory of the dense computation.
- :func:`dense_reml_moments` forms :math:`V_j` and :math:`V_j^{-1}` densely per block;
  it is the reference the fast path is tested against (tests/test_ddf.py: agreement to
  1e-8 relative).

References
----------
Henderson, H. V., & Searle, S. R. (1981). On deriving the inverse of a sum of matrices.
*SIAM Review, 23*(1), 53–60.
Kenward, M. G., & Roger, J. H. (1997). Small sample inference for fixed effects from
restricted maximum likelihood. *Biometrics, 53*(3), 983–997.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .blas import one_blas_thread

__all__ = ["reml_moments", "dense_reml_moments", "block_effects", "moments_memory"]

#: Block entries (blocks × size²) handled in one batch by :func:`reml_moments`.
BATCH_ENTRIES = 2**19

Term = tuple[np.ndarray, np.ndarray]  # (level codes per row, effect values n x k)
Parameter = tuple[int, int, int]  # (term index, effect a, effect b); a == b: a variance


def block_effects(terms: Sequence[Term], block_of_row: np.ndarray) -> np.ndarray:
    r"""The number of random effects :math:`q_j` of each independent block *j* of *V*.

    Every level of a term lies within one block; a term with *k* effects adds *k* columns
    of *Z* per level. With patients nested in therapists, :math:`q_j` is 1 + *k* × (the
    therapist's patients); with crossed factors there is one block of every level of every
    factor.

    >>> codes = np.array([0, 0, 1, 2, 2]), np.array([0, 0, 0, 1, 1])  # patients, therapists
    >>> block_effects([(codes[0], np.ones((5, 2))), (codes[1], np.ones((5, 1)))], codes[1])
    array([5, 3])
    """
    n_blocks = int(block_of_row.max()) + 1 if block_of_row.size else 1
    q = np.zeros(n_blocks, dtype=np.int64)
    for codes, values in terms:
        level_block = np.zeros(int(codes.max()) + 1, dtype=np.int64)
        level_block[codes] = block_of_row
        q += values.shape[1] * np.bincount(level_block, minlength=n_blocks)
    return q


def moments_memory(largest_block: int, n_parameters: int) -> int:
    r"""Bytes :func:`reml_moments` holds at its peak, an upper bound (float64 arrays).

    One batch of blocks holds about :math:`8 + 3 m_r` arrays of its
    :math:`c\,s^2` entries (*c* blocks padded to *s* random effects; :math:`m_r` random-effect
    parameters): eight :math:`s \times s` matrices per block (*H*, :math:`\Lambda`, the
    Woodbury core, *K*, *HK*, *C*, :math:`C_2` and a product in flight) and three of
    :math:`C\Delta_a` per parameter (gathered, masked, transposed). Batches are bounded by
    ``BATCH_ENTRIES`` entries unless one block alone has more, so the peak is
    :math:`8\,(8 + 3 m_r)\max(q_{\max}^2, 2^{19})` bytes. Measured with tracemalloc on
    single crossed blocks of 860 random effects, the peak of the whole
    :func:`~allianceflow.models.ddf.variance_structure` was 0.82 (2 parameters) and 0.77
    (4 parameters) of this bound. Time grows as :math:`q_{\max}^3`: about 0.4 CPU-s for
    one block of 860 effects.

    >>> round(moments_memory(3000, 2) / 2**30, 3)  # GiB
    0.939
    """
    return int(8 * (8 + 3 * n_parameters) * max(int(largest_block) ** 2, BATCH_ENTRIES))


def _term_covariances(
    psi: np.ndarray, terms: Sequence[Term], params: Sequence[Parameter]
) -> list[np.ndarray]:
    """The covariance matrix :math:`G_t` of each term's effects at one level."""
    covs = [np.zeros((values.shape[1],) * 2) for _, values in terms]
    for value, (t, a, b) in zip(psi, params, strict=False):
        covs[t][a, b] = covs[t][b, a] = value
    return covs


def _root(cov: np.ndarray) -> np.ndarray:
    r"""A square root :math:`\Lambda` with :math:`\Lambda\Lambda^\top` = *cov* (PSD)."""
    vals, vecs = np.linalg.eigh(cov)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def reml_moments(
    X: np.ndarray,
    y: np.ndarray,
    psi: np.ndarray,
    terms: Sequence[Term],
    params: Sequence[Parameter],
    block_of_row: np.ndarray,
) -> dict[str, np.ndarray]:
    r"""REML moments through Woodbury's identity, block by block in the random effects.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
        Fixed-effects design.
    y : numpy.ndarray, shape (n,)
        Response.
    psi : numpy.ndarray, shape (m,)
        Variance parameters: one per entry of *params*, then the residual variance.
    terms : sequence of (codes, values)
        Per random term: the level code of each row (0 .. L - 1) and the values of its
        *k* effects, shape (n, k) (a column of ones for an intercept).
    params : sequence of (term, a, b)
        Per random-effect parameter: its term and the effects whose variance (a == b) or
        covariance it is.
    block_of_row : numpy.ndarray, shape (n,)
        Independent block of *V* of each row (0 .. J - 1); every level of every term must
        lie within one block.

    Returns
    -------
    dict
        ``phi, beta, o (m, p, p), q (m, m, p, p), k_trace (m, m), s (m, m), u (m, p),
        tr_vinv_vj (m,), r_vj_r (m,)`` as described in the module docstring.
    """
    with one_blas_thread():
        return _reml_moments(X, y, psi, terms, params, block_of_row)


def _reml_moments(X, y, psi, terms, params, block_of_row) -> dict[str, np.ndarray]:
    n, p = X.shape
    m_r = len(params)
    m = m_r + 1
    sigma2 = float(psi[-1])
    beta0 = np.linalg.lstsq(X, y, rcond=None)[0]
    xa = np.column_stack([X, y - X @ beta0])  # [X, OLS residual]
    p1 = p + 1
    n_blocks = int(block_of_row.max()) + 1 if n else 1

    # random-effect columns ordered by (block, term, level, effect)
    blk, tt, lev, eff = [], [], [], []
    for t, (codes, values) in enumerate(terms):
        n_levels = int(codes.max()) + 1
        k = values.shape[1]
        level_block = np.zeros(n_levels, dtype=np.int64)
        level_block[codes] = block_of_row
        blk.append(np.repeat(level_block, k))
        tt.append(np.full(n_levels * k, t))
        lev.append(np.repeat(np.arange(n_levels), k))
        eff.append(np.tile(np.arange(k), n_levels))
    blk_all, tt_all = np.concatenate(blk), np.concatenate(tt)
    lev_all, eff_all = np.concatenate(lev), np.concatenate(eff)
    order = np.lexsort((eff_all, lev_all, tt_all, blk_all))
    n_cols = len(order)
    position = np.empty(n_cols, dtype=np.int64)
    position[order] = np.arange(n_cols)
    col_block = blk_all[order]
    sizes = np.bincount(col_block, minlength=n_blocks)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    col_local = np.arange(n_cols) - starts[col_block]
    col_of = []  # per term: (L, k) global column of each level and effect
    offset = 0
    for codes, values in terms:
        n_levels, k = int(codes.max()) + 1, values.shape[1]
        col_of.append(position[offset : offset + n_levels * k].reshape(n_levels, k))
        offset += n_levels * k

    # sparse Z, H = Z'Z and G_z = Z' [X, y]
    rows, cols, vals = [], [], []
    for (codes, values), cols_t in zip(terms, col_of, strict=True):
        for e in range(values.shape[1]):
            rows.append(np.arange(n))
            cols.append(cols_t[codes, e])
            vals.append(values[:, e])
    z = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_cols)
    )
    h = (z.T @ z).tocoo()
    gz = np.asarray(z.T @ xa)
    gxx = xa.T @ xa

    # Lambda (block diagonal per level) and, per parameter, Delta's partner column and mask
    roots = [_root(c) for c in _term_covariances(psi, terms, params)]
    lam_r, lam_c, lam_v = [], [], []
    for cols_t, root in zip(col_of, roots, strict=True):
        k = root.shape[0]
        for a in range(k):
            for b in range(k):
                if root[a, b] != 0.0:
                    lam_r.append(cols_t[:, a])
                    lam_c.append(cols_t[:, b])
                    lam_v.append(np.full(len(cols_t), root[a, b]))
    lam_r = np.concatenate(lam_r) if lam_r else np.zeros(0, dtype=np.int64)
    lam_c = np.concatenate(lam_c) if lam_c else np.zeros(0, dtype=np.int64)
    lam_v = np.concatenate(lam_v) if lam_v else np.zeros(0)
    partner = np.tile(np.arange(n_cols), (m_r, 1))
    mask = np.zeros((m_r, n_cols))
    for i, (t, a, b) in enumerate(params):
        ca, cb = col_of[t][:, a], col_of[t][:, b]
        partner[i, ca], partner[i, cb] = cb, ca
        mask[i, ca] = mask[i, cb] = 1.0

    # batches of blocks of similar size (padded to the largest in the batch)
    by_size = np.argsort(sizes, kind="stable")
    batches: list[np.ndarray] = []
    first = 0
    for i in range(1, n_blocks + 1):
        if i == n_blocks or (
            sizes[by_size[i]] > 1.25 * max(sizes[by_size[first]], 1)
            or (i - first + 1) * sizes[by_size[i]] ** 2 > BATCH_ENTRIES
        ):
            batches.append(by_size[first:i])
            first = i

    acc_o = np.zeros((m_r, p1, p1))
    acc_q = np.zeros((m_r * p1, m_r * p1))
    acc_qres = np.zeros((m_r, p1, p1))  # B' Delta_a B_2
    acc_k = np.zeros((m_r, m_r))
    acc_k_res = np.zeros(m_r)  # tr(Delta_a C_2)
    acc_tr = np.zeros(m_r)  # tr(Delta_a C)
    s1 = np.zeros((p1, p1))  # G_z' K G_z
    s2 = np.zeros((p1, p1))  # G_z' K H K G_z
    s3 = np.zeros((p1, p1))  # B' K B
    tr_kh = tr_khkh = 0.0
    slot = np.full(n_blocks, -1, dtype=np.int64)
    h_block = col_block[h.row]
    lam_block = col_block[lam_r]
    for batch in batches:
        c, s = len(batch), int(sizes[batch].max())
        if s == 0:
            continue
        slot[:] = -1
        slot[batch] = np.arange(c)
        hb = np.zeros((c, s, s))
        sel = slot[h_block] >= 0
        hb[slot[h_block[sel]], col_local[h.row[sel]], col_local[h.col[sel]]] = h.data[sel]
        lb = np.zeros((c, s, s))
        sel = slot[lam_block] >= 0
        lb[slot[lam_block[sel]], col_local[lam_r[sel]], col_local[lam_c[sel]]] = lam_v[sel]
        in_batch = np.flatnonzero(slot[col_block] >= 0)
        cs, cl = slot[col_block[in_batch]], col_local[in_batch]
        gb = np.zeros((c, s, p1))
        gb[cs, cl] = gz[in_batch]
        part = np.zeros((m_r, c, s), dtype=np.int64)
        part[:] = np.arange(s)
        part[:, cs, cl] = col_local[partner[:, in_batch]]
        msk = np.zeros((m_r, c, s))
        msk[:, cs, cl] = mask[:, in_batch]

        lt = lb.transpose(0, 2, 1)
        mmat = sigma2 * np.eye(s) + lt @ hb @ lb
        k = lb @ np.linalg.solve(mmat, lt)
        k = (k + k.transpose(0, 2, 1)) / 2.0
        hk = hb @ k
        b = (gb - hk @ gb) / sigma2
        cm = (hb - hk @ hb) / sigma2
        cm = (cm + cm.transpose(0, 2, 1)) / 2.0
        c2 = (cm - hk @ cm) / sigma2
        b2 = (b - hk @ b) / sigma2
        kg = k @ gb
        # sums over the batch: stack the blocks' rows and use one matrix product each
        flat = c * s
        s1 += gb.reshape(flat, p1).T @ kg.reshape(flat, p1)
        s2 += kg.reshape(flat, p1).T @ (hb @ kg).reshape(flat, p1)
        s3 += b.reshape(flat, p1).T @ (k @ b).reshape(flat, p1)
        tr_kh += float(np.einsum("cii->", hk))
        tr_khkh += float(np.sum(hk * hk.transpose(0, 2, 1)))

        # E_a = Delta_a B; C Delta_a (columns gathered from the partner, masked)
        e = msk[..., None] * np.take_along_axis(b[None], part[..., None], axis=2)
        e_2d = e.reshape(m_r, flat, p1)
        acc_o += b.reshape(flat, p1).T @ e_2d
        acc_qres += e_2d.transpose(0, 2, 1) @ b2.reshape(flat, p1)
        e_flat = e.transpose(1, 2, 0, 3).reshape(c, s, m_r * p1)
        acc_q += e_flat.reshape(flat, m_r * p1).T @ (cm @ e_flat).reshape(flat, m_r * p1)
        cd = msk[:, :, None, :] * np.take_along_axis(
            np.broadcast_to(cm, (m_r, c, s, s)), part[:, :, None, :], axis=3
        )
        acc_k += cd.reshape(m_r, -1) @ cd.transpose(0, 1, 3, 2).reshape(m_r, -1).T
        acc_tr += np.einsum("acii->a", cd)
        # tr(Delta_a C_2) = sum_i mask_a[i] C_2[partner_a[i], i]
        c2_partner = c2[np.arange(c)[None, :, None], part, np.arange(s)[None, None, :]]
        acc_k_res += np.einsum("aci,aci->a", msk, c2_partner)

    # assemble the m = m_r + 1 parameters (residual last) in the augmented [X, y] forms
    t1 = (gxx - s1) / sigma2
    t2 = (gxx - 2.0 * s1 + s2) / sigma2**2
    t3 = (t2 - s3) / sigma2
    o_aug = np.concatenate([acc_o, t2[None]])
    q_aug = np.empty((m, m, p1, p1))
    q_aug[:m_r, :m_r] = acc_q.reshape(m_r, p1, m_r, p1).transpose(0, 2, 1, 3)
    q_aug[:m_r, m_r] = acc_qres
    q_aug[m_r, :m_r] = acc_qres.transpose(0, 2, 1)
    q_aug[m_r, m_r] = t3
    k_trace = np.empty((m, m))
    k_trace[:m_r, :m_r] = acc_k
    k_trace[:m_r, m_r] = k_trace[m_r, :m_r] = acc_k_res
    k_trace[m_r, m_r] = (n - 2.0 * tr_kh + tr_khkh) / sigma2**2
    tr_vinv_vj = np.append(acc_tr, (n - tr_kh) / sigma2)

    phi = np.linalg.inv(t1[:p, :p])
    phi = (phi + phi.T) / 2.0
    shift = phi @ t1[:p, p]
    vec = np.append(-shift, 1.0)  # (X, y0) (-shift, 1) = y - X beta
    return {
        "phi": phi,
        "beta": beta0 + shift,
        "o": o_aug[:, :p, :p],
        "q": q_aug[:, :, :p, :p],
        "k_trace": k_trace,
        "s": np.einsum("i,abij,j->ab", vec, q_aug, vec),
        "u": np.einsum("i,aij->aj", vec, o_aug[:, :, :p]),
        "tr_vinv_vj": tr_vinv_vj,
        "r_vj_r": np.einsum("i,aij,j->a", vec, o_aug, vec),
    }


def dense_reml_moments(
    X: np.ndarray,
    y: np.ndarray,
    psi: np.ndarray,
    terms: Sequence[Term],
    params: Sequence[Parameter],
    block_of_row: np.ndarray,
) -> dict[str, np.ndarray]:
    """The same moments as :func:`reml_moments`, with dense :math:`V_j` per block.

    Memory :math:`(m + 3) n_j^2` doubles and time :math:`O(n_j^3)` per block; kept as the
    reference implementation.
    """
    n, p = X.shape
    m = len(psi)
    order = np.argsort(block_of_row, kind="stable")
    bounds = np.searchsorted(block_of_row[order], np.arange(int(block_of_row.max()) + 2))
    blocks = [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    xtvx = np.zeros((p, p))
    xtvy = np.zeros(p)
    per_block = []
    for idx in blocks:
        vj = []
        for t, a, b in params:
            codes, values = terms[t]
            same = codes[idx][:, None] == codes[idx][None, :]
            outer = np.outer(values[idx, a], values[idx, b])
            # d V / d variance = Z_a Z_a'; d V / d covariance = Z_a Z_b' + Z_b Z_a'
            vj.append(same * (outer if a == b else outer + outer.T))
        vj.append(np.eye(len(idx)))
        vj = np.array(vj)
        v = np.tensordot(psi, vj, axes=1)
        chol = np.linalg.cholesky(v)
        vinv = np.linalg.inv(chol)
        vinv = vinv.T @ vinv
        xb_ = X[idx]
        vx = vinv @ xb_
        xtvx += xb_.T @ vx
        xtvy += vx.T @ y[idx]
        per_block.append((idx, vj, vinv, vx))
    phi = np.linalg.inv(xtvx)
    phi = (phi + phi.T) / 2.0
    beta = phi @ xtvy

    o = np.zeros((m, p, p))
    q = np.zeros((m, m, p, p))
    k_trace = np.zeros((m, m))
    s = np.zeros((m, m))
    u = np.zeros((m, p))
    tr_vinv_vj = np.zeros(m)
    r_vj_r = np.zeros(m)
    for idx, vj, vinv, vx in per_block:
        r = vinv @ (y[idx] - X[idx] @ beta)
        nb = len(idx)
        a = vinv @ vj  # V^-1 V_j, shape (m, nb, nb)
        avx = a @ vx  # V^-1 V_j V^-1 X
        vjvx = vj @ vx  # V_j V^-1 X
        o += vx.T @ vjvx
        # Q_ab = (V_a V^-1 X)' V^-1 V_b V^-1 X for every pair (a, b)
        q += (
            (vjvx.transpose(0, 2, 1).reshape(m * p, nb) @ avx.transpose(1, 0, 2).reshape(nb, m * p))
            .reshape(m, p, m, p)
            .transpose(0, 2, 1, 3)
        )
        # tr(V^-1 V_a V^-1 V_b) = sum_ij a_a[i, j] a_b[j, i]
        k_trace += a.reshape(m, nb * nb) @ a.transpose(0, 2, 1).reshape(m, nb * nb).T
        vr = vj @ r  # V_j r
        s += vr @ vinv @ vr.T
        u += vr @ vx
        tr_vinv_vj += np.einsum("mii->m", a)
        r_vj_r += vr @ r
    return {
        "phi": phi,
        "beta": beta,
        "o": o,
        "q": q,
        "k_trace": k_trace,
        "s": s,
        "u": u,
        "tr_vinv_vj": tr_vinv_vj,
        "r_vj_r": r_vj_r,
    }
