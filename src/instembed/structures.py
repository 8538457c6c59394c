"""The types every stage of instembed shares: :class:`Outputs`, :class:`Instances`, the label
constants and the pixel-coordinate convention.

This module is the neutral layer of the package (detectron2 keeps the same things in
``structures/``): data, models, losses, clustering, metrics and the engine import it, and it
imports nothing of instembed.

Label constants
    ``BACKGROUND = 0`` in label images; ``IGNORE_INDEX = 255`` marks void pixels of semantic maps.

Pixel coordinates
    ``u = (y, x) * coord_scale`` with ``y, x`` in pixels of the **original image** (row, column;
    pixel centres at integers, ``(0, 0)`` its top-left pixel). A crop or tile with top-left pixel
    ``coords_origin = (y0, x0)`` gives its pixel (i, j) the value ``(y0 + i, x0 + j) * coord_scale``,
    the same it has in the whole image (:func:`pixel_coordinates`).

Boxes
    ``(x1, y1, x2, y2)`` in pixels, float, pixel *edges*: a mask covering columns 3..5 and rows
    7..8 has the box ``(3, 7, 6, 9)`` (torchvision's and COCO's ``xyxy`` convention).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: data and metrics stay torch-free
    import torch


def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


BACKGROUND = 0
"""Label of background pixels in a label image."""

IGNORE_INDEX = 255
"""Class id of void pixels in semantic maps (excluded from losses and scores)."""

DEFAULT_COORD_SCALE = 1.0 / 64.0
"""Default coordinate unit: one embedding unit = 64 pixels of the original image."""


def pixel_coordinates(
    batch: int,
    size: tuple[int, int],
    coords_origin: torch.Tensor | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(B, 2, H, W) tensor ``u = (y0 + i, x0 + j) * coord_scale`` for every pixel (i, j).

    ``coords_origin`` is (B, 2) (y0, x0) per image, or None for (0, 0).
    """
    import torch

    if dtype is None:
        dtype = torch.float32
    h, w = size
    ys = torch.arange(h, device=device, dtype=dtype).view(1, h, 1).expand(batch, h, w)
    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, w).expand(batch, h, w)
    u = torch.stack([ys, xs], dim=1)  # (B, 2, H, W)
    if coords_origin is not None:
        origin = torch.as_tensor(coords_origin, device=device).to(dtype)
        if origin.shape != (batch, 2):
            raise ValueError(
                f"coords_origin must have shape (B, 2) = ({batch}, 2), got {tuple(origin.shape)}"
            )
        u = u + origin.view(batch, 2, 1, 1)
    return u * coord_scale


