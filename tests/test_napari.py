"""The napari plugin, headless (Qt offscreen): the widget runs :func:`instembed.segment` off the
GUI thread and adds its labels; the reader opens what ``instembed predict`` writes; the sample
data loads; bad input gives a message and leaves the viewer usable; cancel says so.

Uses napari's ``make_napari_viewer`` fixture and pytest-qt's ``qtbot``; the model is the
shipped ``bbbc039-nuclei`` on small synthetic crops (CPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import select  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import _under_ci, require  # noqa: E402

require("napari", "the napari plugin tests")
require("pytestqt", "pytest-qt drives the napari widget")

from napari.layers import Labels  # noqa: E402

import instembed  # noqa: E402
from instembed.napari import _core as core  # noqa: E402
from instembed.napari._reader import get_reader  # noqa: E402
from instembed.napari._widget import SegmentWidget  # noqa: E402

MODEL = "bbbc039-nuclei"


def _die_with_parent() -> None:
    """In the Xvfb child: get SIGTERM when the test process ends (Linux prctl
    PR_SET_PDEATHSIG), so the server outlives Qt's connection but not the run."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except OSError:
        pass


@pytest.fixture(scope="module", autouse=True)
def gl_display():
    """napari's canvas needs OpenGL, which Qt's offscreen platform gets from an X display: use
    $DISPLAY when set, else start a private Xvfb (it ends with the test process); without
    either, skip (fail under CI: install xvfb or run under xvfb-run)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield None
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        msg = "napari's canvas needs OpenGL: no $DISPLAY and no Xvfb (apt-get install xvfb)"
        if _under_ci():
            pytest.fail(msg + " -- required under CI", pytrace=False)
        pytest.skip(msg)
    r, w = os.pipe()
    cmd = [xvfb, "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"]
    proc = subprocess.Popen(
        cmd,
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    os.close(w)
    number = b""
    while not number.endswith(b"\n") and select.select([r], [], [], 20)[0]:
        chunk = os.read(r, 16)
        if not chunk:
            break
        number += chunk
    os.close(r)
    if not number.strip():
        proc.kill()
        pytest.fail(f"Xvfb did not start (exit code {proc.poll()})")
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    yield os.environ["DISPLAY"]
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:  # else Qt still uses it: it ends with this process
        del os.environ["DISPLAY"]
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    from instembed.data.synth import make_samples

    s = make_samples("touching_cells", 1, (96, 96), seed=3, n_cells=(8, 10))[0]
    return (s.image[0] * 4000 + 300).astype(np.uint16)  # a 16-bit microscope-like image


@pytest.fixture
def widget(make_napari_viewer, monkeypatch):
    """The docked widget on CPU, with napari's notifications recorded."""
    from instembed.napari import _widget as W

    shown = []
    for name in ("show_error", "show_warning", "show_info"):
        monkeypatch.setattr(W, name, lambda msg, _n=name: shown.append((_n, msg)))
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="instembed")
    w.device.value = "cpu"
    w.shown = shown
    return w


def _run(widget, qtbot, timeout=60_000):
    worker = widget.run()
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
    return worker


