"""Training-step cost of every network and every loss: time and peak memory.

Three tables, all on the same machine in one run:

1. **networks**: forward + discriminative loss + backward of each network (``{"embedding": 8}``
   head) at ``--size`` x ``--size`` (256), batch ``--batch`` (4).
2. **losses**: forward + backward of each loss alone on fixed random network outputs of the
   same size, labels from ``instembed.data.synth`` ("touching_cells", ~30 cells per image).
   The discriminative loss is compared with a **per-instance loop** implementation (Python loop
   over images and instance masks, the style of most public implementations) in the same run;
   ratio = loop time / instembed time (> 1: instembed is faster). Both give the same value.
3. **size** (``--flops``): parameter count and forward FLOPs (``torch.utils.flop_counter``,
   multiply-add = 2 FLOPs) of each network at 512 x 512, batch 1.

Peak memory: each configuration runs in a fresh child process; after set-up (model, inputs) the
peak counter is reset and the baseline read, and the table shows peak minus baseline over the
warm-up and timed steps -- what a step adds. CPU: resident set (``VmHWM`` reset through
``/proc/self/clear_refs``, Linux; ``ru_maxrss`` elsewhere, then set-up is included); CUDA:
``torch.cuda.max_memory_allocated``. Times: median of ``--repeat`` steps after one
warm-up step. Prints one JSON line per configuration, then the tables.

    python benchmarks/train_step.py                 # CPU, all networks and losses
    python benchmarks/train_step.py --quick         # 128 x 128, batch 2, 2 repeats
    python benchmarks/train_step.py --device cuda   # on a GPU, when there is one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

NETWORKS = {
    "unet_tiny": ("unet", {"depth": 3, "width": 16}),
    "unet": ("unet", {"depth": 4, "width": 32}),
    "erfnet": ("erfnet", {}),
    "enet": ("enet", {}),
}
LOSSES = {
    "discriminative": {},
    "semiconv": {},
    "metric": {"num_points": 512, "seed_value": 0},
    "bilateral": {},
    "spatial": {},
    "center_offset": {},
    "semantic_ce": {},
    "discriminative_loop": {},  # the peer: per-instance loop
}


def loop_discriminative(emb, labels, delta_v=0.5, delta_d=1.5, gamma=0.001):
    """Per-image, per-instance loop version (background ignored), as public repos write it."""
    import torch

    total = emb.new_zeros(())
    for b in range(emb.shape[0]):
        ids = [i for i in torch.unique(labels[b]).tolist() if i != 0]
        if not ids:
            continue
        mus, var = [], emb.new_zeros(())
        for i in ids:
            x = emb[b][:, labels[b] == i]  # (E, N_c)
            mu = x.mean(1)
            mus.append(mu)
            d = torch.linalg.vector_norm(x - mu[:, None], dim=0)
            var = var + (torch.relu(d - delta_v) ** 2).mean()
        mus_t = torch.stack(mus)
        c = len(ids)
        dist = emb.new_zeros(())
        if c > 1:
            for a in range(c):
                for k in range(c):
                    if a != k:
                        dd = torch.linalg.vector_norm(mus_t[a] - mus_t[k])
                        dist = dist + torch.relu(2 * delta_d - dd) ** 2
            dist = dist / (c * (c - 1))
        reg = torch.linalg.vector_norm(mus_t, dim=1).mean()
        total = total + var / c + dist + gamma * reg
    return total / emb.shape[0]


def make_batch(size: int, batch: int, device: str):
    import numpy as np
    import torch

    from instembed.data.synth import make_samples

    samples = make_samples("touching_cells", batch, size=(size, size), seed=0, n_cells=(25, 35))
    labels = torch.from_numpy(np.stack([s.label_image() for s in samples]).astype(np.int64))
    image = torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32))
    return {
        "image": image.to(device),
        "labels": labels.to(device),
        "coords_origin": torch.zeros(batch, 2, dtype=torch.long, device=device),
    }


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak(device: str) -> int:
    """Reset the peak counter; return the current usage in bytes (the baseline)."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    try:  # Linux >= 4.0: writing 5 resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return (_status_kib("VmRSS") or 0) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_one(kind: str, name: str, args) -> dict:
    """One configuration in this process: set up, warm up, time ``repeat`` steps."""
    import torch

    from instembed.losses import build_loss, discriminative_loss
    from instembed.models import build_model
    from instembed.structures import Outputs

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    batch = make_batch(args.size, args.batch, dev)
    b, s = args.batch, args.size
    if kind == "network":
        arch, params = NETWORKS[name]
        model = build_model(arch, 1, heads={"embedding": 8}, **params).to(dev).train()
        loss = build_loss("discriminative")

        def step():
            out = model(batch["image"], batch["coords_origin"])
            total, _ = loss(out, batch)
            total.backward()
            return total

        n_params = sum(p.numel() for p in model.parameters())
    else:
        g = torch.Generator(device="cpu").manual_seed(0)

        def leaf(*shape, positive=False, unit=False):
            t = torch.randn(*shape, generator=g)
            if positive:
                t = t.abs() + 0.5
            if unit:
                t = torch.sigmoid(t)
            return t.to(dev).requires_grad_(True)

        from instembed.structures import pixel_coordinates

        u = pixel_coordinates(b, (s, s), None, 1 / 64, dev)
        outs = Outputs(
            embedding=leaf(b, 8 if name != "spatial" else 2, s, s),
            seed=leaf(b, 1, s, s, unit=True),
            sigma=leaf(b, 1, s, s, positive=True),
            center=leaf(b, 1, s, s, unit=True),
            offset=leaf(b, 2, s, s),
            semantic=leaf(b, 2, s, s),
        )
        if name == "spatial":
            outs.embedding = (u + 0.1 * outs.embedding.detach()).requires_grad_(True)
        if name == "discriminative_loop":

            def step():
                total = loop_discriminative(outs.embedding, batch["labels"])
                total.backward()
                return total

        else:
            loss = build_loss(name, **LOSSES[name])
            if name == "center_offset":  # targets come from the data stage, not timed
                from instembed.losses.targets import build_targets

                per = [build_targets("center_offset", batch["labels"][i]) for i in range(b)]
                batch.update({k: torch.stack([p[k] for p in per]) for k in per[0]})

            def step():
                total, _ = loss(outs, batch)
                total.backward()
                return total

        n_params = 0
        if name in ("discriminative", "discriminative_loop"):  # value check vs the peer
            ref, _ = discriminative_loss(outs.embedding.detach(), batch["labels"])
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    base = reset_peak(dev)
    value = float(step())  # warm-up
    times = []
    for _ in range(args.repeat):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    rec = {
        "table": kind,
        "name": name,
        "device": dev,
        "size": s,
        "batch": b,
        "threads": torch.get_num_threads(),
        "step_s": statistics.median(times),
        "peak_mb": (peak_bytes(dev) - base) / 2**20,
        "loss": value,
    }
    if n_params:
        rec["params"] = n_params
    if kind == "loss" and name in ("discriminative", "discriminative_loop"):
        rec["value_check"] = float(ref)
    return rec


