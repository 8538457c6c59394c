"""Pair-counting and information measures between two labelings of the same pixels.

* adjusted Rand index (Hubert & Arabie 1985), equal to ``sklearn.metrics.adjusted_rand_score``;
* adapted Rand error (SNEMI3D) and variation of information (Meilă 2007), equal to
  ``skimage.metrics.adapted_rand_error`` / ``variation_of_information``, from a sparse
  contingency table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import sparse


def _compact(values: np.ndarray) -> tuple[np.ndarray, int]:
    _, inv = np.unique(values, return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if inv.size else 0


def adjusted_rand_index(
    gt_labels: np.ndarray, pred_labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Adjusted Rand index of two labelings, every label value a cluster (0 included).

    Args:
        gt_labels: (...) int labels.
        pred_labels: same shape.
        mask: optional bool, same shape; only ``True`` pixels are compared.

    Returns:
        ARI in [-1, 1]; 1.0 when both labelings agree on every pair (including when there are
        fewer than two pixels). Equal to ``sklearn.metrics.adjusted_rand_score``.
    """
    a = np.asarray(gt_labels)
    b = np.asarray(pred_labels)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} != labels shape {a.shape}")
        a, b = a[mask], b[mask]
    a, na = _compact(a.ravel())
    b, nb = _compact(b.ravel())
    n = a.size
    if n < 2:
        return 1.0
    table = np.bincount(a.astype(np.int64) * nb + b, minlength=na * nb).reshape(na, nb)
    # pair counts as Python ints: products overflow int64 on large images
    same_both = int((table * (table - 1)).sum()) // 2
    same_a = int((np.bincount(a) * (np.bincount(a) - 1)).sum()) // 2
    same_b = int((np.bincount(b) * (np.bincount(b) - 1)).sum()) // 2
    pairs = n * (n - 1) // 2
    expected = same_a * same_b / pairs
    maximum = (same_a + same_b) / 2
    if maximum == expected:  # both labelings trivial (one cluster, or all singletons)
        return 1.0
    return float((same_both - expected) / (maximum - expected))


# -- adapted Rand error and variation of information (scikit-image's definitions) ------------


def contingency_table(
    gt_labels: np.ndarray, pred_labels: np.ndarray, ignore_labels: Iterable[int] = ()
) -> sparse.csr_array:
    """Sparse (n_gt_labels, n_pred_labels) pixel counts of every (gt label, pred label) pair.

    Rows and columns follow the sorted distinct label values (background included); pixels whose
    ground-truth label is in ``ignore_labels`` are not counted.
    """
    a = np.asarray(gt_labels).ravel()
    b = np.asarray(pred_labels).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in size: {a.size} vs {b.size}")
    ignore = list(ignore_labels)
    if ignore:
        keep = ~np.isin(a, ignore)
        a, b = a[keep], b[keep]
    a, na = _compact(a)
    b, nb = _compact(b)
    return sparse.csr_array(
        (np.ones(a.size, np.int64), (a.astype(np.intp), b.astype(np.intp))), shape=(na, nb)
    )


