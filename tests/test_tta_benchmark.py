"""benchmarks/tta.py: the RESULTS.md section from a hand-written JSON-lines file, the tuning grid
around a card's thresholds, the merge of result files, and the per-mode network pass on tiny
hand-built models whose TTA output is derived by hand. No shipped data or weights needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import tta  # noqa: E402
from instembed.structures import Outputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def metrics(ap50, mean=0.5, ap=0.4, fp=1.0, fn=2.0):
    return {
        "AP_dsb@0.5": ap50,
        "AP_dsb@0.5:0.95": mean,
        "AP": ap,
        "FP_per_image@0.5": fp,
        "FN_per_image@0.5": fn,
    }


def row(model, mode, sec, card, tuned, params, sha="abc"):
    return {
        "model": model,
        "sha256": sha,
        "mode": mode,
        "n_val": 10,
        "net_cpu_s_per_image": sec,
        "card": card,
        "tuned": tuned,
        "tuned_params": params,
    }


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def table_row(lines: list[str], model: str) -> list[str]:
    (line,) = [ln for ln in lines if ln.startswith(f"| `{model}`")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_section_renders_both_modes_ratio_and_gain(tmp_path):
    p = {"fg_thresh": 0.4, "seed_thresh": 0.9, "prob_thresh": 0.5}
    write_rows(
        tmp_path / "tta.json",
        [
            row("worms", "plain", 0.5, metrics(0.858, 0.55, 0.57, 0.9, 1.1), metrics(0.860), p),
            # TTA: 4.1 s vs 0.5 s -> 8.2x; tuned AP_dsb@0.5 0.860 -> 0.872 (+0.012 > 0.005)
            row(
                "worms",
                "tta",
                4.1,
                metrics(0.857, 0.56, 0.58, 0.75, 1.25),
                metrics(0.872),
                {**p, "seed_thresh": 0.875},
            ),
            row("nuclei", "plain", 2.0, metrics(0.921), metrics(0.921), p),
            # 2.0 s -> 15.0 s: 7.5x; AP_dsb@0.5 0.921 -> 0.922 (+0.001: no gain)
            row("nuclei", "tta", 15.0, metrics(0.922), metrics(0.922), p),
        ],
    )
    lines = tta.section(tmp_path, pretrained=tmp_path / "no_cards")
    assert lines[0] == "## Test-time augmentation (8 flips/rotations) on the val split"
    w = table_row(lines, "worms")
    assert w[1] == "10"
    assert w[2] == "0.50 / 4.10"
    assert w[3] == "8.2x"
    assert w[4] == "0.858 / 0.857"  # AP_dsb@0.5 at the card's thresholds
    assert w[5] == "0.550 / 0.560"
    assert w[6] == "0.570 / 0.580"
    assert w[7] == "0.90 / 0.75"
    assert w[8] == "1.10 / 1.25"
    assert w[9] == "0.860 / 0.872"  # tuned
    assert w[10] == "fg 0.4 prob 0.5 seed 0.9 / fg 0.4 prob 0.5 seed 0.875"
    n = table_row(lines, "nuclei")
    assert n[2] == "2.00 / 15.00" and n[3] == "7.5x"
    (read,) = [ln for ln in lines if ln.startswith("Reading:")]
    assert "gains more than 0.005" in read
    assert "worms (tuned thresholds, +0.012)" in read
    assert "nuclei" not in read  # +0.001 is below the gain threshold
    assert "7.5-8.2x" in read


def test_section_reads_no_gain_and_losses(tmp_path):
    p = {"seed_thresh": 0.9}
    write_rows(
        tmp_path / "tta.json",
        [
            row("a", "plain", 1.0, metrics(0.800), metrics(0.810), p),
            row("a", "tta", 8.0, metrics(0.803), metrics(0.806), p),  # +0.003, -0.004
            row("b", "plain", 1.0, metrics(0.700), metrics(0.710), p),
            row("b", "tta", 9.0, metrics(0.690), metrics(0.712), p),  # -0.010, +0.002
        ],
    )
    (read,) = [ln for ln in tta.section(tmp_path, tmp_path) if ln.startswith("Reading:")]
    assert "gains no more than 0.005" in read
    assert "-0.010 to +0.003" in read
    assert "loses more than 0.005 on b (card thresholds, -0.010)" in read
    assert "8.0-9.0x" in read


def test_section_missing_file_and_stale_card(tmp_path):
    lines = tta.section(tmp_path / "nothing_here")
    assert "not run" in lines[2] and "python benchmarks/tta.py" in lines[2]
    assert not any(ln.startswith("| ") for ln in lines)
    # a model re-shipped since the measurement (another sha256 on its card) is marked
    write_rows(
        tmp_path / "tta.json",
        [
            row("m", "plain", 1.0, metrics(0.8), metrics(0.8), {}, sha="old"),
            row("m", "tta", 8.0, metrics(0.8), metrics(0.8), {}, sha="old"),
        ],
    )
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "m.json").write_text(json.dumps({"sha256": "new"}))
    assert any("earlier version" in ln for ln in tta.section(tmp_path, cards))
    (cards / "m.json").write_text(json.dumps({"sha256": "old"}))
    assert not any("earlier version" in ln for ln in tta.section(tmp_path, cards))


def test_tuning_grid_around_card():
    g = tta.tuning_grid(
        {"fg_thresh": 0.3, "seed_thresh": 0.875, "prob_thresh": 0.3, "overlap_thresh": 0.5}
    )
    assert g == {
        "fg_thresh": [0.2, 0.3, 0.4],
        "seed_thresh": [0.85, 0.875, 0.9],
        "prob_thresh": [0.3, 0.5],
    }  # overlap_thresh stays the card's: not tuned
    g = tta.tuning_grid({"fg_thresh": 0.05, "seed_thresh": 0.99, "prob_thresh": 0.4})
    # 0.05 - 0.1 and 0.99 + 0.025 fall outside (0, 1); the card's prob 0.4 is kept
    assert g == {
        "fg_thresh": [0.05, 0.15],
        "seed_thresh": [0.965, 0.99],
        "prob_thresh": [0.3, 0.4, 0.5],
    }


def test_merge_replaces_only_the_remeasured_model(tmp_path):
    path = tmp_path / "sub" / "tta.json"
    tta.merge(
        path, [{"model": "a", "mode": "plain", "v": 1}, {"model": "a", "mode": "tta", "v": 1}]
    )
    tta.merge(path, [{"model": "b", "mode": "plain", "v": 2}])
    tta.merge(path, [{"model": "a", "mode": "plain", "v": 3}])
    rows = tta.read_rows(path)
    assert sorted((r["model"], r["mode"], r["v"]) for r in rows) == [
        ("a", "plain", 3),
        ("b", "plain", 2),
    ]


class ColumnRamp(nn.Module):
    """seed = x * j / (W - 1): a fixed weight that grows along the columns of whatever frame the
    network sees; sigma = x**2, a pointwise map (equivariant to every flip / rotation)."""

    size_divisor, receptive_field, semiconv = 1, 1, False

    def forward(self, x, coords_origin=None):
        w = x.shape[-1]
        ramp = torch.arange(w, dtype=x.dtype) / (w - 1)
        return Outputs(seed=x * ramp, sigma=x**2)


@pytest.mark.parametrize("shape", [(6, 6), (5, 7)])
def test_network_outputs_tta_against_hand_derivation(shape):
    rng = np.random.default_rng(0)
    samples = [SimpleNamespace(image=rng.random((1, *shape), dtype=np.float32)) for _ in range(2)]
    plain, sec_plain = tta.network_outputs(ColumnRamp(), samples, "plain")
    aug, sec_tta = tta.network_outputs(ColumnRamp(), samples, "tta")
    assert sec_plain >= 0 and sec_tta >= 0
    h, w = shape
    ramp = np.arange(w) / (w - 1)
    for s, p, a in zip(samples, plain, aug):
        x = s.image[0]
        np.testing.assert_allclose(p.seed[0, 0].numpy(), x * ramp, rtol=1e-6, atol=1e-7)
        # the 8 frames put the ramp along columns (j, W-1-j) four times and along rows
        # (i, H-1-i) four times, each normalised to [0, 1]: opposite directions sum to 1,
        # so mapped back and averaged the weight is (2 + 2) / 8 = 0.5 at every pixel
        np.testing.assert_allclose(a.seed[0, 0].numpy(), 0.5 * x, rtol=1e-5, atol=1e-6)
        # the pointwise map is equivariant: TTA leaves it unchanged
        np.testing.assert_allclose(a.sigma[0, 0].numpy(), x**2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.sigma[0, 0].numpy(), x**2, rtol=1e-6)
    with pytest.raises(ValueError):
        tta.network_outputs(ColumnRamp(), samples, "flip")


def test_reading_flags_tuned_thresholds_on_the_grid_edge(tmp_path):
    grid = {
        "fg_thresh": [0.3, 0.4, 0.5],
        "seed_thresh": [0.875, 0.9, 0.925],
        "prob_thresh": [0.3, 0.5],
    }
    plain = row(
        "w",
        "plain",
        2.0,
        metrics(0.8),
        metrics(0.8),
        {"fg_thresh": 0.4, "seed_thresh": 0.9, "prob_thresh": 0.5},
    )
    # TTA: seed 0.875 is the grid's smallest value and fg 0.5 its largest; prob 0.3 is one of
    # only two choices, not a range, so it is not reported
    aug = row(
        "w",
        "tta",
        18.0,
        metrics(0.8),
        metrics(0.8),
        {"fg_thresh": 0.5, "seed_thresh": 0.875, "prob_thresh": 0.3},
    )
    plain["grid"] = aug["grid"] = grid
    write_rows(tmp_path / "tta.json", [plain, aug])
    (read,) = [ln for ln in tta.section(tmp_path, tmp_path) if ln.startswith("Reading:")]
    assert "on the edge of the grid (w tta: fg_thresh 0.5, seed_thresh 0.875)" in read
    assert "w plain" not in read and "prob_thresh" not in read
    assert "at 9.0x the network CPU time" in read  # one model: one ratio, 18 / 2