# --------------------------------------------------------------------------- boxes
def masks_to_boxes(masks) -> Any:
    """(N, 4) ``x1, y1, x2, y2`` boxes (pixel edges) of an (N, H, W) mask stack.

    Torch tensor in, float32 tensor out (same device); numpy in, float32 array out. Soft (float)
    masks count where >= 0.5. Empty masks get the box ``(0, 0, 0, 0)``.
    """
    if _is_tensor(masks):
        import torch

        m = masks if masks.dtype == torch.bool else masks >= 0.5
        n, h, w = m.shape
        rows, cols = m.any(2), m.any(1)  # (N, H), (N, W)
        ar_h = torch.arange(h, device=m.device)
        ar_w = torch.arange(w, device=m.device)
        y1 = torch.where(rows, ar_h, h).amin(1) if n else ar_h[:0]
        y2 = torch.where(rows, ar_h, -1).amax(1) + 1 if n else ar_h[:0]
        x1 = torch.where(cols, ar_w, w).amin(1) if n else ar_w[:0]
        x2 = torch.where(cols, ar_w, -1).amax(1) + 1 if n else ar_w[:0]
        out = torch.stack([x1, y1, x2, y2], 1).float().reshape(n, 4)
        return torch.where(rows.any(1)[:, None], out, torch.zeros_like(out))
    m = np.asarray(masks)
    m = m if m.dtype == bool else m >= 0.5
    n, h, w = m.shape
    out = np.zeros((n, 4), np.float32)
    rows, cols = m.any(2), m.any(1)
    for k in np.flatnonzero(rows.any(1)):
        ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        out[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def labels_to_masks(labels, n: int | None = None) -> Any:
    """(N, H, W) bool stack ``labels == k`` for k = 1..N (N = ``n`` or the largest label).

    Torch tensor in, tensor out; numpy in, numpy out.
    """
    if _is_tensor(labels):
        import torch

        n = (int(labels.max()) if labels.numel() else 0) if n is None else int(n)
        ids = torch.arange(1, n + 1, device=labels.device, dtype=labels.dtype)
        return labels.unsqueeze(0) == ids.view(-1, 1, 1)
    lab = np.asarray(labels)
    n = (int(lab.max()) if lab.size else 0) if n is None else int(n)
    return lab[None] == np.arange(1, n + 1, dtype=lab.dtype).reshape(-1, 1, 1)


def masks_to_labels(masks, scores=None) -> Any:
    """(H, W) label image from an (N, H, W) stack; where masks overlap, the pixel goes to the
    instance with the higher score (the later one on ties or without scores).

    Torch tensor in, int64 tensor out; numpy in, int32 array out.
    """
    if _is_tensor(masks):
        import torch

        out = torch.zeros(masks.shape[1:], dtype=torch.long, device=masks.device)
        order = range(masks.shape[0])
        if scores is not None and masks.shape[0]:
            s = torch.as_tensor(scores).detach().cpu()
            order = torch.argsort(s, stable=True).tolist()
        for k in order:
            m = masks[k] if masks.dtype == torch.bool else masks[k] >= 0.5
            out[m] = k + 1
        return out
    m = np.asarray(masks)
    m = m if m.dtype == bool else m >= 0.5
    out = np.zeros(m.shape[1:], np.int32)
    order = range(m.shape[0])
    if scores is not None and m.shape[0]:
        order = np.argsort(np.asarray(scores), kind="stable")
    for k in order:
        out[m[k]] = k + 1
    return out


# --------------------------------------------------------------------------- Instances
def _to_numpy(x):
    if x is None or isinstance(x, np.ndarray):
        return x
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _numel(x) -> int:
    return int(x.numel()) if _is_tensor(x) else int(np.asarray(x).size)


def _to_tensor(x, device=None):
    import torch

    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device or "cpu")


_PER_INSTANCE = ("masks", "boxes", "scores", "classes", "centers")


