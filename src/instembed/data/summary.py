"""Counts and facts about a data set (what ``instembed data info`` prints)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from instembed.data.sample import Sample

log = logging.getLogger(__name__)


def summarize(
    samples: Sequence[Sample], progress: Callable[[int, int], None] | None = None
) -> dict:
    """Decode every sample and count.

    Returns a JSON-ready dict: ``format``, ``images``, ``instances`` (total),
    ``instances_per_image`` (``min``/``mean``/``max``), ``empty_images``, ``overlap_pixels``
    (pixels in more than one instance; for label-image readers that resolved overlaps, the
    count they reported), ``ignore_pixels``, ``image_sizes`` (``"HxW": count``),
    ``image_dtypes``, ``channels``, ``label_encodings``, ``has_semantic``, ``classes``
    (``class id: instance count`` when known), ``bad`` (items skipped on open) and
    ``per_image`` (name, instances, overlap pixels).
    """
    counts: list[int] = []
    sizes: Counter = Counter()
    dtypes: Counter = Counter()
    channels: Counter = Counter()
    encodings: Counter = Counter()
    classes: Counter = Counter()
    overlap = ignore = 0
    semantic = False
    per_image = []
    n = len(samples)
    for i in range(n):
        s = samples[i]
        k = s.num_instances
        ov = int(s.overlap_mask().sum()) + int(s.meta.get("overlap_pixels", 0))
        counts.append(k)
        overlap += ov
        ignore += int(s.ignore.sum()) if s.ignore is not None else 0
        h, w = s.shape
        sizes[f"{h}x{w}"] += 1
        dtypes[str(s.meta.get("image_dtype", s.image.dtype))] += 1
        channels[int(s.image.shape[0])] += 1
        encodings[str(s.meta.get("label_encoding", "stack" if s.is_stack else "ids"))] += 1
        semantic |= s.semantic is not None
        if s.classes is not None:
            classes.update(int(c) for c in np.asarray(s.classes).ravel())
        per_image.append({"name": s.meta.get("name", s.path), "instances": k, "overlap_pixels": ov})
        if progress is not None:
            progress(i + 1, n)
    arr = np.asarray(counts, np.int64)
    return {
        "format": getattr(samples, "format", None),
        "images": n,
        "instances": int(arr.sum()),
        "instances_per_image": {
            "min": int(arr.min()) if n else 0,
            "mean": float(arr.mean()) if n else 0.0,
            "max": int(arr.max()) if n else 0,
        },
        "empty_images": int((arr == 0).sum()),
        "overlap_pixels": overlap,
        "ignore_pixels": ignore,
        "image_sizes": dict(sizes.most_common()),
        "image_dtypes": dict(dtypes.most_common()),
        "channels": {str(k): v for k, v in channels.most_common()},
        "label_encodings": dict(encodings.most_common()),
        "has_semantic": semantic,
        "classes": {str(k): v for k, v in sorted(classes.items())},
        "bad": [{"item": w, "problem": p} for w, p in getattr(samples, "bad", [])],
        "per_image": per_image,
    }
