"""The overlap table between a ground-truth and a predicted instance set.

Every instance metric in :mod:`instembed.metrics` is computed from one :class:`OverlapTable`:
pixel counts of the intersection of each ground-truth instance with each predicted instance,
the area of each instance, and the number of predicted pixels that fall on void (ignored)
pixels. Nothing later looks at pixels again.

Instance sets come in two forms (the project's label convention):

* a **label image** of any shape (``(H, W)`` usually, ``(D, H, W)`` works too when the other
  side is a label image as well) with an integer dtype, ``0`` = background, other values =
  instance ids (need not be consecutive);
* a **mask stack** ``(N, H, W)`` of ``bool`` for objects that may overlap.

A 3-D boolean array is always read as a mask stack; a 3-D integer array as a label volume.

Void pixels (the ``ignore`` mask) are removed from every instance before counting: areas and
intersections are counted on the evaluated pixels only, and ``pred_void`` keeps, per predicted
instance, how many of its pixels were removed. Removing void pixels from both sides is exactly
panopticapi's rule "void pixels are not part of the union" (Kirillov et al. 2019).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

# dense bincount tables above this many cells fall back to np.unique on the paired codes
_MAX_DENSE_CELLS = 1 << 23


@dataclass
class OverlapTable:
    """Pixel counts between G ground-truth and P predicted instances of one image.

    Attributes:
        gt_ids: (G,) int64 id of each ground-truth instance (label value, or stack index + 1).
        pred_ids: (P,) int64 id of each predicted instance.
        inter: (G, P) int64 evaluated pixels in both instances.
        gt_area: (G,) int64 evaluated pixels of each ground-truth instance.
        pred_area: (P,) int64 evaluated pixels of each predicted instance.
        pred_void: (P,) int64 pixels of each predicted instance that lie on void.
        gt_void: (G,) int64 pixels of each ground-truth instance that lie on void.
        fg_inter: evaluated pixels in the foreground (union of instances) of both sides.
        gt_fg: evaluated foreground pixels of the ground truth.
        pred_fg: evaluated foreground pixels of the prediction.
        n_pixels: evaluated pixels (not void) in the image.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    inter: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pred_void: np.ndarray
    gt_void: np.ndarray
    fg_inter: int
    gt_fg: int
    pred_fg: int
    n_pixels: int

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def union(self) -> np.ndarray:
        """(G, P) int64 evaluated pixels in either instance (void removed)."""
        return self.gt_area[:, None] + self.pred_area[None, :] - self.inter

    def iou(self) -> np.ndarray:
        """(G, P) float64 intersection over union; 0 where the union is empty."""
        union = self.union()
        out = np.zeros(self.inter.shape, np.float64)
        np.divide(self.inter, union, out=out, where=union > 0)
        return out

    def select(self, gt: np.ndarray | None = None, pred: np.ndarray | None = None) -> OverlapTable:
        """Table restricted to the ground-truth / predicted instances at the given indices.

        The foreground counts are kept as they are (they describe the whole image).
        """
        gi = np.arange(self.n_gt) if gt is None else np.asarray(gt)
        pi = np.arange(self.n_pred) if pred is None else np.asarray(pred)
        return OverlapTable(
            gt_ids=self.gt_ids[gi],
            pred_ids=self.pred_ids[pi],
            inter=self.inter[np.ix_(gi, pi)],
            gt_area=self.gt_area[gi],
            pred_area=self.pred_area[pi],
            pred_void=self.pred_void[pi],
            gt_void=self.gt_void[gi],
            fg_inter=self.fg_inter,
            gt_fg=self.gt_fg,
            pred_fg=self.pred_fg,
            n_pixels=self.n_pixels,
        )


