"""Instance-sensitive fully convolutional networks (Dai et al. 2016, "Instance-sensitive Fully
Convolutional Networks"): k x k relative-position score maps, an assembling module and a
per-window objectness score (see docs/instance_fcn.md for the choices taken and why).

The network is a backbone of :data:`~instembed.models.build.BACKBONES` (default a small U-Net)
with one decoder whose 1x1 head gives two heads:

* ``k * k`` **instance-sensitive score maps** (logits), shared by every window size: map
  ``i * k + j`` says "this pixel is in the (i, j)-th part of an object";
* an **objectness map** with one channel per window size ``m`` of ``window_sizes``: channel
  ``s`` at pixel ``(y, x)`` is the logit that the ``m_s x m_s`` window centred at ``(y, x)``
  holds an object centred in it (the report's rule, :func:`window_labels`).

**Windows.** A window of size ``m`` is named by its centre pixel ``(cy, cx)``; it covers rows
``cy - m // 2 ... cy - m // 2 + m - 1`` (same for columns), so its geometric centre is
``cy - m // 2 + (m - 1) / 2`` (``cy`` itself for odd ``m``). Windows may reach past the image
border; the pixels outside are not part of any mask (``valid`` False).

**Assembling** (:func:`assemble_windows`, vectorised with one gather): the window's ``k x k``
sub-windows each copy the matching region of the matching score map: window pixel ``(a, b)``
(``0 <= a, b < m``) lies in sub-window ``(i, j) = (a * k // m, b * k // m)`` and takes
score map ``i * k + j`` at image pixel ``(y0 + a, x0 + b)``.

**Training** (``targets`` given): per image, 256 windows (``windows_per_image``) over all sizes
and centres, up to 128 (``max_positive``) positive ones drawn at random, the rest negative ones
drawn at random; ``aux`` gets their objectness logits and labels, and the assembled mask logits
of the positive windows with the object's mask in that window as target (pixels outside the
image or on ``ignore`` pixels left out). The loss (``instembed.losses.isfcn``) is logistic on
both.

**Inference** (every call): windows centred on a grid of ``stride`` pixels at every window
size, the ``max_candidates`` best by objectness (at least ``min_score``), their assembled
masks (sigmoid) pasted at their place as soft masks: ``Outputs.instances`` are the raw
candidates; the ``"detections"`` post-processing (score threshold, mask NMS, mask threshold)
gives the final instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from instembed.models.blocks import crop_to, pad_to_multiple
from instembed.structures import Instances, Outputs

ISFCN_PARAM_TYPES = {
    "backbone": str,
    "k": int,
    "window_sizes": list[int],
    "margin": float,
    "min_fill": float,
    "windows_per_image": int,
    "max_positive": int,
    "stride": int,
    "max_candidates": int,
    "min_score": float,
}
"""Types of the ``isfcn`` family's parameters (checked on config load)."""


# --------------------------------------------------------------------------- assembling
def part_index(m: int, k: int, device: torch.device | None = None) -> Tensor:
    """(m, m) int64: the score map each pixel of an ``m x m`` window copies,
    ``(a * k // m) * k + (b * k // m)`` for window pixel ``(a, b)``."""
    part = torch.arange(m, device=device) * k // m
    return part[:, None] * k + part[None, :]