@dataclass
class Instances:
    """The instances found in (or annotated for) one image.

    Every field holds either torch tensors or numpy arrays (:meth:`numpy`, :meth:`tensors`,
    :meth:`to` convert); ``N`` is the number of instances:

    ============  ===============  =====================================================
    field         shape            meaning
    ============  ===============  =====================================================
    labels        (H, W) int       label image, 0 = background, ``labels == k`` is (part
                                   of) instance k (ids 1..N). Given masks only, it is
                                   painted from them (higher score wins an overlap).
    masks         (N, H, W) bool   per-instance masks that may overlap (mask stacks,
                                   proposal models); None: one instance per pixel, the
                                   label image says everything. ``masks[k]`` contains
                                   ``labels == k + 1``. A model's raw instances may carry
                                   soft masks (float, in [0, 1]): a pixel belongs to the
                                   mask where the value is >= 0.5 until a post-processing
                                   method applies its own mask threshold.
    scores        (N,) float       confidence (COCO AP ranks by it); default all ones
    classes       (N,) int         semantic class per instance, or None
    boxes         (N, 4) float     ``x1, y1, x2, y2`` (pixel edges), or None;
                                   :meth:`get_boxes` computes them from the masks
    centers       (N, D) float     where the clusterer put each instance (embedding
                                   space, or (y, x) pixels for centre grouping), or None
    semantic      (H, W) int       the image's semantic argmax map (models with a
                                   semantic head; used for panoptic output), or None
    meta          dict             free-form (e.g. ``timing``)
    ============  ===============  =====================================================

    Indexing (``inst[idx]`` with an int, slice, index list or bool mask) keeps the selected
    instances in the given order, renumbered 1..len(idx).
    """

    labels: Any = None
    scores: Any = None
    classes: Any = None
    centers: Any = None
    masks: Any = None
    boxes: Any = None
    semantic: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels is None and self.masks is None:
            raise ValueError("Instances need a label image (labels) or a mask stack (masks)")
        if self.masks is not None and self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {tuple(self.masks.shape)}")
        if self.labels is None:
            self.labels = masks_to_labels(self.masks, self.scores)
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be (H, W), got shape {tuple(self.labels.shape)}")
        torch_like = _is_tensor(self.labels)
        if self.scores is None:
            if self.masks is not None:
                n = int(self.masks.shape[0])
            else:
                n = int(self.labels.max()) if _numel(self.labels) else 0
            self.scores = np.ones(n, np.float32)
            if torch_like:
                self.scores = _to_tensor(self.scores, self.labels.device)
        n = int(self.scores.shape[0])
        for name in _PER_INSTANCE:
            value = getattr(self, name)
            if value is not None and int(value.shape[0]) != n:
                raise ValueError(
                    f"Instances.{name} has {value.shape[0]} entries for {n} scores (instances)"
                )
        if self.masks is not None and tuple(self.masks.shape[1:]) != tuple(self.labels.shape):
            raise ValueError(
                f"masks are {tuple(self.masks.shape[1:])} per instance but labels are "
                f"{tuple(self.labels.shape)}"
            )

    # ----------------------------------------------------------------- facts
    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_instances(self) -> int:
        return len(self)

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    @property
    def masks_or_labels(self):
        """The instances as scored and written: the mask stack when there is one, else the
        label image (what the metrics and writers take)."""
        return self.labels if self.masks is None else self.masks

    def get_masks(self):
        """The (N, H, W) bool stack: ``masks`` when set, else one mask per label id."""
        if self.masks is not None:
            return self.masks
        return labels_to_masks(self.labels, len(self))

    def get_boxes(self):
        """``boxes`` when set, else the boxes of :meth:`get_masks`."""
        return self.boxes if self.boxes is not None else masks_to_boxes(self.get_masks())

    # ----------------------------------------------------------------- conversions
    def _replace(self, fn: Callable) -> Instances:
        kw = {f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "meta"}
        return Instances(**kw, meta=dict(self.meta))

    def numpy(self) -> Instances:
        """The same instances with every field a numpy array (labels int32, masks bool)."""
        out = self._replace(_to_numpy)
        out.labels = out.labels.astype(np.int32, copy=False)
        out.scores = out.scores.astype(np.float32, copy=False)
        if out.masks is not None and not np.issubdtype(out.masks.dtype, np.floating):
            out.masks = out.masks.astype(bool, copy=False)
        if out.semantic is not None:
            out.semantic = out.semantic.astype(np.int32, copy=False)
        return out

    def tensors(self, device: torch.device | str | None = None) -> Instances:
        """The same instances with every field a torch tensor (on ``device`` when given)."""
        out = self._replace(lambda x: _to_tensor(x, device))
        out.labels = out.labels.long()
        return out

    def to(self, device: torch.device | str) -> Instances:
        """Torch tensors on ``device``."""
        return self.tensors(device)

    # ----------------------------------------------------------------- selection
    def __getitem__(self, idx) -> Instances:
        n = len(self)
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            sel = np.arange(n)[idx]
        else:
            a = np.asarray(_to_numpy(idx))
            sel = np.flatnonzero(a) if a.dtype == bool else a.astype(np.int64).reshape(-1)
            if a.dtype == bool and a.shape != (n,):
                raise IndexError(f"bool index of shape {a.shape} for {n} instances")
        if sel.size and (sel.max() >= n or sel.min() < -n):
            raise IndexError(f"instance index {sel.tolist()} out of range for {n} instances")
        sel = np.where(sel < 0, sel + n, sel)
        is_t = _is_tensor(self.labels)
        take = (lambda x: x[_to_tensor(sel, x.device)]) if is_t else (lambda x: x[sel])
        kw = {
            k: (None if getattr(self, k) is None else take(getattr(self, k))) for k in _PER_INSTANCE
        }
        # labels: old id sel[j] + 1 -> new id j + 1, everything else background
        lut = np.zeros(n + 1, np.int64)
        lut[sel + 1] = np.arange(1, sel.size + 1)
        if is_t:
            labels = _to_tensor(lut, self.labels.device)[self.labels.long().clamp(0, n)]
        else:
            labels = lut[np.clip(self.labels, 0, n)].astype(self.labels.dtype)
        return Instances(labels=labels, semantic=self.semantic, meta=dict(self.meta), **kw)

    @classmethod
    def empty(cls, size: tuple[int, int], device: torch.device | str | None = None) -> Instances:
        """No instances in an image of ``size`` (torch tensors)."""
        import torch

        return cls(
            labels=torch.zeros(size, dtype=torch.long, device=device),
            scores=torch.zeros(0, dtype=torch.float32, device=device),
        )


