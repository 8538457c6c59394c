"""``street``: a multi-class street-like panoptic scene (stuff regions plus thing instances)."""

from __future__ import annotations

import numpy as np

from instembed.data.sample import Sample
from instembed.data.synth.common import _int_count, _keep_largest_component, _shared_border

#: class names of the ``street`` kind, index = class id
STREET_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "sky",
    "car",
    "person",
    "sign",
)
STREET_STUFF: tuple[int, ...] = (0, 1, 2, 3)
STREET_THINGS: tuple[int, ...] = (4, 5, 6)

_STREET_COLOURS = np.array(
    [
        [0.35, 0.35, 0.38],  # road
        [0.62, 0.58, 0.55],  # sidewalk
        [0.55, 0.4, 0.32],  # building
        [0.55, 0.75, 0.95],  # sky
        [0.8, 0.1, 0.1],  # car (varied per instance)
        [0.9, 0.75, 0.2],  # person
        [0.95, 0.95, 0.1],  # sign
    ]
)


def _make_street(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    n_cars: int | tuple[int, int] = (1, 4),
    n_people: int | tuple[int, int] = (1, 3),
    n_signs: int | tuple[int, int] = (0, 2),
    min_area: int = 12,
    noise: float = 0.03,
) -> Sample:
    """A multi-class street-like scene: stuff regions plus thing instances (panoptic).

    Stuff classes (semantic only): road, sidewalk, building, sky. Thing classes (instances with a
    class each): car (rounded box on the road), person (body + head on the sidewalk or road),
    sign (disc on a pole). Class ids index :data:`STREET_CLASSES`. Things further away (higher in
    the image) are drawn first so nearer ones occlude them; a thing left with fewer than
    ``min_area`` visible pixels redraws the scene, so instance counts are exact. ``semantic`` has
    a class everywhere (no void pixels); ``classes[k]`` is the class of instance ``k + 1``.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _attempt in range(100):
        horizon = int(rng.uniform(0.32, 0.45) * h)
        kerb = horizon + max(int(0.12 * h), 2)
        semantic = np.zeros((h, w), np.int64)  # road
        semantic[horizon:kerb] = 1  # sidewalk
        # skyline: blocks of random height
        x = 0
        while x < w:
            bw = int(rng.uniform(0.1, 0.3) * w) + 1
            top = int(rng.uniform(0.05, 0.9) * horizon)
            semantic[:top, x : x + bw] = 3
            semantic[top:horizon, x : x + bw] = 2
            x += bw
        things: list[tuple[float, int, np.ndarray]] = []  # (bottom y, class, mask)
        for _ in range(_int_count(rng, n_cars, "n_cars")):
            bottom = rng.uniform(kerb + 0.1 * (h - kerb), h - 1)
            scale = 0.3 + 0.7 * (bottom - horizon) / (h - horizon)
            ch, cw = 0.18 * h * scale, 0.3 * w * scale
            cx = rng.uniform(0, w)
            top = bottom - ch
            body = (np.abs(xx - cx) <= cw / 2) & (yy >= top + 0.35 * ch) & (yy <= bottom)
            cabin = (np.abs(xx - cx) <= cw / 3) & (yy >= top) & (yy < top + 0.35 * ch)
            things.append((bottom, 4, body | cabin))
        for _ in range(_int_count(rng, n_people, "n_people")):
            bottom = rng.uniform(horizon + 2, h - 1)
            scale = 0.3 + 0.7 * (bottom - horizon) / (h - horizon)
            ph, pw = 0.3 * h * scale, 0.045 * w * scale + 1
            cx = rng.uniform(0, w)
            body = ((xx - cx) / pw) ** 2 + ((yy - (bottom - 0.4 * ph)) / (0.4 * ph)) ** 2 <= 1
            hr = 0.1 * ph + 0.5
            head = (xx - cx) ** 2 + (yy - (bottom - 0.8 * ph - hr)) ** 2 <= hr**2
            things.append((bottom, 5, body | head))
        for _ in range(_int_count(rng, n_signs, "n_signs")):
            bottom = rng.uniform(horizon + 1, kerb)
            r = rng.uniform(0.03, 0.06) * min(h, w) + 1
            cx = rng.uniform(0, w)
            cy = bottom - 0.25 * h
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            pole = (np.abs(xx - cx) <= 0.6) & (yy > cy) & (yy <= bottom)
            things.append((bottom, 6, disc | pole))
        things.sort(key=lambda t: t[0])
        labels = np.zeros((h, w), np.int32)
        for k, (_b, _c, m) in enumerate(things, start=1):
            labels[m] = k
        labels = _keep_largest_component(labels)
        areas = np.bincount(labels.ravel(), minlength=len(things) + 1)[1:]
        if (areas >= min_area).all():
            break
    else:
        raise ValueError(
            f"could not draw the requested things with >= {min_area} visible px each in a "
            f"{h}x{w} image; ask for fewer things or a larger size"
        )
    classes = np.array([c for _b, c, _m in things], np.int64)
    for k, c in enumerate(classes, start=1):
        semantic[labels == k] = c
    image = _STREET_COLOURS[semantic].transpose(2, 0, 1).copy()
    for k, c in enumerate(classes, start=1):
        if c == 4:
            image[:, labels == k] = rng.uniform(0.1, 0.9, 3)[:, None]
    image[:, _shared_border(labels)] *= 0.5
    image *= 1 + 0.08 * rng.standard_normal((1, h, w))
    image += rng.normal(0, noise, image.shape)
    return Sample(
        image=np.clip(image, 0, 1).astype(np.float32),
        instances=labels,
        semantic=semantic,
        classes=classes,
        meta={
            "class_names": STREET_CLASSES,
            "thing_classes": STREET_THINGS,
            "stuff_classes": STREET_STUFF,
        },
    )