def as_instances(instances: np.ndarray, name: str = "instances") -> np.ndarray:
    """Check an instance set and return it as a label image (int) or a mask stack (bool).

    Raises ``ValueError`` naming ``name`` when the array is neither.
    """
    arr = np.asarray(instances)
    if arr.dtype == bool:
        if arr.ndim != 3:
            raise ValueError(
                f"{name}: a boolean instance set must be a mask stack (N, H, W), got shape "
                f"{arr.shape}"
            )
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name}: expected an integer label image (0 = background) or a bool mask stack "
            f"(N, H, W), got dtype {arr.dtype}"
        )
    if arr.ndim < 1:
        raise ValueError(f"{name}: expected a label image, got a scalar")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: label image has negative ids (min {arr.min()})")
    return arr


def is_stack(instances: np.ndarray) -> bool:
    """True for a boolean mask stack (N, H, W)."""
    return instances.dtype == bool


def spatial_shape(instances: np.ndarray) -> tuple[int, ...]:
    """Shape of the image an instance set lives on (drops the stack axis)."""
    return tuple(instances.shape[1:]) if is_stack(instances) else tuple(instances.shape)


def instance_ids(instances: np.ndarray) -> np.ndarray:
    """(N,) int64 ids of the instances, sorted (label values > 0, or 1..N for a stack)."""
    if is_stack(instances):
        return np.arange(1, instances.shape[0] + 1, dtype=np.int64)
    flat = instances.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        return np.flatnonzero(counts[1:]).astype(np.int64) + 1
    ids = np.unique(flat).astype(np.int64)
    return ids[ids > 0]


def per_instance(
    values: Sequence | Mapping | np.ndarray | None,
    ids: np.ndarray,
    default,
    name: str,
    dtype=np.float64,
) -> np.ndarray:
    """Align per-instance values with ``ids``.

    ``values`` is ``None`` (all ``default``), a mapping ``{id: value}`` (ids missing from it get
    ``default``), or a sequence with one value per instance in the order of ``ids`` (sorted
    label ids, or stack order).
    """
    if values is None:
        return np.full(ids.shape, default, dtype)
    if isinstance(values, Mapping):
        out = np.full(ids.shape, default, dtype)
        lookup = {int(k): v for k, v in values.items()}
        for i, k in enumerate(ids.tolist()):
            if k in lookup:
                out[i] = lookup[k]
        return out
    arr = np.asarray(values, dtype)
    if arr.shape != ids.shape:
        raise ValueError(
            f"{name}: expected one value per instance ({ids.size} instances, ids "
            f"{ids[:8].tolist()}{'...' if ids.size > 8 else ''}), got shape {arr.shape}"
        )
    return arr


