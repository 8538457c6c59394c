"""Every loss trains a tiny U-Net on a toy image: the loss must fall (real optimisation)."""

from __future__ import annotations

import pytest
import torch

from instembed.losses import build_loss
from instembed.models import build_model

HEADS = {
    "discriminative": ({"embedding": 4}, {}),
    "semiconv": ({"embedding": 4}, {"segment_reduction": "mean"}),
    "metric": ({"embedding": 4, "seed": 1}, {"num_points": 128, "seed_value": 0}),
    "bilateral": ({"embedding": 4, "seed": 1}, {}),
    "spatial": ({"embedding": 2, "sigma": 1, "seed": 1}, {"coord_scale": 1 / 16}),
    "center_offset": ({"center": 1, "offset": 2, "semantic": 2}, {}),
    "semantic_ce": ({"semantic": 2}, {}),
}


def toy_batch():
    """Two 24 x 24 images with 3 and 2 bright squares; labels 1..N, 0 = background."""
    labels = torch.zeros(2, 24, 24, dtype=torch.long)
    labels[0, 2:8, 2:8] = 1
    labels[0, 2:8, 12:20] = 2
    labels[0, 14:22, 5:11] = 3
    labels[1, 4:12, 4:12] = 1
    labels[1, 14:20, 14:22] = 2
    image = (labels > 0).float().unsqueeze(1) + 0.05 * torch.randn(2, 1, 24, 24)
    return {"image": image, "labels": labels, "coords_origin": torch.zeros(2, 2, dtype=torch.long)}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_loss_decreases_when_training(name, one_thread):
    torch.manual_seed(0)
    heads, params = HEADS[name]
    semiconv = name in ("semiconv", "spatial", "bilateral")
    model = build_model(
        "unet", 1, heads=heads, semiconv=semiconv, coord_scale=1 / 16, depth=2, width=8
    )
    loss_fn = build_loss(name, **params)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=5e-3)
    batch = toy_batch()
    first = None
    for _ in range(40):
        total, terms = loss_fn(model(batch["image"], batch["coords_origin"]), batch)
        assert torch.isfinite(total)
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    last, _ = loss_fn(model(batch["image"], batch["coords_origin"]), batch)
    assert last.item() < 0.7 * first, (first, last.item())
