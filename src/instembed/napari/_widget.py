"""The napari dock widget: segment an Image layer with :func:`instembed.segment`.

Choose a shipped model or a checkpoint / run folder, the image layer, tiling, test-time
augmentation, normalisation and the clustering thresholds (the model's values are the
defaults); Run adds a Labels layer (and, for models whose instances overlap, one Labels layer
per overlap level or a mask-stack view), optionally the seed map, sigma and the first embedding
dimensions. The work runs in napari's ``thread_worker`` so the viewer stays responsive; Cancel
stops it between frames or blocks. Problems are reported as napari notifications and in the
widget's status line, never as a crash.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from instembed.data.normalize import NORMALIZATIONS
from instembed.napari import _core as core

log = logging.getLogger(__name__)

OTHER = "checkpoint / run folder..."
CHANNELS = {"mean of channels": None, "channel 0": 0, "channel 1": 1, "channel 2": 2}
OVERLAP_VIEWS = ("one layer per level", "mask stack")


class _Relay(QObject):
    """Carries block progress from the worker thread to the GUI thread (a queued signal)."""

    blocks = Signal(int, int, int, int)


class SegmentWidget(Container):
    """Dock widget of the instembed plugin (``napari.yaml``: ``instembed.segment_widget``)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None  # the running segmentation, if any
        self.info_worker = None  # reading a checkpoint's config, if any
        self.info: core.ModelInfo | None = None
        self._adding = False  # adding result layers (not a new input)
        self._outcome: str | None = None  # how the current run ended, once it has
        self.last_message: tuple[str, str] = ("", "")  # (level, text) of the last report
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.blocks.connect(self._on_blocks)

        models = core.shipped_models()
        first = "bbbc039-nuclei" if "bbbc039-nuclei" in models else (models or [OTHER])[0]
        self.model = ComboBox(label="model", choices=[*models, OTHER], value=first)
        self.path = FileEdit(mode="r", filter="*.pt")
        self.path.label = "checkpoint / run"
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.tile = SpinBox(label="tile (0 = auto)", min=0, max=65536, step=16, value=0)
        self.scale = FloatSpinBox(label="object scale", min=0.05, max=8.0, step=0.05, value=1.0)
        self.tta = CheckBox(text="test-time augmentation (8x slower)", value=False)
        self.normalize = ComboBox(
            label="normalize",
            choices=["auto", *NORMALIZATIONS],
            value="auto",
        )
        self.channel = ComboBox(label="RGB to gray", choices=list(CHANNELS))
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.cluster = Container(label="clustering", labels=True)
        self.overlaps = ComboBox(label="overlaps as", choices=list(OVERLAP_VIEWS))
        self.dense = {
            "seed": CheckBox(text="seed map layer"),
            "sigma": CheckBox(text="sigma layer"),
            "embedding": CheckBox(text=f"embedding layers (first {core.EMBEDDING_DIMS} dims)"),
        }
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.model,
                self.path,
                self.image,
                self.tile,
                self.scale,
                self.tta,
                self.normalize,
                self.channel,
                self.device,
                self.cluster,
                self.overlaps,
                *self.dense.values(),
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )

        self.image.changed.connect(self._show_channel)
        self.model.changed.connect(self._on_model)
        self.path.changed.connect(self._on_model)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._refresh_layers)
        self._refresh_layers()
        self._on_model()

    # ------------------------------------------------------------------ reporting
    def _say(self, text: str, level: str = "info") -> None:
        """Show ``text`` in the status line and as a napari notification (and log it)."""
        self.last_message = (level, text)
        self.status.value = text if len(text) < 300 else text[:297] + "..."
        self.status.tooltip = text
        {"error": show_error, "warning": show_warning}.get(level, show_info)(f"instembed: {text}")
        getattr(log, "warning" if level != "info" else "info")("napari widget: %s", text)

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        """Offer the Image layers; pick a newly added image, else the selected one."""
        current = self.image.value
        self.image.reset_choices()
        if self._adding:  # our own result layers: keep the input chosen
            if current in self.image.choices:
                self.image.value = current
            return
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        for layer in (added, self.viewer.layers.selection.active):
            if isinstance(layer, Image) and layer in self.image.choices:
                self.image.value = layer
                return

    def model_spec(self) -> str | None:
        """The model to run: a shipped name, or the checkpoint / run folder path (None when
        "checkpoint / run folder" is chosen without a path)."""
        if self.model.value != OTHER:
            return str(self.model.value)
        path = self.path.value
        return str(path) if path is not None and str(path) not in ("", ".") else None

    def _on_model(self, _value=None) -> None:
        """Read the chosen model's facts (card or checkpoint config) and put its clustering
        thresholds in the form; a checkpoint is read off the GUI thread."""
        self.path.visible = self.model.value == OTHER
        spec = self.model_spec()
        if spec is None:
            self._set_info(None)
            return
        if self.model.value != OTHER:
            self._set_info(core.model_info(spec))
            return
        worker = thread_worker(core.model_info, start_thread=False, ignore_errors=True)(spec)
        worker.returned.connect(self._set_info)
        worker.errored.connect(lambda err: self._say(f"cannot read model {spec}: {err}", "error"))
        worker.finished.connect(lambda: setattr(self, "info_worker", None))
        self.info_worker = worker
        worker.start()

    def _set_info(self, info: core.ModelInfo | None) -> None:
        self.info = info
        self.cluster.clear()
        if info is None:
            return
        for name, value in info.thresholds.items():
            if isinstance(value, int):
                box = SpinBox(name=name, min=0, max=10**9, value=value)
            else:
                # the step sets the box's decimals: fine enough to show the value unrounded
                # (a tuned 0.875 shown as 0.88 would be an override the user never made)
                digits = len(f"{value:.6g}".partition(".")[2])
                step = 0.05 if digits <= 2 else 10.0**-digits
                box = FloatSpinBox(name=name, min=0.0, max=1e6, step=step, value=value)
            box.tooltip = f"{info.method} {name}; the model's value: {value}"
            self.cluster.append(box)
        self.overlaps.visible = info.overlapping
        self._show_channel()

    def _show_channel(self, _value=None) -> None:
        """The RGB-to-gray choice only for an RGB layer and a 1-channel model."""
        layer = self.image.value
        gray_model = self.info is None or self.info.in_channels == 1
        self.channel.visible = bool(getattr(layer, "rgb", False)) and gray_model

    def cluster_overrides(self) -> dict:
        """Clustering thresholds that differ from the model's (``segment(cluster=...)``)."""
        if self.info is None:
            return {}
        defaults = self.info.thresholds
        return {w.name: w.value for w in self.cluster if w.value != defaults.get(w.name)}

    # ------------------------------------------------------------------ run
    def request(self) -> core.Request:
        """The run the form describes; :class:`~instembed.napari._core.InputError` (one line)
        when it cannot be run."""
        spec = self.model_spec()
        if spec is None:
            raise core.InputError("choose a model, or a checkpoint file / run folder")
        info = self.info if self.info is not None and self.info.spec == spec else None
        if info is None:
            info = core.model_info(spec)
            self._set_info(info)
        layer = self.image.value
        if layer is None:
            raise core.InputError("no Image layer to segment: open or add an image first")
        channel = CHANNELS[self.channel.value] if info.in_channels == 1 else None
        plan = core.plan_layer(
            layer.data,
            name=layer.name,
            rgb=bool(layer.rgb),
            multiscale=bool(layer.multiscale),
            info=info,
            channel=channel,
        )
        dense = tuple(k for k, box in self.dense.items() if box.value)
        core.check_memory(plan, info, dense=bool(dense))
        kwargs = {
            "tile": int(self.tile.value) or None,
            "tta": bool(self.tta.value),
            "normalize": str(self.normalize.value),
            "device": None if self.device.value == "auto" else str(self.device.value),
            "scale": float(self.scale.value),
            "channel": channel if plan.rgb else None,
            "cluster": self.cluster_overrides() or None,
        }
        return core.Request(plan, spec, kwargs, dense)

    def run(self, _value=None):
        """Start segmenting (returns the worker, or None when the input was refused or a run
        is already going)."""
        if self.worker is not None:
            self._say("a run is already going: wait for it or cancel it", "warning")
            return None
        try:
            req = self.request()
        except Exception as err:  # a refused input or unreadable model: say it, keep going
            self._say(str(err), "error")
            return None
        for note in req.plan.notices:
            self._say(note, "warning")
        self._cancel.clear()
        self._outcome = None
        gen = thread_worker(core.run_frames, start_thread=False, ignore_errors=True)
        worker = gen(req, self._cancel.is_set, self._relay.blocks.emit)
        worker.yielded.connect(self._on_frame)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.max = 0 if req.plan.n_frames == 1 else req.plan.n_frames  # 0: busy
        self.progress.value = 0
        self._say(f"segmenting {req.plan.name!r} with {Path(req.model).name} ...")
        worker.start()
        return worker

    def cancel(self, _value=None) -> None:
        """Stop the run between frames / blocks; the viewer keeps what it had."""
        if self.worker is None:
            return
        self._cancel.set()
        self.worker.quit()
        self.status.value = "cancelling ..."

    # ------------------------------------------------------------------ worker events
    def _on_blocks(self, frame: int, n: int, done: int, total: int) -> None:
        self.progress.max = n * total
        self.progress.value = frame * total + done
        self.status.value = (
            f"frame {frame + 1}/{n}, block {done}/{total}" if n > 1 else (f"block {done}/{total}")
        )

    def _on_frame(self, value) -> None:
        done, n = value
        self.progress.max, self.progress.value = n, done

    def _on_error(self, err: Exception) -> None:
        self._outcome = "error"
        self._say(f"segmentation failed: {err}", "error")

    def _on_cancelled(self) -> None:
        if self._outcome != "cancelled":
            self._outcome = "cancelled"
            self._say("cancelled: no layer was added or changed", "warning")

    def _on_finished(self) -> None:
        if self._outcome is None and self._cancel.is_set():  # stopped inside a frame
            self._on_cancelled()
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if self.progress.max == 0:
            self.progress.max = 1

    def _on_result(self, result: core.Result | None) -> None:
        if result is None:
            self._on_cancelled()
            return
        self._outcome = "done"
        self._adding = True
        try:
            names = self.add_layers(result)
        except Exception as err:  # a layer napari refuses: say so, keep the viewer
            log.exception("napari widget: adding the layers failed")
            self._say(f"adding the result layers failed: {err}", "error")
            return
        finally:
            self._adding = False
        n = sum(p.num_instances for p in result.preds)
        self.progress.max, self.progress.value = 1, 1
        self._say(f"{n} instance(s) found; layers: {', '.join(names)}")

    # ------------------------------------------------------------------ layers
    def _put(self, data, name: str, kind: type, ref: Image, **kw) -> str:
        """Add a layer, or replace the data of an existing one of that name and kind (a second
        run updates its layers); the scale and position of ``ref`` are copied."""
        nd = data.ndim
        geo = {"scale": tuple(ref.scale)[-nd:], "translate": tuple(ref.translate)[-nd:]}
        if len(geo["scale"]) < nd:  # e.g. a mask stack over a 2-D image: a leading axis
            pad = nd - len(geo["scale"])
            geo = {
                "scale": (1.0,) * pad + geo["scale"],
                "translate": (0.0,) * pad + geo["translate"],
            }
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(old, kind) and old.ndim == nd:
            old.data = data
            for key, value in kw.items():
                setattr(old, key, value)
            return name
        if old is not None:
            self.viewer.layers.remove(old)
        adder = self.viewer.add_labels if kind is Labels else self.viewer.add_image
        return adder(data, name=name, **geo, **kw).name

    def add_layers(self, result: core.Result) -> list[str]:
        """The result as layers; returns their names."""
        req, preds = result.request, result.preds
        plan = req.plan
        ref = (
            self.viewer.layers[plan.name]
            if plan.name in self.viewer.layers
            else Image(np.zeros((1, 1)))
        )
        base = f"{plan.name} instances"
        labels = core.stack_frames([p.labels for p in preds], plan.stack)
        meta = {
            "instembed": {
                "model": req.model,
                "settings": {k: v for k, v in req.kwargs.items() if v is not None},
                "scores": [p.scores.tolist() for p in preds],
                "classes": [None if p.classes is None else p.classes.tolist() for p in preds],
            }
        }
        extra = {}
        if not plan.stack:
            p = preds[0]
            extra["features"] = core.features_table(p.scores, p.classes, int(labels.max()))
        names = [self._put(labels, base, Labels, ref, metadata=meta, **extra)]
        if any(p.masks is not None for p in preds):
            names += self._add_overlaps(preds, plan, base, ref)
        for key in req.dense:
            maps = [d[key] for d in result.dense if key in d]
            if len(maps) != len(preds):
                self._say(f"the model has no {key} output", "warning")
                continue
            if key == "embedding":
                emb = core.stack_frames(maps, plan.stack)
                for d in range(emb.shape[-3]):
                    names.append(
                        self._put(
                            emb[..., d, :, :],
                            f"{plan.name} embedding[{d}]",
                            Image,
                            ref,
                            colormap="twilight",
                            visible=d == 0,
                        )
                    )
            else:
                cmap = "magma" if key == "seed" else "viridis"
                names.append(
                    self._put(
                        core.stack_frames(maps, plan.stack),
                        f"{plan.name} {key}",
                        Image,
                        ref,
                        colormap=cmap,
                    )
                )
        return names

    def _add_overlaps(self, preds, plan: core.Plan, base: str, ref: Image) -> list[str]:
        masks = [
            p.masks if p.masks is not None else np.zeros((0, *p.labels.shape), bool) for p in preds
        ]
        if self.overlaps.value == "mask stack" and not plan.stack:
            view = core.mask_stack_view(masks[0])
            return [self._put(view, f"{base} masks", Labels, ref)]
        if self.overlaps.value == "mask stack":
            self._say(
                "a mask-stack view needs one image; the frames get one layer per overlap level",
                "warning",
            )
        levels = [core.overlap_levels(m, p.scores) for m, p in zip(masks, preds)]
        stacked = core.stack_frames(levels, plan.stack)  # (L, H, W) or (T, L, H, W)
        axis = 1 if plan.stack else 0
        out = []
        for k in range(stacked.shape[axis]):
            data = np.take(stacked, k, axis=axis)
            out.append(self._put(data, f"{base} level {k + 1}", Labels, ref, visible=k == 0))
        return out