def _compact(flat: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map label values to 0 (background) and 1..N (position in ``ids`` + 1)."""
    if ids.size == 0:
        return np.zeros(flat.shape, np.intp)
    top = int(ids[-1])
    if top == ids.size:  # already consecutive 1..N
        return flat.astype(np.intp, copy=False)
    if top <= 4 * flat.size + 1024:
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat]
    return np.searchsorted(ids, flat).astype(np.intp) + 1 - (flat == 0)


def _pair_counts(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> np.ndarray:
    """(na+1, nb+1) int64 counts of each (a, b) pair of compact ids."""
    cells = (na + 1) * (nb + 1)
    code = a.astype(np.int64, copy=False) * (nb + 1) + b
    if cells <= max(_MAX_DENSE_CELLS, 4 * code.size):
        return np.bincount(code, minlength=cells).reshape(na + 1, nb + 1)
    keys, counts = np.unique(code, return_counts=True)
    table = np.zeros((na + 1, nb + 1), np.int64)
    table[keys // (nb + 1), keys % (nb + 1)] = counts
    return table


def _labels_table(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None) -> OverlapTable:
    gt_ids, pred_ids = instance_ids(gt), instance_ids(pred)
    g = _compact(gt.ravel(), gt_ids)
    p = _compact(pred.ravel(), pred_ids)
    ng, npr = gt_ids.size, pred_ids.size
    if ignore is None:
        table = _pair_counts(g, p, ng, npr)
        void = np.zeros_like(table)
    else:
        # one pass: void pixels go to a second (ng+1, npr+1) block
        shifted = g + ignore.ravel().astype(np.intp) * (ng + 1)
        both = _pair_counts(shifted, p, 2 * ng + 1, npr)
        table, void = both[: ng + 1], both[ng + 1 :]
    return OverlapTable(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        inter=np.ascontiguousarray(table[1:, 1:]),
        gt_area=table[1:, :].sum(1),
        pred_area=table[:, 1:].sum(0),
        pred_void=void[:, 1:].sum(0),
        gt_void=void[1:, :].sum(1),
        fg_inter=int(table[1:, 1:].sum()),
        gt_fg=int(table[1:, :].sum()),
        pred_fg=int(table[:, 1:].sum()),
        n_pixels=int(table.sum()),
    )


def _as_sparse(instances: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """(pixels, N) 0/1 sparse matrix of an instance set, and its ids."""
    ids = instance_ids(instances)
    if is_stack(instances):
        n = instances.shape[0]
        npix = int(np.prod(instances.shape[1:]))
        inst, pix = np.nonzero(instances.reshape(n, npix))
    else:
        flat = instances.ravel()
        pix = np.flatnonzero(flat)
        inst = _compact(flat[pix], ids) - 1
        npix = flat.size
        n = ids.size
    data = np.ones(pix.size, np.int64)
    mat = sparse.csr_matrix((data, (pix, inst)), shape=(npix, n))
    return mat, ids


def _sparse_table(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None) -> OverlapTable:
    gm, gt_ids = _as_sparse(gt)
    pm, pred_ids = _as_sparse(pred)
    npix = gm.shape[0]
    keep = np.ones(npix, bool) if ignore is None else ~ignore.ravel()
    gk, pk = gm[keep], pm[keep]
    gv, pv = gm[~keep], pm[~keep]
    inter = np.asarray((gk.T @ pk).todense(), np.int64).reshape(gt_ids.size, pred_ids.size)
    gt_fg_pix = np.asarray(gk.sum(1)).ravel() > 0
    pred_fg_pix = np.asarray(pk.sum(1)).ravel() > 0
    return OverlapTable(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        inter=inter,
        gt_area=np.asarray(gk.sum(0), np.int64).ravel(),
        pred_area=np.asarray(pk.sum(0), np.int64).ravel(),
        pred_void=np.asarray(pv.sum(0), np.int64).ravel(),
        gt_void=np.asarray(gv.sum(0), np.int64).ravel(),
        fg_inter=int(np.count_nonzero(gt_fg_pix & pred_fg_pix)),
        gt_fg=int(np.count_nonzero(gt_fg_pix)),
        pred_fg=int(np.count_nonzero(pred_fg_pix)),
        n_pixels=int(np.count_nonzero(keep)),
    )


def overlap_table(
    gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None
) -> OverlapTable:
    """Count the overlap between two instance sets of one image.

    Args:
        gt: ground truth, label image (H, W) int (0 = background) or mask stack (N, H, W) bool.
        pred: prediction, same two forms.
        ignore: optional (H, W) bool, ``True`` = void pixel (not evaluated).

    Returns:
        The :class:`OverlapTable`. Label images go through one ``np.bincount`` on paired ids;
        a mask stack on either side goes through a sparse (pixels x instances) product.
    """
    gt = as_instances(gt, "gt")
    pred = as_instances(pred, "pred")
    gshape, pshape = spatial_shape(gt), spatial_shape(pred)
    if gshape != pshape:
        raise ValueError(f"gt and pred cover different images: gt {gshape}, pred {pshape}")
    if ignore is not None:
        ignore = np.asarray(ignore)
        if ignore.shape != gshape:
            raise ValueError(f"ignore mask has shape {ignore.shape}, expected {gshape}")
        ignore = ignore.astype(bool, copy=False)
        if not ignore.any():
            ignore = None
    if is_stack(gt) or is_stack(pred):
        return _sparse_table(gt, pred, ignore)
    return _labels_table(gt, pred, ignore)
