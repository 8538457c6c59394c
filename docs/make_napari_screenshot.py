"""Make ``docs/images/napari_widget.png``: the instembed napari widget run on a BBBC039 image
with the shipped ``bbbc039-nuclei`` model, screenshot taken headless.

    python docs/make_napari_screenshot.py [IMAGE] [--out docs/images/napari_widget.png]

IMAGE defaults to the first BBBC039 image under ``$INSTEMBED_DATA`` (``../shared/data``).
Runs on Qt's offscreen platform; napari's canvas still needs OpenGL from an X display, so
without one run it under ``xvfb-run -a python docs/make_napari_screenshot.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]


def default_image() -> Path:
    root = Path(os.environ.get("INSTEMBED_DATA", REPO.parent / "shared" / "data"))
    images = sorted((root / "bbbc039").rglob("images/*.tif"))
    if not images:
        sys.exit(f"no BBBC039 image under {root / 'bbbc039'}; pass an image path")
    return images[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "napari_widget.png")
    ap.add_argument("--colors", type=int, default=128, help="palette size of the PNG")
    args = ap.parse_args()

    import napari
    import numpy as np
    from PIL import Image as PILImage
    from qtpy.QtWidgets import QApplication

    from instembed.data.io import read_image
    from instembed.napari._widget import SegmentWidget

    path = args.image or default_image()
    pixels = read_image(path)
    viewer = napari.Viewer(show=False, title="instembed")
    viewer.window.resize(1400, 860)
    viewer.add_image(
        pixels,
        name="BBBC039 nuclei",
        colormap="gray",
        contrast_limits=[float(np.percentile(pixels, 1)), float(np.percentile(pixels, 99.8))],
    )
    widget = SegmentWidget(viewer)
    widget.native.setMaximumWidth(440)
    viewer.window.add_dock_widget(widget, name="instembed: segment instances", area="right")
    widget.device.value = "cpu"
    worker = widget.run()
    if worker is None:
        sys.exit(f"the widget refused to run: {widget.last_message}")
    app = QApplication.instance()
    while widget.worker is not None:  # the GUI loop runs while the worker segments
        app.processEvents()
        time.sleep(0.05)
    labels = viewer.layers["BBBC039 nuclei instances"]
    labels.contour = 0
    labels.opacity = 0.45
    viewer.layers.selection.active = labels
    print(widget.last_message[1])
    app.processEvents()
    viewer.reset_view()
    app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    img = PILImage.fromarray(np.asarray(shot)[..., :3])
    img = img.quantize(colors=args.colors, method=PILImage.Quantize.MEDIANCUT, dither=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"{args.out}: {img.size[0]} x {img.size[1]} px, {args.out.stat().st_size // 1024} KB")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
