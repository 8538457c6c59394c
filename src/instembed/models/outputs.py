"""``Outputs``: the named outputs of every instembed network.

A network never returns channels to be sliced by index; it returns an :class:`Outputs` with
the fields its heads produce (``None`` for the others). Shapes, for a batch of B images::

    embedding        (B, E, H, W)  pixel embeddings; for semi-convolutional models already
                                   Psi = Phi + u on the first two dims (see models.semiconv)
    seed             (B, 1, H, W)  seed / seediness map in [0, 1] (after sigmoid)
    sigma            (B, S, H, W)  bandwidth (S = 1 isotropic, or one per embedding dim)
    center           (B, 1, H, W)  center heatmap (Panoptic-DeepLab)
    offset           (B, 2, H, W)  offset (dy, dx) in pixels from each pixel to its center
    semantic         (B, K, H, W)  semantic logits
    class_embedding  (B, K, E, H, W) per-class embeddings (De Brabandere et al. multi-class)

The field set does not depend on ``model.training``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

OUTPUT_FIELDS = ("embedding", "seed", "sigma", "center", "offset", "semantic", "class_embedding")


@dataclass
class Outputs:
    embedding: torch.Tensor | None = None
    seed: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    center: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    class_embedding: torch.Tensor | None = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The fields that are set, as a plain dict (for TorchScript / ONNX / saving)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> Outputs:
        unknown = set(d) - set(OUTPUT_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown output names {sorted(unknown)}; valid: {list(OUTPUT_FIELDS)}"
            )
        return cls(**d)

    def index(self, i: int) -> Outputs:
        """Outputs of image ``i`` of the batch, batch dimension kept (size 1)."""
        return Outputs(**{k: v[i : i + 1] for k, v in self.to_dict().items()})

    def map(self, fn) -> Outputs:
        """Apply ``fn`` to every tensor that is set (e.g. ``lambda t: t.detach().cpu()``)."""
        return Outputs(**{k: fn(v) for k, v in self.to_dict().items()})
