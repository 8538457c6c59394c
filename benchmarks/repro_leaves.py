"""Leaves: the CVPPP A1 protocol of De Brabandere et al. 2017 (SBD, |DiC|, with the predicted
and with the ground-truth foreground), runnable on your own copy of CVPPP A1 and exercised here on
synthetic leaf rosettes (the CVPPP data cannot be shipped).

    python benchmarks/repro_leaves.py [--quick]                     # synthetic rosettes
    python benchmarks/repro_leaves.py --cvppp /path/to/A1 [--quick] # plantNNN_rgb.png + _label.png

Model, loss and clusterer: the engine's example ``configs/leaves_discriminative.yaml``
(discriminative loss, 8-D embedding + 2-class semantic head, mean-shift with bandwidth
``delta_v``). On CVPPP the last 20 % of the plants (sorted names) are validation. Scores:
SBD and |DiC| from :class:`instembed.metrics.InstanceEvaluator` (the CVPPP definitions), once
with the semantic head's foreground and once with the ground-truth foreground.

Writes ``benchmarks/results/repro_leaves.json``; prints JSON lines and a table. Reference:
De Brabandere et al. report SBD 84.2, |DiC| 1.0 on the CVPPP A1 test set (different data here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_pretrained import network_outputs, train_on_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "quick": {"steps": 200, "n_train": 64, "n_val": 8},
    "full": {"steps": 2000, "n_train": 256, "n_val": 32},
}


def main(argv: list[str] | None = None) -> int:
    import yaml

    from instembed.cluster import cluster_embeddings
    from instembed.engine.config import config_from_dict, config_to_dict
    from instembed.engine.evaluation import Scorer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cvppp", default=None, help="folder of CVPPP A1 (plantNNN_rgb/_label.png)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--runs", default="/tmp/instembed_repro_runs")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    p = MODES[mode]
    base_path = REPO / "configs" / "leaves_discriminative.yaml"
    d = yaml.safe_load(base_path.read_text())
    d["run"].update({"steps": p["steps"], "val_every": 0, "ckpt_every": 0, "progress": False})
    d["run"]["tensorboard"] = False
    if args.cvppp:
        d["data"].update({"synth": None, "path": args.cvppp, "format": "cvppp"})
        cfg = config_from_dict(d)
        from instembed.data.readers import open_dataset

        reader = open_dataset(args.cvppp, format="cvppp")
        n_val = max(1, round(0.2 * len(reader)))
        samples = [reader[i] for i in range(len(reader))]
        train, val = samples[:-n_val], samples[-n_val:]
        source = f"CVPPP A1 at {args.cvppp}"
    else:
        d["data"].update({"n_train": p["n_train"], "n_val": p["n_val"]})
        cfg = config_from_dict(d)
        from instembed.data.synth import make_samples

        kw = dict(cfg.data.synth_params)
        size = tuple(cfg.data.size)
        train = make_samples("leaf_rosettes", p["n_train"], size=size, seed=0, **kw)
        val = make_samples("leaf_rosettes", p["n_val"], size=size, seed=1_000_003, **kw)
        source = "synthetic leaf rosettes (instembed.data.synth)"
    t0 = time.perf_counter()
    trainer, result, train_s = train_on_split(cfg, Path(args.runs) / "leaves", train, [], None)
    outs = network_outputs(trainer.model, val)
    params = {k: v for k, v in cfg.cluster.params.items() if k != "foreground_classes"}
    rows = []
    for fg_mode in ("predicted", "ground_truth"):
        scorer = Scorer()
        for out, s in zip(outs, val):
            inst = s.instances
            if fg_mode == "ground_truth":
                fg = torch.from_numpy(inst.any(0) if inst.ndim == 3 else inst > 0)
            else:
                fg = out.semantic[0].argmax(0) == 1
            res = cluster_embeddings(out.embedding, cfg.cluster.method, foreground=fg, **params)
            scorer.add(s, res)
        m = scorer.summary()
        row = {
            "foreground": fg_mode,
            "SBD": float(m["SBD"]),
            "absDiC": float(m["absDiC"]),
            "DiC": float(m["DiC"]),
            "AP": float(m["AP"]),
            "n_val_images": len(val),
        }
        rows.append(row)
        print(json.dumps(row))
    res = {
        "benchmark": "leaves_cvppp_protocol",
        "script": "benchmarks/repro_leaves.py"
        + (" --quick" if args.quick else "")
        + (" --cvppp PATH" if args.cvppp else ""),
        "data": source,
        "base_config": str(base_path.relative_to(REPO)),
        "config": config_to_dict(cfg),
        "steps": result.step,
        "train_s": round(train_s, 1),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "repro_leaves.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'foreground':14s} {'SBD':>7s} {'|DiC|':>7s}")
    for r in rows:
        print(f"{r['foreground']:14s} {r['SBD']:7.3f} {r['absDiC']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