def window_pixels(tops: Tensor, m: int, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Image pixels of windows with top-left corners ``tops`` (N, 2) ``(y0, x0)``: ``ys``
    (N, m, m), ``xs`` (N, m, m) clamped into the image, and ``valid`` (N, m, m), False where the
    window lies outside the image."""
    h, w = size
    a = torch.arange(m, device=tops.device)
    ys = (tops[:, 0, None, None] + a[None, :, None]).expand(-1, m, m)
    xs = (tops[:, 1, None, None] + a[None, None, :]).expand(-1, m, m)
    valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    return ys.clamp(0, h - 1), xs.clamp(0, w - 1), valid


def assemble_windows(maps: Tensor, tops: Tensor, m: int, k: int) -> tuple[Tensor, Tensor]:
    """The assembling module: ``m x m`` windows assembled from ``k * k`` score maps.

    Args:
        maps: (k*k, H, W) score maps of one image (logits or probabilities).
        tops: (N, 2) int64 top-left pixels ``(y0, x0)`` of the windows (may lie outside).
        m: window size; k: parts per side.

    Returns:
        ``values`` (N, m, m): ``values[n, a, b] = maps[(a*k//m)*k + b*k//m, y0 + a, x0 + b]``
        (0 outside the image), and ``valid`` (N, m, m) bool (inside the image). Differentiable
        with respect to ``maps``.
    """
    if maps.dim() != 3 or maps.shape[0] != k * k:
        raise ValueError(f"maps must be (k*k={k * k}, H, W), got {list(maps.shape)}")
    if m < k:
        raise ValueError(f"window size m={m} must be >= k={k}")
    h, w = maps.shape[-2:]
    tops = tops.to(device=maps.device, dtype=torch.long).reshape(-1, 2)
    ys, xs, valid = window_pixels(tops, m, (h, w))
    chan = part_index(m, k, maps.device)[None]  # (1, m, m)
    flat = (chan * h + ys) * w + xs  # (N, m, m) into maps.reshape(-1)
    values = maps.reshape(-1)[flat]
    return torch.where(valid, values, torch.zeros_like(values)), valid


def centre_grid(
    size: tuple[int, int], stride: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Window centres of dense inference: rows and columns every ``stride`` pixels, the grid
    centred in the image (``(H - 1) % stride // 2`` first)."""
    h, w = size
    ys = torch.arange((h - 1) % stride // 2, h, stride, device=device)
    xs = torch.arange((w - 1) % stride // 2, w, stride, device=device)
    return ys, xs


# --------------------------------------------------------------------------- window labels
def object_geometry(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centroids (N, 2) ``(y, x)`` float, boxes (N, 4) ``(x1, y1, x2, y2)`` (pixel edges) and
    areas (N,) of an (N, H, W) bool mask stack (empty masks: centroid 0, box 0, area 0)."""
    n, h, w = masks.shape
    m = masks.to(torch.float32)
    area = m.flatten(1).sum(1)
    rows, cols = m.sum(2), m.sum(1)  # (N, H), (N, W)
    ar_h = torch.arange(h, device=masks.device, dtype=torch.float32)
    ar_w = torch.arange(w, device=masks.device, dtype=torch.float32)
    cy = (rows * ar_h).sum(1) / area.clamp(min=1)
    cx = (cols * ar_w).sum(1) / area.clamp(min=1)
    r, c = rows > 0, cols > 0
    big = float(max(h, w) + 1)
    y1 = torch.where(r, ar_h, big).amin(1) if n else ar_h[:0]
    y2 = torch.where(r, ar_h, -1.0).amax(1) + 1 if n else ar_h[:0]
    x1 = torch.where(c, ar_w, big).amin(1) if n else ar_w[:0]
    x2 = torch.where(c, ar_w, -1.0).amax(1) + 1 if n else ar_w[:0]
    boxes = torch.stack([x1, y1, x2, y2], 1).reshape(n, 4)
    boxes = torch.where((area > 0)[:, None], boxes, torch.zeros_like(boxes))
    return torch.stack([cy, cx], 1).reshape(n, 2), boxes, area


def window_labels(
    masks: Tensor,
    m: int,
    *,
    margin: float = 0.125,
    min_fill: float = 0.5,
    smallest: bool = False,
) -> Tensor:
    """Which object each ``m x m`` window is positive for: (H, W) int64 object index (into
    ``masks``) per window centre pixel, -1 for a negative window.

    The rule (the report's "an object is centred in the window"): the window centred at pixel
    ``(cy, cx)`` (rows ``y0 = cy - m // 2`` to ``y0 + m - 1``, geometric centre
    ``gy = y0 + (m - 1) / 2``; the same for columns) is positive for object ``j`` when

    1. **centred**: its centroid (centre of mass of the mask) lies within ``margin * m`` pixels
       of the window's geometric centre along each axis: ``|c_y - gy| <= margin * m`` and
       ``|c_x - gx| <= margin * m``;
    2. **fits**: its bounding box lies inside the window: ``y0 <= y1`` and ``y2 <= y0 + m``
       (the same for x; pixel edges);
    3. **in scale**: its larger box side is at least ``min_fill * m`` (the window is not far
       too large for it) -- waived when ``smallest`` (the smallest window size takes every
       object too small for the others).

    Several objects passing: the one whose centroid is nearest the window centre (the lower
    index on ties). Empty masks are never positive.

    Args:
        masks: (N, H, W) bool object masks of one image.
        m: window size.
    """
    n, h, w = masks.shape
    dev = masks.device
    out = torch.full((h, w), -1, dtype=torch.long, device=dev)
    if n == 0:
        return out
    cen, boxes, area = object_geometry(masks)
    half = m // 2
    tol = float(margin) * m + 1e-6
    gy = torch.arange(h, device=dev, dtype=torch.float32) - half + (m - 1) / 2  # (H,)
    gx = torch.arange(w, device=dev, dtype=torch.float32) - half + (m - 1) / 2  # (W,)
    y0 = torch.arange(h, device=dev, dtype=torch.float32) - half
    x0 = torch.arange(w, device=dev, dtype=torch.float32) - half
    dy = cen[:, 0, None] - gy[None]  # (N, H)
    dx = cen[:, 1, None] - gx[None]  # (N, W)
    ok_y = (dy.abs() <= tol) & (boxes[:, 1, None] >= y0) & (boxes[:, 3, None] <= y0 + m)
    ok_x = (dx.abs() <= tol) & (boxes[:, 0, None] >= x0) & (boxes[:, 2, None] <= x0 + m)
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ok_obj = area > 0
    if not smallest:
        ok_obj &= side >= float(min_fill) * m - 1e-6
    pos = ok_y[:, :, None] & ok_x[:, None, :] & ok_obj[:, None, None]  # (N, H, W)
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
    d2 = torch.where(pos, d2, torch.full_like(d2, float("inf")))
    best = d2.argmin(0)  # first minimum: the lower index on ties
    return torch.where(pos.any(0), best, out)


def dense_candidates(
    score_maps: Tensor,
    objectness: Tensor,
    window_sizes: list[int],
    k: int,
    stride: int,
    min_score: float,
    max_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:meth:`ISFCN.candidates` of one image's (k*k, H, W) score maps and (S, H, W) objectness
    logits: ``(masks (N, H, W), scores (N,), centers (N, 2), labels (H, W))`` (TorchScript
    compiles it)."""
    h, w = int(score_maps.shape[-2]), int(score_maps.shape[-1])
    dev = score_maps.device
    ys, xs = centre_grid((h, w), stride, dev)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    cy, cx = cy.reshape(-1), cx.reshape(-1)
    prob = torch.sigmoid(objectness[:, cy, cx])  # (S, G)
    flat = prob.reshape(-1)
    cand = (flat >= min_score).nonzero().squeeze(1)
    top = flat[cand].argsort(descending=True, stable=True)[:max_candidates]
    cand = cand[top]
    n, g = int(cand.numel()), int(cy.numel())
    scale, pix = cand // g, cand % g
    masks = torch.zeros(n, h * w, dtype=score_maps.dtype, device=dev)
    for si, m in enumerate(window_sizes):
        idx = (scale == si).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        tops = torch.stack([cy[pix[idx]], cx[pix[idx]]], 1) - m // 2
        logits, valid = assemble_windows(score_maps, tops, m, k)
        wy, wx, _ = window_pixels(tops, m, (h, w))
        vals = torch.sigmoid(logits) * valid  # 0 outside: the clamped duplicates add 0
        rows = masks.index_select(0, idx)
        flat_idx = (wy * w + wx).reshape(idx.numel(), -1)
        masks[idx] = rows.scatter_add_(1, flat_idx, vals.reshape(idx.numel(), -1))
    masks = masks.reshape(n, h, w)
    labels = torch.zeros(h, w, dtype=torch.long, device=dev)
    if n > 0:  # label image: the best-scored mask (the first) wins an overlap
        hard = masks >= 0.5
        first = hard.to(torch.uint8).argmax(0)
        labels = torch.where(hard.any(0), first + 1, labels)
    centers = torch.stack([cy[pix], cx[pix]], 1).to(score_maps.dtype)
    return masks, flat[cand].float(), centers, labels


# --------------------------------------------------------------------------- the model
class ISFCN(nn.Module):
    """Backbone + instance-sensitive score maps + objectness; ``forward(x, coords_origin,
    targets) -> Outputs(instances, aux)`` (see the module docstring).

    ``aux`` always holds ``score_maps`` (B, k*k, H, W) and ``objectness`` (B, S, H, W) logits;
    with ``targets`` also ``window_logits`` / ``window_labels`` (sampled windows, all images,
    flat), ``mask_logits`` / ``mask_targets`` (assembled pixels of the positive windows, flat)
    and ``num_positive``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int = 1,
        *,
        k: int = 3,
        window_sizes: Sequence[int] = (15, 21),
        margin: float = 0.125,
        min_fill: float = 0.5,
        windows_per_image: int = 256,
        max_positive: int = 128,
        stride: int = 2,
        max_candidates: int = 100,
        min_score: float = 0.05,
    ) -> None:
        super().__init__()
        sizes = [int(v) for v in window_sizes]
        if not sizes or sorted(set(sizes)) != sizes:
            raise ValueError(f"window_sizes must be increasing and distinct, got {window_sizes}")
        if int(k) < 1 or sizes[0] < int(k):
            raise ValueError(f"need 1 <= k <= smallest window size, got k={k}, sizes={sizes}")
        if int(stride) < 1 or int(windows_per_image) < 1 or int(max_positive) < 0:
            raise ValueError("stride and windows_per_image must be >= 1, max_positive >= 0")
        if not 0 < float(margin) <= 0.5 or not 0 <= float(min_fill) <= 1:
            raise ValueError(
                f"need 0 < margin <= 0.5, 0 <= min_fill <= 1; got {margin}, {min_fill}"
            )
        self.in_channels = int(in_channels)
        self.k = int(k)
        self.window_sizes = sizes
        self.margin = float(margin)
        self.min_fill = float(min_fill)
        self.windows_per_image = int(windows_per_image)
        self.max_positive = int(max_positive)
        self.stride = int(stride)
        self.max_candidates = int(max_candidates)
        self.min_score = float(min_score)
        self.backbone = backbone
        self.decoder = backbone.make_decoder(self.k * self.k + len(sizes))

    @property
    def size_divisor(self) -> int:
        return int(self.backbone.size_divisor)

    @property
    def receptive_field(self) -> int:
        return int(self.backbone.receptive_field())

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        coords_origin: Tensor | None = None,
        targets: list[dict] | None = None,
    ) -> Outputs:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"model input must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        xp, size = pad_to_multiple(x, self.size_divisor)
        y = crop_to(self.decoder(self.backbone.encoder(xp)), size)
        kk = self.k * self.k
        score_maps, objectness = y[:, :kk], y[:, kk:]
        aux: dict = {"score_maps": score_maps, "objectness": objectness}
        if targets is not None:
            aux.update(self.sample_windows(score_maps, objectness, targets))
        with torch.no_grad():
            instances = [
                self.candidates(score_maps[b].detach(), objectness[b].detach())
                for b in range(x.shape[0])
            ]
        return Outputs(instances=instances, aux=aux)

    # ----------------------------------------------------------------- training
    def labels(self, masks: Tensor) -> Tensor:
        """(S, H, W) object index per window (size, centre), -1 negative (:func:`window_labels`)."""
        return torch.stack(
            [
                window_labels(
                    masks, m, margin=self.margin, min_fill=self.min_fill, smallest=(s == 0)
                )
                for s, m in enumerate(self.window_sizes)
            ]
        )

    def sample_windows(
        self, score_maps: Tensor, objectness: Tensor, targets: list[dict]
    ) -> dict[str, Tensor]:
        """Sample ``windows_per_image`` windows per image (up to ``max_positive`` positive)
        and assemble the masks of the positive ones (see the class docstring for the keys)."""
        h, w = score_maps.shape[-2:]
        hw = h * w
        win_logits, win_labels, mask_logits, mask_targets = [], [], [], []
        num_pos = 0
        for b, t in enumerate(targets):
            masks = t["masks"].to(score_maps.device).bool()
            ignore = t.get("ignore")
            lab = self.labels(masks).reshape(-1)  # (S * H * W,)
            pos = (lab >= 0).nonzero().squeeze(1)
            neg = (lab < 0).nonzero().squeeze(1)
            n_pos = min(int(pos.numel()), self.max_positive, self.windows_per_image)
            n_neg = min(int(neg.numel()), self.windows_per_image - n_pos)
            pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
            neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
            sel = torch.cat([pos, neg])
            s, rest = sel // hw, sel % hw
            win_logits.append(objectness[b, s, rest // w, rest % w])
            win_labels.append((lab[sel] >= 0).to(objectness.dtype))
            num_pos += n_pos
            for si, m in enumerate(self.window_sizes):
                ps = pos[pos // hw == si] % hw
                if ps.numel() == 0:
                    continue
                tops = torch.stack([ps // w, ps % w], 1) - m // 2
                logits, valid = assemble_windows(score_maps[b], tops, m, self.k)
                ys, xs, _ = window_pixels(tops, m, (h, w))
                obj = lab[si * hw + ps]  # (P,)
                target = masks[obj[:, None, None], ys, xs]
                keep = valid
                if ignore is not None:
                    keep = keep & ~ignore.to(score_maps.device).bool()[ys, xs]
                mask_logits.append(logits[keep])
                mask_targets.append(target[keep].to(logits.dtype))
        empty = score_maps.new_zeros(0)
        return {
            "window_logits": torch.cat(win_logits) if win_logits else empty,
            "window_labels": torch.cat(win_labels) if win_labels else empty,
            "mask_logits": torch.cat(mask_logits) if mask_logits else empty,
            "mask_targets": torch.cat(mask_targets) if mask_targets else empty,
            "num_positive": torch.tensor(num_pos),
        }

    # ----------------------------------------------------------------- inference
    def candidates(self, score_maps: Tensor, objectness: Tensor) -> Instances:
        """The raw instances of one image: dense windows (stride ``stride``, every size), the
        ``max_candidates`` best by objectness with score >= ``min_score``, their assembled
        masks (sigmoid) pasted as soft (N, H, W) masks; ``centers`` are the windows' centre
        pixels ``(y, x)``; sorted by decreasing score."""
        masks, scores, centers, labels = dense_candidates(
            score_maps, objectness, self.window_sizes, self.k, self.stride, self.min_score,
            self.max_candidates
        )  # fmt: skip
        return Instances(labels=labels, masks=masks, scores=scores, centers=centers)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, window_sizes={self.window_sizes}, margin={self.margin}, "
            f"min_fill={self.min_fill}, stride={self.stride}"
        )


def build_isfcn(
    backbone: str = "unet",
    in_channels: int = 1,
    k: int = 3,
    window_sizes: Sequence[int] = (15, 21),
    margin: float = 0.125,
    min_fill: float = 0.5,
    windows_per_image: int = 256,
    max_positive: int = 128,
    stride: int = 2,
    max_candidates: int = 100,
    min_score: float = 0.05,
    **params,
) -> ISFCN:
    """The ``isfcn`` family: a backbone of :data:`~instembed.models.build.BACKBONES` (``params``
    go to it, e.g. unet ``depth``, ``width``) with the ISFCN heads (see :class:`ISFCN`)."""
    from instembed.models.build import BACKBONES  # build registers this family: import late

    key = str(backbone).lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {sorted(BACKBONES)}")
    try:
        net = BACKBONES[key](int(in_channels), **params)
    except TypeError as e:
        raise TypeError(f"bad parameters for backbone {key!r}: {e}") from e
    return ISFCN(
        net,
        int(in_channels),
        k=k,
        window_sizes=window_sizes,
        margin=margin,
        min_fill=min_fill,
        windows_per_image=windows_per_image,
        max_positive=max_positive,
        stride=stride,
        max_candidates=max_candidates,
        min_score=min_score,
    )
