"""Clustering speed, memory and accuracy: instembed against scikit-learn and EmbedSeg.

Synthetic maps: K instances (discs clipped to the Voronoi cells of K random sites; the rest is
background) at 256x256 (K=20), 512x512 (K=50) and 1024x2048 (K=100).

* 8-D embeddings: instance centre (random, scale 3) + Gaussian noise 0.1; the true foreground is
  given to every method. instembed threshold / seeded / meanshift / kmeans / hdbscan against
  scikit-learn MeanShift (bin seeding, same bandwidth) and HDBSCAN on all foreground pixels
  (capped to the sizes where they finish in reasonable time; the cap is printed).
* 2-D spatial embeddings (SpatialEmbeddings / EmbedSeg layout: tanh(offset) + coordinates,
  sigma with scale exp(10 sigma), sigmoid seed): instembed seeded against EmbedSeg's
  ``Cluster.cluster`` on the same prediction. EmbedSeg is not installed (its 0.2.5 wheel does not
  import); with ``--embedseg-wheel`` the ``Cluster`` class is read from the wheel file and run.
  Get the wheel with ``pip download embedseg==0.2.5 --no-deps -d DIR``.
* center/offset grouping at 1024x2048 with 200 centres: instembed against the dense
  (centres x pixels) distance table of detectron2's Panoptic-DeepLab post-processing (one run:
  it takes minutes and ~5 GB).

The instembed clusterers run on one intra-op thread whatever ``--threads`` says (see
``instembed.cluster.threads``); the peers use ``--threads``. Run with ``--threads 1`` and
``--threads 2`` to see both.

Every measurement runs in a forked child: time = median of ``--repeats`` runs (wall clock, plus
process CPU time), peak memory = peak RSS of the child minus its RSS before the call, ARI against
the truth on foreground pixels (sklearn.metrics.adjusted_rand_score). Prints one JSON line per
measurement and a table with ratios against the peers.

    python benchmarks/cluster_speed.py [--quick] [--threads N] [--embedseg-wheel PATH]
"""

# ruff: noqa: B023  (the closures are measured inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import ast
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import time
import zipfile

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from instembed.cluster import (
    cluster_embeddings,
    group_pixels,
    nearest_center,
)
from instembed.structures import Outputs

SIZES = [((256, 256), 20), ((512, 512), 50), ((1024, 2048), 100)]


def scene(h, w, k, seed=0):
    """Instance label image (0 = background) of K discs clipped to Voronoi cells."""
    g = torch.Generator().manual_seed(seed)
    sites = torch.stack(
        [torch.randint(0, h, (k,), generator=g), torch.randint(0, w, (k,), generator=g)], 1
    ).float()
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    pix = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    idx, q2 = nearest_center(pix, sites)
    radius = 0.45 * math.sqrt(h * w / k)
    lab = torch.where(q2 <= radius * radius, idx + 1, 0).reshape(h, w)
    return lab, sites, q2.sqrt().reshape(h, w), radius