def _cells(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-zero cell counts, row sums, column sums) of a contingency table, float64."""
    if sparse.issparse(table):
        t = sparse.csr_array(table)
        t.sum_duplicates()
        cells = t.data.astype(np.float64)
        rows = np.asarray(t.sum(axis=1), np.float64).ravel()
        cols = np.asarray(t.sum(axis=0), np.float64).ravel()
    else:
        t = np.asarray(table, np.float64)
        cells = t[t != 0]
        rows, cols = t.sum(1), t.sum(0)
    return cells[cells != 0], rows[rows != 0], cols[cols != 0]


def rand_vi_from_cells(
    cells: np.ndarray, rows: np.ndarray, cols: np.ndarray, alpha: float = 0.5
) -> dict[str, float]:
    """Adapted Rand error and VI from the non-zero counts of a contingency table.

    ``rows`` are the ground-truth segment sizes, ``cols`` the predicted ones (the marginals of
    ``cells``). Returns ``ARE, ARE_precision, ARE_recall`` (scikit-image's
    ``adapted_rand_error``, whose "precision" divides by the ground-truth pairs) and
    ``VI_split = H(pred | gt)``, ``VI_merge = H(gt | pred)``, ``VI`` their sum (bits).
    Where scikit-image divides 0 by 0 (no pixel pair in a segmentation) the ratio is 1.0.
    """
    cells = np.asarray(cells, np.float64)
    rows = np.asarray(rows, np.float64)
    cols = np.asarray(cols, np.float64)
    n = cells.sum()
    sum_p = cells @ cells - n
    sum_a = rows @ rows - n  # ground truth
    sum_b = cols @ cols - n  # prediction
    den = alpha * sum_a + (1 - alpha) * sum_b
    out = {
        "ARE": 1.0 - (sum_p / den if den > 0 else 1.0),
        "ARE_precision": sum_p / sum_a if sum_a > 0 else 1.0,
        "ARE_recall": sum_p / sum_b if sum_b > 0 else 1.0,
    }
    if n > 0:
        p = cells / n
        h_rows = -(rows / n) @ np.log2(rows / n)
        h_cols = -(cols / n) @ np.log2(cols / n)
        h_joint = -(p @ np.log2(p))
        split, merge = max(h_joint - h_rows, 0.0), max(h_joint - h_cols, 0.0)
    else:
        split = merge = 0.0
    out["VI_split"], out["VI_merge"] = float(split), float(merge)
    out["VI"] = out["VI_split"] + out["VI_merge"]
    return {k: float(v) for k, v in out.items()}


def adapted_rand_error(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    ignore_labels: Iterable[int] = (0,),
    alpha: float = 0.5,
) -> tuple[float, float, float]:
    """(error, precision, recall) of the adapted Rand index (SNEMI3D, Arganda-Carreras et al.
    2015), equal to ``skimage.metrics.adapted_rand_error``.

    error = 1 - Σ n_ij² / (α Σ a_i² + (1-α) Σ b_j²) with pair counts (n² - n) and a_i the
    ground-truth, b_j the predicted segment sizes; pixels whose ground-truth label is in
    ``ignore_labels`` (the background by default) are left out. precision = Σ n_ij² / Σ a_i²,
    recall = Σ n_ij² / Σ b_j², named as scikit-image names them.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    r = rand_vi_from_cells(*_cells(contingency_table(gt_labels, pred_labels, ignore_labels)), alpha)
    return r["ARE"], r["ARE_precision"], r["ARE_recall"]


def variation_of_information(
    gt_labels: np.ndarray, pred_labels: np.ndarray, *, ignore_labels: Iterable[int] = ()
) -> np.ndarray:
    """[H(pred | gt), H(gt | pred)] in bits (false splits, false merges), equal to
    ``skimage.metrics.variation_of_information``; VI is their sum (Meilă 2007). Pixels whose
    ground-truth label is in ``ignore_labels`` are left out."""
    r = rand_vi_from_cells(*_cells(contingency_table(gt_labels, pred_labels, ignore_labels)))
    return np.array([r["VI_split"], r["VI_merge"]])


def partition_cells(
    inter: np.ndarray,
    gt_area: np.ndarray,
    pred_area: np.ndarray,
    pred_on_gt_bg: np.ndarray,
    bg_bg: int,
    gt_background: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells and marginals of the contingency table of two disjoint instance sets.

    Rows: the ground-truth background (when ``gt_background``) and the G instances; columns:
    the predicted background and the P instances. ``pred_on_gt_bg`` (P,) are the pixels of each
    prediction on ground-truth background, ``bg_bg`` the pixels background on both sides.
    Dropping the background row (``gt_background=False``) is scikit-image's
    ``ignore_labels=(0,)``; dropping a ground-truth instance's row ignores its pixels.
    """
    inter = np.asarray(inter, np.int64)
    gt_area = np.asarray(gt_area, np.int64)
    g, p = inter.shape
    gt_to_bg = gt_area - inter.sum(1)
    table = np.zeros((g + 1, p + 1), np.int64) if g * p <= 1 << 20 else None
    if table is not None:
        table[1:, 1:] = inter
        table[1:, 0] = gt_to_bg
        if gt_background:
            table[0, 1:] = pred_on_gt_bg
            table[0, 0] = bg_bg
        else:
            table = table[1:]
        return _cells(table)
    rr, cc = np.nonzero(inter)
    rows = [rr + 1, np.arange(1, g + 1)]
    cols = [cc + 1, np.zeros(g, np.int64)]
    vals = [inter[rr, cc], gt_to_bg]
    if gt_background:
        rows += [np.zeros(p + 1, np.int64)]
        cols += [np.arange(p + 1)]
        vals += [np.concatenate([[bg_bg], np.asarray(pred_on_gt_bg, np.int64)])]
    t = sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(g + 1, p + 1)
    )
    return _cells(t)