def flops_table() -> list[dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from instembed.models import build_model

    rows = []
    for name, (arch, params) in NETWORKS.items():
        for heads in ({"embedding": 8}, {"embedding": 2, "sigma": 1, "seed": 1}):
            model = build_model(arch, 1, heads=heads, **params).eval()
            x = torch.zeros(1, 1, 512, 512)
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(x)
            rows.append(
                {
                    "table": "size",
                    "name": name,
                    "heads": "+".join(heads),
                    "params": sum(p.numel() for p in model.parameters()),
                    "gflops_512": fc.get_total_flops() / 1e9,
                    "receptive_field": model.receptive_field,
                    "size_divisor": model.size_divisor,
                }
            )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--networks", nargs="*", default=list(NETWORKS))
    p.add_argument("--losses", nargs="*", default=list(LOSSES))
    p.add_argument("--flops", action="store_true", help="also parameter counts and FLOPs at 512")
    p.add_argument("--quick", action="store_true", help="128 x 128, batch 2, 2 repeats")
    p.add_argument("--one", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeat = 128, 2, 2
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args)))
        return 0

    import torch

    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": args.threads or torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "loadavg_1min": os.getloadavg()[0],
            }
        )
    )
    rows = []
    jobs = [("network", n) for n in args.networks] + [("loss", n) for n in args.losses]
    for kind, name in jobs:
        cmd = [sys.executable, __file__, "--one", kind, name, "--size", str(args.size)]
        cmd += ["--batch", str(args.batch), "--repeat", str(args.repeat), "--device", args.device]
        cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(json.dumps({"table": kind, "name": name, "error": res.stderr.strip()[-400:]}))
            continue
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(rec))
        rows.append(rec)
    if args.flops:
        for rec in flops_table():
            print(json.dumps(rec))
            rows.append(rec)

    nets = [r for r in rows if r["table"] == "network"]
    if nets:
        print(
            f"\nnetworks: forward + discriminative loss + backward, {args.size}x{args.size}, "
            f"batch {args.batch}, {args.device}"
        )
        print(f"{'network':<12}{'params':>12}{'step s':>10}{'peak MB':>10}")
        for r in nets:
            print(f"{r['name']:<12}{r['params']:>12,}{r['step_s']:>10.3f}{r['peak_mb']:>10.0f}")
    losses = {r["name"]: r for r in rows if r["table"] == "loss"}
    if losses:
        print(f"\nlosses alone: forward + backward, {args.size}x{args.size}, batch {args.batch}")
        print(f"{'loss':<22}{'step s':>10}{'peak MB':>10}{'value':>12}")
        for r in losses.values():
            print(f"{r['name']:<22}{r['step_s']:>10.4f}{r['peak_mb']:>10.0f}{r['loss']:>12.4f}")
        if "discriminative" in losses and "discriminative_loop" in losses:
            a, b = losses["discriminative"], losses["discriminative_loop"]
            ratio = b["step_s"] / a["step_s"]
            cmp = {
                "table": "comparison",
                "name": "discriminative vs per-instance loop",
                "ratio_loop_over_instembed": ratio,
                "value_diff": abs(a["loss"] - b["loss"]),
            }
            print(json.dumps(cmp))
            print(
                f"discriminative: instembed {a['step_s']:.4f} s, loop {b['step_s']:.4f} s, "
                f"ratio {ratio:.1f}x, |value diff| {cmp['value_diff']:.2e}"
            )
    size = [r for r in rows if r["table"] == "size"]
    if size:
        print("\nnetworks at 512x512, batch 1 (forward)")
        print(f"{'network':<12}{'heads':<22}{'params':>12}{'GFLOPs':>10}{'RF px':>8}{'div':>5}")
        for r in size:
            print(
                f"{r['name']:<12}{r['heads']:<22}{r['params']:>12,}{r['gflops_512']:>10.2f}"
                f"{r['receptive_field']:>8}{r['size_divisor']:>5}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