def embedding_8d(lab, k, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    h, w = lab.shape
    centers = torch.cat([torch.zeros(1, 8), torch.randn(k, 8, generator=g) * 3])
    return (centers[lab].permute(2, 0, 1) + 0.1 * torch.randn(8, h, w, generator=g)).contiguous()


def seed_map(lab, dist, radius):
    inside = 0.6 + 0.39 * torch.exp(-0.5 * (dist / (0.3 * radius)) ** 2)
    return torch.where(lab > 0, inside, torch.full_like(dist, 0.02))


def spatial_prediction(lab, sites, dist, radius, seed=0):
    """EmbedSeg layout (5, H, W): offset logits (x, y), sigma (x, y), seed logit; unit = 1/256."""
    g = torch.Generator().manual_seed(seed + 2)
    h, w = lab.shape
    u = 1.0 / 256
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    k = sites.shape[0]
    cs = torch.cat([torch.zeros(1, 2), sites])[lab]  # (H, W, 2) (y, x) of the own site
    ty = (cs[..., 0] - yy) * u + 1.5 * u * torch.randn(h, w, generator=g)
    tx = (cs[..., 1] - xx) * u + 1.5 * u * torch.randn(h, w, generator=g)
    off = torch.stack([tx, ty]).clamp(-0.999, 0.999)
    off = torch.where(lab > 0, off, torch.zeros_like(off))
    s = math.log(2) / (8 * u) ** 2  # kernel radius 8 px
    sigma = torch.full((2, h, w), math.log(s) / 10)
    seed_p = seed_map(lab, dist, radius).clamp(1e-4, 1 - 1e-4)
    pred = torch.cat([torch.atanh(off), sigma, torch.log(seed_p / (1 - seed_p))[None]])
    del k
    return pred, u


def instembed_from_prediction(pred, u):
    h, w = pred.shape[1:]
    xm = torch.linspace(0, (w - 1) * u, w).view(1, 1, -1).expand(1, h, w)
    ym = torch.linspace(0, (h - 1) * u, h).view(1, -1, 1).expand(1, h, w)
    emb = torch.tanh(pred[0:2]) + torch.cat([xm, ym])
    return Outputs(embedding=emb[None], seed=torch.sigmoid(pred[4:5])[None], sigma=pred[2:4][None])


def load_embedseg_cluster(wheel):
    """EmbedSeg's ``Cluster`` class, compiled from utils/utils.py inside the wheel (not installed,
    its other imports -- pandas, seaborn -- are not needed by this class)."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("utils/utils.py") and "3d" not in n)
        src = z.read(name).decode()
    tree = ast.parse(src)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Cluster")
    ns = {"torch": torch, "np": np}
    exec(compile(ast.Module(body=[cls], type_ignores=[]), f"{wheel}!{name}", "exec"), ns)
    return ns["Cluster"]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(conn, fn, repeats, threads):
    torch.set_num_threads(threads)
    before = _rss_mb()
    walls, cpus = [], []
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send((statistics.median(walls), statistics.median(cpus), peak - before, out))
    conn.close()


def measure(fn, repeats, threads, timeout=900):
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(False)
    p = ctx.Process(target=_child, args=(b, fn, repeats, threads))
    p.start()
    if not a.poll(timeout):
        p.kill()
        return None
    res = a.recv()
    p.join()
    return res


def ari(truth, labels):
    fg = truth > 0
    return float(adjusted_rand_score(truth[fg].numpy(), np.asarray(labels)[fg.numpy()]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256x256 and 512x512 only, 3 repeats")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--embedseg-wheel", default=None)
    ap.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds allowed per measurement (all repeats); longer ones are reported as timeout",
    )
    ap.add_argument(
        "--sklearn-max-pixels",
        type=int,
        default=300_000,
        help="run scikit-learn MeanShift only up to this many foreground pixels",
    )
    ap.add_argument(
        "--hdbscan-max-pixels",
        type=int,
        default=50_000,
        help="run scikit-learn HDBSCAN only up to this many foreground pixels",
    )
    args = ap.parse_args(argv)
    # the parent builds the inputs on one thread: a child forked after OpenMP started its worker
    # threads hangs at its first parallel region (GNU libgomp); each child sets --threads
    torch.set_num_threads(1)
    sizes = SIZES[:2] if args.quick else SIZES
    EmbedSegCluster = load_embedseg_cluster(args.embedseg_wheel) if args.embedseg_wheel else None
    load = os.getloadavg()
    print(json.dumps({"threads": args.threads, "loadavg_start": load, "cpus": os.cpu_count()}))
    rows = []

    def record(size, k, method, peer, res, truth, n_fg):
        if res is None:
            row = dict(
                size=size, k=k, method=method, peer=peer, fg_pixels=n_fg, timeout=args.timeout
            )
        else:
            wall, cpu, mem, labels = res
            row = dict(
                size=size,
                k=k,
                method=method,
                peer=peer,
                fg_pixels=n_fg,
                wall_s=round(wall, 4),
                cpu_s=round(cpu, 4),
                peak_mb=round(mem, 1),
                ari=round(ari(truth, labels), 4),
                load1=round(os.getloadavg()[0], 2),
            )
        print(json.dumps(row), flush=True)
        rows.append(row)

    for (h, w), k in sizes:
        size = f"{h}x{w}"
        lab, sites, dist, radius = scene(h, w, k)
        fg = lab > 0
        n_fg = int(fg.sum())
        emb = embedding_8d(lab, k)
        out8 = Outputs(
            embedding=emb[None],
            seed=seed_map(lab, dist, radius)[None, None],
            sigma=torch.full((1, 1, h, w), 0.6),
        )
        ours = {
            "threshold": lambda: cluster_embeddings(
                emb, "threshold", fg, delta_v=0.5, merge_radius=0.5
            ).labels.numpy(),
            "seeded": lambda: cluster_embeddings(
                out8, "seeded", fg, sigma_mode="std", min_size=36
            ).labels.numpy(),
            "meanshift": lambda: cluster_embeddings(
                emb, "meanshift", fg, bandwidth=1.0
            ).labels.numpy(),
            "kmeans": lambda: cluster_embeddings(emb, "kmeans", fg, k=k, n_init=1).labels.numpy(),
            "hdbscan": lambda: cluster_embeddings(
                emb, "hdbscan", fg, min_cluster_size=10
            ).labels.numpy(),
        }
        for name, fn in ours.items():
            record(
                size,
                k,
                f"instembed.{name}",
                False,
                measure(fn, args.repeats, args.threads, args.timeout),
                lab,
                n_fg,
            )

        pts = emb[:, fg].t().double().numpy()

        def sk_meanshift():
            from sklearn.cluster import MeanShift

            out = np.zeros((h, w), dtype=np.int64)
            out[fg.numpy()] = MeanShift(bandwidth=1.0, bin_seeding=True).fit_predict(pts) + 1
            return out

        def sk_hdbscan():
            from sklearn.cluster import HDBSCAN

            out = np.zeros((h, w), dtype=np.int64)
            out[fg.numpy()] = HDBSCAN(min_cluster_size=10).fit_predict(pts) + 1
            return out

        if n_fg <= args.sklearn_max_pixels:
            record(
                size,
                k,
                "sklearn.MeanShift(bin_seeding)",
                True,
                measure(sk_meanshift, args.repeats, args.threads, args.timeout),
                lab,
                n_fg,
            )
        else:
            print(json.dumps({"size": size, "skipped": "sklearn.MeanShift", "fg_pixels": n_fg}))
        if n_fg <= args.hdbscan_max_pixels:
            record(
                size,
                k,
                "sklearn.HDBSCAN",
                True,
                measure(sk_hdbscan, 1, args.threads, args.timeout),
                lab,
                n_fg,
            )
        else:
            print(json.dumps({"size": size, "skipped": "sklearn.HDBSCAN", "fg_pixels": n_fg}))

        # 2-D spatial embeddings, EmbedSeg layout
        pred, u = spatial_prediction(lab, sites, dist, radius)
        out2 = instembed_from_prediction(pred, u)
        record(
            size,
            k,
            "instembed.seeded(2-D, EmbedSeg maps)",
            False,
            measure(
                lambda: cluster_embeddings(out2, "seeded", min_size=36).labels.numpy(),
                args.repeats,
                args.threads,
                args.timeout,
            ),
            lab,
            n_fg,
        )
        if EmbedSegCluster is not None:

            def embedseg():
                c = EmbedSegCluster(h, w, (h - 1) * u, (w - 1) * u, "cpu")
                return c.cluster(pred, n_sigma=2, min_object_size=36).numpy().astype(np.int64)

            record(
                size,
                k,
                "EmbedSeg.Cluster.cluster",
                True,
                measure(embedseg, args.repeats, args.threads, args.timeout),
                lab,
                n_fg,
            )

    if not args.quick:
        # center/offset, 1024x2048, 200 centres
        h, w, k = 1024, 2048, 200
        lab, sites, _, _ = scene(h, w, k, seed=7)
        g = torch.Generator().manual_seed(8)
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        cs = torch.cat([torch.zeros(1, 2), sites])[lab]
        offset = torch.stack([cs[..., 0] - yy, cs[..., 1] - xx]) + torch.randn(2, h, w, generator=g)
        centers = sites.round().long()
        thing = lab > 0
        record(
            "1024x2048",
            k,
            "instembed.group_pixels(center_offset)",
            False,
            measure(
                lambda: group_pixels(centers, offset, thing).numpy(),
                args.repeats,
                args.threads,
                args.timeout,
            ),
            lab,
            int(thing.sum()),
        )

        def dense():
            # detectron2 Panoptic-DeepLab: (K, H*W) distances, argmin over K
            ctr = centers.float().view(k, 1, 2)
            loc = torch.stack([yy + offset[0], xx + offset[1]]).view(2, -1).t().unsqueeze(0)
            idx = torch.norm(ctr - loc, dim=-1).argmin(0).view(h, w) + 1
            return torch.where(thing, idx, 0).numpy()

        record(
            "1024x2048",
            k,
            "dense (K x pixels) table [detectron2]",
            True,
            measure(dense, 1, args.threads, args.timeout),
            lab,
            int(thing.sum()),
        )

    print(json.dumps({"loadavg_end": os.getloadavg()}))
    # table with ratios (peer time / instembed time of the comparable method)
    pair = {
        "sklearn.MeanShift(bin_seeding)": [
            "instembed.meanshift",
            "instembed.threshold",
            "instembed.seeded",
        ],
        "sklearn.HDBSCAN": ["instembed.hdbscan", "instembed.threshold"],
        "EmbedSeg.Cluster.cluster": ["instembed.seeded(2-D, EmbedSeg maps)"],
        "dense (K x pixels) table [detectron2]": ["instembed.group_pixels(center_offset)"],
    }
    print(
        f"\n{'size':>10} {'method':42} {'wall s':>8} {'cpu s':>7} {'peak MB':>8} {'ARI':>7}  ratio"
    )
    for r in rows:
        if r.get("timeout"):
            print(f"{r['size']:>10} {r['method']:42} timeout (> {r['timeout']:.0f} s)")
            continue
        ratio = ""
        if r["peer"]:
            for m in pair.get(r["method"], []):
                o = next(
                    (
                        x
                        for x in rows
                        if x["size"] == r["size"] and x["method"] == m and not x.get("timeout")
                    ),
                    None,
                )
                if o:
                    ratio += f" {r['wall_s'] / o['wall_s']:.1f}x vs {m.split('.', 1)[1]};"
        print(
            f"{r['size']:>10} {r['method']:42} {r['wall_s']:8.4f} {r['cpu_s']:7.4f} {r['peak_mb']:8.1f} {r['ari']:7.4f} {ratio}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