# --------------------------------------------------------------------------- Outputs
DENSE_FIELDS = ("embedding", "seed", "sigma", "center", "offset", "semantic", "class_embedding")


@dataclass
class Outputs:
    """The named outputs of every instembed model: ``model(image, coords_origin, targets)``.

    A network never returns channels to be sliced by index. Dense fields, for a batch of B
    images (``None`` when the model has no such head)::

        embedding        (B, E, H, W)  pixel embeddings; for semi-convolutional models already
                                       Psi = Phi + u on the first two dims
        seed             (B, 1, H, W)  seed / seediness map in [0, 1] (after sigmoid)
        sigma            (B, S, H, W)  bandwidth (S = 1 isotropic, or one per embedding dim)
        center           (B, 1, H, W)  center heatmap (Panoptic-DeepLab)
        offset           (B, 2, H, W)  offset (dy, dx) in pixels from each pixel to its center
        semantic         (B, K, H, W)  semantic logits
        class_embedding  (B, K, E, H, W) per-class embeddings (De Brabandere et al. multi-class)

    Instance-level and training-only fields::

        instances   list of B :class:`Instances` (one per image) from families that find objects
                    themselves (proposal-based, recurrent); None for dense families, whose
                    instances come from a post-processing method
        aux         dict of anything else a family's loss reads (RPN logits, sampled RoIs,
                    per-step scores ...); empty for dense families

    The set of fields does not depend on ``model.training``. :meth:`to_dict` gives the dense
    fields only (what tiling, TTA, TorchScript and ONNX handle).
    """

    embedding: torch.Tensor | None = None
    seed: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    center: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    class_embedding: torch.Tensor | None = None
    instances: list[Instances] | None = None
    aux: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The dense fields that are set, as a plain dict (for TorchScript / ONNX / tiling)."""
        return {
            name: getattr(self, name) for name in DENSE_FIELDS if getattr(self, name) is not None
        }

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> Outputs:
        unknown = set(d) - set(DENSE_FIELDS)
        if unknown:
            raise ValueError(f"unknown output names {sorted(unknown)}; valid: {list(DENSE_FIELDS)}")
        return cls(**d)

    @property
    def batch_size(self) -> int:
        for t in self.to_dict().values():
            return int(t.shape[0])
        if self.instances is not None:
            return len(self.instances)
        raise ValueError("the Outputs have no field set")

    def index(self, i: int) -> Outputs:
        """Outputs of image ``i`` of the batch, batch dimension kept (size 1); ``aux`` dropped."""
        return Outputs(
            **{k: v[i : i + 1] for k, v in self.to_dict().items()},
            instances=None if self.instances is None else [self.instances[i]],
        )

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Outputs:
        """Apply ``fn`` to every dense tensor (e.g. ``lambda t: t.detach().cpu()``); instances are
        moved to the device of the mapped tensors; ``aux`` is kept as it is."""
        dense = {k: fn(v) for k, v in self.to_dict().items()}
        inst = self.instances
        if inst is not None:
            import torch

            probe = fn(torch.zeros(1))
            inst = [i.tensors(probe.device) for i in inst]
        return Outputs(**dense, instances=inst, aux=self.aux)