def test_widget_adds_the_labels_segment_gives(widget, qtbot, cells, monkeypatch):
    viewer = widget.viewer
    threads = []
    real_segment = instembed.segment

    def segment(*args, **kw):  # what the widget calls, and on which thread
        threads.append(threading.current_thread())
        return real_segment(*args, **kw)

    monkeypatch.setattr(instembed, "segment", segment)
    viewer.add_image(cells, name="cells", scale=(0.5, 0.5))
    assert widget.image.value is viewer.layers["cells"]
    assert widget.cluster_overrides() == {}
    defaults = widget.info.thresholds  # the model's values fill the form
    assert widget.cluster["seed_thresh"].value == defaults["seed_thresh"]
    widget.dense["seed"].value = True
    _run(widget, qtbot)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert widget.image.value is viewer.layers["cells"]  # result layers are not new inputs

    expected = real_segment(cells, MODEL, device="cpu")
    layer = viewer.layers["cells instances"]
    assert isinstance(layer, Labels)
    assert expected.num_instances >= 3
    np.testing.assert_array_equal(layer.data, expected.labels)
    assert tuple(layer.scale) == (0.5, 0.5)  # drawn over the image
    feats = layer.features.set_index("index")
    np.testing.assert_allclose(feats.loc[1:, "score"].to_numpy(), expected.scores, rtol=1e-5)
    seed = viewer.layers["cells seed"].data
    assert seed.shape == cells.shape and 0 <= seed.min() and seed.max() <= 1
    assert seed[expected.labels > 0].mean() > seed[expected.labels == 0].mean()
    assert "instance(s) found" in widget.last_message[1]

    # a threshold changed in the form reaches segment's clustering; the layer is updated
    widget.dense["seed"].value = False
    widget.cluster["min_size"].value = 10_000
    assert widget.cluster_overrides() == {"min_size": 10_000}
    _run(widget, qtbot)
    assert len([x for x in viewer.layers if x.name.startswith("cells instances")]) == 1
    assert viewer.layers["cells instances"].data.max() == 0  # no nucleus is that large
    widget.cluster["min_size"].value = defaults["min_size"]

    # an RGB layer for this 1-channel model: averaged to gray, as segment does, and said so
    rgb = np.stack([cells, cells // 2, cells], -1)
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget.image.value = viewer.layers["rgb"]
    _run(widget, qtbot)
    assert any("averaged to 1 gray channel" in m for _, m in widget.shown)
    expected = real_segment(rgb, MODEL, device="cpu")
    np.testing.assert_array_equal(viewer.layers["rgb instances"].data, expected.labels)


BAD_LAYERS = [
    (np.zeros((40, 40), bool), "expected integer or float pixels, got dtype bool"),
    (np.zeros((2, 3, 40, 40), np.float32), "got 4-D data of shape (2, 3, 40, 40)"),
    (np.zeros((40, 2), np.float32), "at least 4 x 4 pixels"),
]


def test_a_tuned_threshold_is_shown_unrounded(widget):
    """A tuned 0.875 shown as 0.88 would be an override the user never made."""
    import dataclasses

    info = widget.info
    params = dict(info.params) | {"seed_thresh": 0.875, "fg_thresh": 0.4}
    widget._set_info(dataclasses.replace(info, params=params))
    assert widget.cluster["seed_thresh"].value == 0.875
    assert widget.cluster["fg_thresh"].value == 0.4
    assert widget.cluster_overrides() == {}
    widget.cluster["seed_thresh"].value = 0.9
    assert widget.cluster_overrides() == {"seed_thresh": 0.9}


def test_bad_input_gives_a_message_and_leaves_the_viewer_usable(
    widget, qtbot, tmp_path, monkeypatch
):
    viewer = widget.viewer
    assert widget.run() is None
    assert widget.last_message == (
        "error",
        "no Image layer to segment: open or add an image first",
    )
    for i, (data, needle) in enumerate(BAD_LAYERS):
        viewer.add_image(data, name=f"bad{i}")
        assert widget.image.value is viewer.layers[f"bad{i}"]
        assert widget.run() is None
        level, text = widget.last_message
        assert level == "error" and needle in text and f"'bad{i}'" in text, text
        assert ("show_error", f"instembed: {text}") in widget.shown
        assert widget.worker is None and widget.run_button.enabled
    assert [x.name for x in viewer.layers] == ["bad0", "bad1", "bad2"]  # nothing added

    # an image far larger than the memory: refused with its size
    monkeypatch.setattr(core, "available_memory", lambda: 2 << 30)
    viewer.add_image(np.zeros((3, 16384, 16384), np.uint8), name="huge")  # 768 MiB
    assert widget.run() is None
    text = widget.last_message[1]
    assert "'huge' of 3x16384x16384 px needs about" in text
    assert "2.0 GiB of memory is available" in text
    monkeypatch.undo()
    viewer.layers.remove(viewer.layers["huge"])

    # a checkpoint that is not one
    viewer.add_image(np.ones((32, 32), np.float32), name="fine")
    widget.model.value = "checkpoint / run folder..."
    assert widget.run() is None and "choose a model" in widget.last_message[1]
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    widget.path.value = bad  # its config is read off the GUI thread: it fails, and says so
    qtbot.waitUntil(lambda: widget.info_worker is None, timeout=30_000)
    assert widget.last_message[1].startswith(f"cannot read model {bad}: ")
    assert widget.run() is None
    assert "broken.pt" in widget.last_message[1] and widget.last_message[0] == "error"
    assert "not a loadable checkpoint" in widget.last_message[1]
    # and the viewer still works: a layer added after all that is offered to the widget
    viewer.add_image(np.ones((8, 8), np.float32), name="later")
    assert viewer.layers["later"] in widget.image.choices


def test_cancel_mid_run_keeps_the_viewer_as_it_was(widget, qtbot, cells):
    viewer = widget.viewer
    viewer.add_image(np.stack([cells] * 3), name="movie")
    widget.tile.value = 32  # 9 blocks a frame, 27 in all
    blocks = []
    widget._relay.blocks.connect(lambda *a: (blocks.append(a), widget.cancel()))
    worker = widget.run()
    assert worker is not None and not widget.run_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert blocks and len(blocks) < 27  # it was running, and it stopped early
    assert widget.last_message == ("warning", "cancelled: no layer was added or changed")
    assert [x.name for x in viewer.layers] == ["movie"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_overlapping_instances_become_levels_or_a_mask_stack(widget):
    from instembed.structures import Instances, masks_to_labels

    viewer = widget.viewer
    viewer.add_image(np.zeros((6, 6), np.float32), name="w")
    masks = np.zeros((3, 6, 6), bool)
    masks[0, :3, :3] = masks[1, 1:4, 1:4] = masks[2, 4:, 4:] = True
    scores = np.array([0.9, 0.5, 0.7], np.float32)
    pred = Instances(labels=masks_to_labels(masks, scores), scores=scores, masks=masks)
    plan = core.plan_layer(
        viewer.layers["w"].data,
        name="w",
        rgb=False,
        multiscale=False,
        info=core.ModelInfo("bbbc010-worms"),
        channel=None,
    )
    result = core.Result(core.Request(plan, "bbbc010-worms", {}), [pred], [{}])
    names = widget.add_layers(result)
    assert names == ["w instances", "w instances level 1", "w instances level 2"]
    np.testing.assert_array_equal(viewer.layers["w instances"].data, pred.labels)
    level2 = viewer.layers["w instances level 2"].data
    np.testing.assert_array_equal(level2 > 0, masks[1])  # the lower-scored overlapping mask
    widget.overlaps.value = "mask stack"
    assert widget.add_layers(result)[1] == "w instances masks"
    np.testing.assert_array_equal(viewer.layers["w instances masks"].data > 0, masks)


def test_cancel_from_the_progress_callback_stops_segment(cells):
    req = core.Request(
        core.plan_layer(
            cells, name="c", rgb=False, multiscale=False, info=core.ModelInfo(MODEL), channel=None
        ),
        MODEL,
        {"device": "cpu", "tile": 32},
    )
    calls = []
    gen = core.run_frames(req, lambda: len(calls) >= 2, lambda *a: calls.append(a))
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None and len(calls) == 2  # stopped after 2 of 9 blocks
    assert calls[0] == (0, 1, 1, 9)


def test_overlap_levels_and_mask_stack_view():
    masks = np.zeros((3, 6, 6), bool)
    masks[0, :3, :3] = masks[1, 1:4, 1:4] = masks[2, 4:, 4:] = True
    levels = core.overlap_levels(masks, np.array([0.9, 0.5, 0.7]))
    assert levels.shape == (2, 6, 6)
    for k in range(3):  # every mask whole on exactly one level, none overlapping there
        assert sum(np.array_equal(lv == k + 1, masks[k]) for lv in levels) == 1
    assert set(np.unique(levels[0])) == {0, 1, 3} and set(np.unique(levels[1])) == {0, 2}
    view = core.mask_stack_view(masks)
    np.testing.assert_array_equal(view > 0, masks)
    assert view[1].max() == 2


def _prediction(tmp_path, stack: bool):
    from instembed.engine.predict import WriteOptions, write_prediction
    from instembed.structures import Instances, masks_to_labels

    labels = np.zeros((40, 50), np.int32)
    labels[2:10, 3:12], labels[15:30, 20:40], labels[32:38, 1:6] = 1, 2, 3
    scores = np.array([0.9, 0.6, 0.75], np.float32)
    masks = None
    if stack:
        masks = np.stack([labels == i for i in (1, 2, 3)])
        masks[1, 5:20, 8:25] = True  # overlaps mask 0
        labels = masks_to_labels(masks, scores)
    pred = Instances(labels=labels, scores=scores, masks=masks)
    write_prediction(tmp_path, "a", np.zeros((1, 40, 50), np.float32), pred, WriteOptions())
    return pred


def test_reader_round_trips_a_prediction_folder(make_napari_viewer, tmp_path):
    pred = _prediction(tmp_path / "run", stack=False)
    over = _prediction(tmp_path / "run" / "plate1", stack=True)
    assert get_reader(str(tmp_path / "run" / "a_overlay.png")) is None
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "run"), plugin="instembed")
    a, b, b_masks = viewer.layers  # sorted: a.json, plate1/a.json
    np.testing.assert_array_equal(a.data, pred.labels)
    np.testing.assert_allclose(a.features["score"].to_numpy()[1:], pred.scores)
    assert a.metadata["instembed"]["instances"][1]["area"] == 15 * 20
    np.testing.assert_array_equal(b.data, over.labels)  # painted as segment paints it
    np.testing.assert_array_equal(b_masks.data > 0, over.masks)
    # one file (label TIFF) opens the same way
    layers = get_reader(str(tmp_path / "run" / "a.tif"))(str(tmp_path / "run" / "a.tif"))
    assert len(layers) == 1 and layers[0][2] == "labels"
    np.testing.assert_array_equal(layers[0][0], pred.labels)


def test_reader_leaves_other_files_to_other_readers(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "other.json").write_text('{"instances": 3}')
    tifffile.imwrite(tmp_path / "other.tif", np.zeros((8, 8), np.uint8))
    for name in ("plain.tif", "other.tif", "other.json", "."):
        assert get_reader(str(tmp_path / name)) is None, name


def test_sample_data_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    for key, n_min in (("touching_cells", 40), ("dot_grid", 100)):
        viewer.layers.clear()
        viewer.open_sample("instembed", key)
        image, truth = viewer.layers
        assert isinstance(truth, Labels) and truth.name == f"{image.name} ground truth"
        assert image.data.shape == truth.data.shape == (256, 256)
        assert image.data.dtype == np.float32 and image.data.std() > 0.05
        assert len(np.unique(truth.data)) - 1 >= n_min, key
        assert image.data[truth.data > 0].mean() > image.data[truth.data == 0].mean()
