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

4. **throughput** (``--throughput``): the engine's real training step
   (:meth:`instembed.engine.trainer.Trainer.train_step`, batches from its data loader, so
   augmentation and data-loader workers count) on the shipped models' configs
   (``src/instembed/pretrained/<name>.json``), on real images of the dataset (the first
   ``--images`` training images of the recorded split in ``../shared/data``, or synthetic images
   of the same size when the data are absent). Each variant (torch threads, interop threads,
   data-loader workers, batch size, channels-last, CPU bf16 autocast, ``torch.compile``,
   allocator preload, glibc malloc settings) runs in its own child process, each between two
   runs of the default (D A D B D ... D, the variants' order reversed every other round) over
   ``--rounds`` rounds; the ratio of a variant run is (mean s/image of the two default runs
   around it) / (its s/image), so machine load biases both alike, and the table shows the median
   over rounds (> 1: the variant is faster). JSON lines go to ``benchmarks/results/
   train_throughput.json``, then a table is printed.

    python benchmarks/train_step.py --throughput                 # all variants, three models
    python benchmarks/train_step.py --throughput --quick         # bbbc039 only, 2 rounds
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


# --------------------------------------------------------------------------- throughput
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = {  # name -> (dataset, image size of the synthetic stand-in when the data are absent)
    "bbbc039-nuclei": ("bbbc039", (520, 696)),
    "dsb2018-nuclei": ("dsb2018", (256, 320)),
    "bbbc010-worms": ("bbbc010", (520, 696)),
}
# name -> settings changed from the default (torch threads 1, interop default, workers 0,
# shipped batch size, fp32, contiguous, eager, glibc malloc): the shipped recipes' settings
VARIANTS = {
    "default": {},
    "threads2": {"threads": 2},
    "interop1": {"interop": 1},
    "workers1": {"workers": 1},
    "workers2": {"workers": 2},
    "batch8": {"batch": 8},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True, "max_steps": 1},  # emulated bf16 is ~25x slower here: 1 step
    "compile": {"compile": True},
    "jemalloc": {"preload": "jemalloc"},
    "tcmalloc": {"preload": "tcmalloc"},
    "mimalloc": {"preload": "mimalloc"},
    # glibc malloc kept from returning large blocks to the kernel (mmap / trim), no preload
    "glibc_tuned": {
        "env": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    },
}
ALLOCATORS = {
    "jemalloc": "libjemalloc.so.2",
    "tcmalloc": "libtcmalloc_minimal.so.4",
    "mimalloc": "libmimalloc.so",
}


def find_allocator(name: str, given: list[str]) -> str | None:
    """Path of allocator ``name``: from ``--allocator NAME=PATH``, else ``ldconfig -p``."""
    for item in given:
        key, _, path = item.partition("=")
        if key == name and os.path.isfile(path):
            return path
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return None
    for line in listing.splitlines():
        if ALLOCATORS[name].split(".so")[0] + ".so" in line and "=>" in line:
            return line.split("=>")[1].strip()
    return None


def shipped_config(name: str, variant: dict):
    from instembed.engine.config import config_from_dict

    with open(os.path.join(REPO, "src", "instembed", "pretrained", f"{name}.json")) as fh:
        data = json.load(fh)["config"]
    data["run"].update(
        device="cpu", progress=False, tensorboard=False, val_every=0, ckpt_every=0, log_every=0
    )
    data["optim"].update(bf16=variant.get("bf16", False))
    data["optim"].update(channels_last=variant.get("channels_last", False))
    data["run"]["compile"] = variant.get("compile", False)
    data["data"]["num_workers"] = variant.get("workers", 0)
    data["data"]["batch_size"] = variant.get("batch", data["data"]["batch_size"])
    return config_from_dict(data)


