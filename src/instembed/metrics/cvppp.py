"""Leaf-segmentation metrics of the CVPPP challenge (Scharr et al. 2016, "Leaf segmentation in
plant phenotyping: a collation study"): BestDice, Symmetric Best Dice, foreground Dice and the
difference in count. The behaviour matched is the challenge's ``evaluate.py``
(``BestDice``, ``SymmetricBestDice``, ``FGBGDice``, ``DiffFGLabels``), including its choices for
empty label images: BestDice(A, B) is 0 when A has no object, and a Dice with two empty sets is 0.
"""

from __future__ import annotations

import numpy as np

from instembed.metrics.overlap import OverlapTable


def dice_matrix(table: OverlapTable) -> np.ndarray:
    """(G, P) float64 Dice = 2|A∩B| / (|A| + |B|) of every pair; 0 where both areas are 0."""
    den = table.gt_area[:, None] + table.pred_area[None, :]
    out = np.zeros(table.inter.shape, np.float64)
    np.divide(2.0 * table.inter, den, out=out, where=den > 0)
    return out


def best_dice(dice: np.ndarray) -> float:
    """BestDice(A, B) = mean over objects a of A of max over objects b of B of Dice(a, b).

    ``dice`` is (|A|, |B|). 0 when A is empty; 0 for each a when B is empty (CVPPP).
    """
    if dice.shape[0] == 0:
        return 0.0
    if dice.shape[1] == 0:
        return 0.0
    return float(dice.max(1).mean())


def cvppp_scores(table: OverlapTable) -> dict[str, float]:
    """SBD, BestDice both ways, FBD, DiC and |DiC| of one image.

    ``BestDice_gt_pred`` averages over ground-truth objects (how well each is found),
    ``BestDice_pred_gt`` over predicted objects; SBD is their minimum. DiC = #pred - #gt.
    """
    d = dice_matrix(table)
    bd_gp = best_dice(d)
    bd_pg = best_dice(d.T)
    fg_den = table.gt_fg + table.pred_fg
    fbd = 2.0 * table.fg_inter / fg_den if fg_den > 0 else 0.0
    dic = table.n_pred - table.n_gt
    return {
        "SBD": min(bd_gp, bd_pg),
        "BestDice_gt_pred": bd_gp,
        "BestDice_pred_gt": bd_pg,
        "FBD": float(fbd),
        "DiC": float(dic),
        "absDiC": float(abs(dic)),
    }