def training_samples(cfg, dataset: str, n: int, synth_size) -> tuple[list, str]:
    """The first ``n`` training images of the recorded split (synthetic ones if absent)."""
    root = os.environ.get("INSTEMBED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
    path = os.path.join(root, dataset)
    if os.path.isdir(path):
        from instembed.data.readers import open_dataset
        from instembed.data.splits import split_dataset

        reader = open_dataset(path, format=cfg.data.format, **cfg.data.reader_params)
        train_view, _ = split_dataset(reader, dataset)
        return [train_view[i] for i in range(min(n, len(train_view)))], f"{dataset} (real)"
    from instembed.data.synth import make_samples

    samples = make_samples("touching_cells", n, size=synth_size, seed=0, n_cells=(25, 35))
    return samples, f"synthetic {synth_size[0]}x{synth_size[1]}"


def run_throughput_one(name: str, vname: str, args) -> dict:
    """One variant of one shipped model in this process: warm up, then time real steps."""
    import tempfile

    import torch

    variant = VARIANTS[vname]
    torch.set_num_threads(variant.get("threads", args.threads or 1))
    if "interop" in variant:
        torch.set_num_interop_threads(variant["interop"])
    from instembed.data.dataset import InstanceDataset
    from instembed.engine.build import train_transform
    from instembed.engine.trainer import Trainer

    cfg = shipped_config(name, variant)
    dataset, synth_size = SHIPPED[name]
    samples, source = training_samples(cfg, dataset, args.images, synth_size)
    train_set = InstanceDataset(
        samples, transform=train_transform(cfg.data), targets=tuple(cfg.data.targets)
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, train_set=train_set, val_samples=[])
        batches = trainer._batches()
        trainer.net.train()
        t0 = time.perf_counter()
        steps = min(args.steps, variant.get("max_steps", args.steps))
        for _ in range(min(args.warmup, steps)):
            trainer.train_step(next(batches))
        warmup_s = time.perf_counter() - t0
        times, losses = [], []
        t_all = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, _ = trainer.train_step(next(batches))
            times.append(time.perf_counter() - t0)
            losses.append(loss)
        total = time.perf_counter() - t_all
        compiled = getattr(trainer.net, "is_compiled", None)
        del batches  # ends the loader's workers
    bsz = cfg.data.batch_size
    return {
        "table": "throughput",
        "model": name,
        "variant": vname,
        "data": source,
        "batch": bsz,
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "workers": cfg.data.num_workers,
        "preload": os.environ.get("LD_PRELOAD", ""),
        "compiled": compiled,
        "steps": steps,
        "step_s": total / steps,
        "step_s_median": statistics.median(times),
        "images_per_s": bsz * steps / total,
        "warmup_s": warmup_s,
        "mean_loss": statistics.fmean(losses),
        "loadavg_1min": os.getloadavg()[0],
    }


def throughput(args) -> int:
    """Interleaved rounds of child processes; JSON lines to the results file, then the table."""
    import torch

    from instembed.engine.speed import cpu_has_native_bf16

    models = args.models or (["bbbc039-nuclei"] if args.quick else list(SHIPPED))
    names = args.variants or list(VARIANTS)
    if "default" not in names:
        names = ["default", *names]
    variants, skipped = [], {}
    for v in names:
        pre = VARIANTS[v].get("preload")
        if pre and find_allocator(pre, args.allocator) is None:
            skipped[v] = f"{ALLOCATORS[pre]} not found (ldconfig -p, --allocator)"
        else:
            variants.append(v)
    os.makedirs(RESULTS, exist_ok=True)
    out_path = args.out or os.path.join(RESULTS, "train_throughput.json")
    head = {
        "table": "machine",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "loadavg_1min": os.getloadavg()[0],
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "skipped": skipped,
        "caveat": "shared machine: absolute times depend on the load; each variant run is "
        "compared with the default runs right before and after it (D A D B ... D), medians over "
        "rounds",
    }
    runs: list[dict] = []
    with open(out_path, "a") as fh:  # JSON lines; each run starts with its "machine" line
        fh.write(json.dumps(head) + "\n")
        print(json.dumps(head), flush=True)
        for r in range(args.rounds):
            for name in models:
                others = [v for v in variants if v != "default"]
                others = others if r % 2 == 0 else others[::-1]
                # A B A C A ... A: each variant between two default runs
                order = [x for v in others for x in ("default", v)] + ["default"]
                for v in order:
                    env = dict(os.environ)
                    pre = VARIANTS[v].get("preload")
                    if pre:
                        env["LD_PRELOAD"] = find_allocator(pre, args.allocator)
                    env.update(VARIANTS[v].get("env", {}))
                    cmd = [sys.executable, __file__, "--one-throughput", name, v]
                    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                    cmd += ["--images", str(args.images), "--threads", str(args.threads)]
                    try:
                        res = subprocess.run(
                            cmd, capture_output=True, text=True, env=env, timeout=args.timeout
                        )
                        ok, err = res.returncode == 0, res.stderr.strip()[-300:]
                    except subprocess.TimeoutExpired:
                        ok, err = False, f"timed out after {args.timeout} s"
                    if ok:
                        rec = {"round": r, **json.loads(res.stdout.strip().splitlines()[-1])}
                    else:
                        rec = {"round": r, "table": "throughput", "model": name, "variant": v}
                        rec["error"] = err
                    runs.append(rec)
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    print(json.dumps(rec), flush=True)
        summary = summarize(runs, models, variants)
        for rec in summary:
            fh.write(json.dumps(rec) + "\n")
    print_throughput(summary, head)
    return 0


def _default_near(runs: list[dict], i: int, step: int) -> list[dict]:
    """The nearest default run of the same model and round as ``runs[i]`` in direction ``step``
    (itself for a default run), as a list of zero or one."""
    r, j = runs[i], i
    if r["variant"] == "default":
        return [r] if step < 0 else []
    while 0 <= j + step < len(runs):
        j += step
        d = runs[j]
        if d["model"] == r["model"] and d["round"] == r["round"] and d["variant"] == "default":
            return [d]
    return []


def summarize(runs: list[dict], models: list[str], variants: list[str]) -> list[dict]:
    """Per model and variant: medians over rounds, and the median ratio to the default runs
    of the same round right before and after it (their mean)."""
    rows = []
    for i, r in enumerate(runs):  # the default runs of the same round right before and after
        near = [
            d["step_s"] / d["batch"]
            for d in (*_default_near(runs, i, -1), *_default_near(runs, i, 1))
            if "step_s" in d
        ]
        r["_base"] = statistics.fmean(near) if near else None
    for name in models:
        for v in variants:
            mine = [r for r in runs if r["model"] == name and r["variant"] == v and "step_s" in r]
            if not mine:
                rows.append({"table": "throughput_summary", "model": name, "variant": v})
                continue
            ratios = [r["_base"] / (r["step_s"] / r["batch"]) for r in mine if r["_base"]]
            rows.append(
                {
                    "table": "throughput_summary",
                    "model": name,
                    "variant": v,
                    "n": len(mine),
                    "batch": mine[0]["batch"],
                    "step_s": statistics.median(r["step_s"] for r in mine),
                    "images_per_s": statistics.median(r["images_per_s"] for r in mine),
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_min": min(ratios) if ratios else None,
                    "ratio_max": max(ratios) if ratios else None,
                    "warmup_s": statistics.median(r["warmup_s"] for r in mine),
                    "mean_loss": statistics.median(r["mean_loss"] for r in mine),
                    "compiled": mine[0].get("compiled"),
                }
            )
    return rows


def print_throughput(rows: list[dict], head: dict) -> None:
    print(
        f"\ntraining throughput, Trainer.train_step on the shipped configs, "
        f"{head['cpus']} CPUs, torch {head['torch']}, native bf16: {head['native_bf16']}"
    )
    print(
        f"medians over {head['rounds']} interleaved rounds of {head['steps']} steps "
        f"(after {head['warmup']} warm-up); ratio = s/image of the default runs around it / "
        "variant s/image (> 1 faster), [min-max]"
    )
    print(f"CAVEAT: {head['caveat']}; load average at start {head['loadavg_1min']:.2f}")
    print(
        f"{'model':<16}{'variant':<15}{'batch':>6}{'s/step':>9}{'img/s':>8}{'ratio':>7}"
        f"{'range':>13}{'warm-up s':>11}{'loss':>9}"
    )
    for r in rows:
        if "step_s" not in r:
            print(f"{r['model']:<16}{r['variant']:<15}  failed (see the JSON lines)")
            continue
        rng = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if r["ratio"] is not None else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(
            f"{r['model']:<16}{r['variant']:<15}{r['batch']:>6}{r['step_s']:>9.3f}"
            f"{r['images_per_s']:>8.2f}{ratio:>7}{rng:>13}{r['warmup_s']:>11.1f}"
            f"{r['mean_loss']:>9.4f}"
        )
    for v, why in head["skipped"].items():
        print(f"{v}: skipped, {why}")


def summarize_file(path: str) -> int:
    """Table of the last run recorded in a JSON lines file (also of a run cut short)."""
    with open(path) as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    start = max(i for i, rec in enumerate(lines) if rec.get("table") == "machine")
    head, runs = lines[start], [r for r in lines[start + 1 :] if r.get("table") == "throughput"]
    models = list(dict.fromkeys(r["model"] for r in runs))
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    head["rounds"] = len({r["round"] for r in runs})
    print_throughput(summarize(runs, models, variants), head)
    return 0


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
    t = p.add_argument_group("throughput (--throughput)")
    t.add_argument("--throughput", action="store_true", help="training-throughput ratios")
    t.add_argument("--models", nargs="*", choices=list(SHIPPED), help="shipped model configs")
    t.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: all")
    t.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    t.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    t.add_argument("--images", type=int, default=16, help="training images loaded (16)")
    t.add_argument("--timeout", type=float, default=600, help="seconds per child run")
    t.add_argument(
        "--allocator",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="allocator library to preload (jemalloc / tcmalloc / mimalloc)",
    )
    t.add_argument("--out", help="JSON lines file (default benchmarks/results/...)")
    p.add_argument(
        "--one-throughput", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS
    )
    t.add_argument("--summarize", metavar="FILE", help="print the table of a results file")
    args = p.parse_args(argv)
    if args.summarize:
        return summarize_file(args.summarize)
    if args.one_throughput:
        print(json.dumps(run_throughput_one(*args.one_throughput, args)))
        return 0
    if args.throughput:
        if args.quick:
            args.rounds = min(args.rounds, 2)
        return throughput(args)
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
