"""Interactive segmentation state: one image, its cached window embeddings, objects, clicks, undo.

Geometry and the coordinate convention live in :mod:`volsam.transforms`; file access in
:mod:`volsam.io`. A :class:`Session` owns preprocessing, so callers pass raw intensities.

Refinement follows SAM-Med3D: every click re-runs the decoder with *all* clicks so far and the
previous low-res logits as the mask prompt (zeros before the first click); the embedding of a window
is computed once and cached.

Windows (SAM family: SAM-Med3D, FastSAM3D, volsam's SAM-style models). The first positive click of an
object opens a ``size``^3 window at ``spacing`` (128^3 at 1.5 mm) centred on it; a later positive click
outside the object's windows opens another; a negative click there changes nothing (it is counted, and
undone). A window whose mask touches its border adds one overlapping it by half along that face, centred
on the touching voxels, prompted with a positive click on the mask in the overlap plus its own clicks,
until no border is touched or ``max_windows`` windows exist. The object mask is their masks' union.

Multi-scale windows (early-fusion models, the default; :mod:`volsam.windows`). The same network runs
at the window spacings ``spacing * scales`` (levels 0, 1, 2: 1.5 / 3 / 6 mm, a 96 / 192 / 384 mm field
for a 64^3 window). Each object keeps one composed prediction, its *canvas* (volume grid; an initial
mask starts it), and the level it has reached. One interaction:

1. *Primary window.* A box opens a window centred on the box at the finest level whose field holds the
   box with 1/8 of the field free on each side (a 2D box counts its largest in-plane side through-plane),
   so the box channel has a border. A click goes to the object's windows at its level that contain it;
   outside them a positive click (or a negative one on the object's mask) opens a window centred on it at
   that level; a negative click off the object adds nothing (it is counted and undone like any click).
2. *Prediction.* A window gets every click of the object inside it (user clicks, stroke samples, box
   centres; a positive seed at the deepest point of the prior when no positive click is inside) and as
   its previous mask either its own last logits (when nothing was pasted since) or the canvas resampled
   into it (``+-MASK_PROMPT_LOGIT``, area-averaged). Its mask overwrites the canvas inside its footprint
   (a coarse level pasted from its logits upsampled 2x), so the previous prediction
   carries across scales and clicks, and a correction anywhere acts on the whole object.
3. *Zoom out.* While the window's mask touches a window face that lies inside the image, and a coarser
   level exists, a window one level coarser, centred on the mask's bounding box, predicts again.
4. *Refine.* From a level above 0, windows one level finer run along the coarse mask's surface: greedily
   centred on the surface voxel whose window covers the most uncovered surface, until 90% of it is
   covered; each changes the canvas only within two coarse voxels of the coarse surface. ``max_windows``
   bounds the windows of one interaction (steps 1-4 together).

Finer windows the coarse level overwrote and did not run again are dropped; later clicks go to the level
reached.

Objects share one uint8 label map (object n has label n, at most :data:`MAX_OBJECTS`). Overlap policy: by
default a new object never overwrites voxels of earlier objects (``overwrite=False``); with
``overwrite=True`` the newest wins. Each object keeps its mask cropped to its bounding box, so empty or
small objects cost next to nothing, and a prompt that fails half-way leaves the session as it was.
Prompts go to the current object: the newest, or the one :meth:`Session.select_object` names.
:meth:`Session.delete_object` empties an object and keeps every label. :meth:`Session.paint` (brush, or
eraser with ``erase=True``) adds strokes to the object's edit layer, forced on (off) on top of every later
prediction of that object until undone. Undo covers prompts, paint, new and deleted objects.

Boxes. The released weights have no box embedding, so a 3D box becomes: a window centred on the box
centre (multi-scale: at the box's level), a positive click at the box centre, and the result restricted
to the box grown by ``box_margin_mm``. A box drawn on one slice (``lo`` and ``hi`` equal along one axis, a
"2D box") asks for the 3D object: the same click, restricted in-plane only, never through-plane.

Other prompts, and how they reach the SAM family (SAM-Med3D, FastSAM3D, volsam's SAM-style models),
whose only inputs are clicks and a low-res mask prompt:

- **scribble** (:meth:`Session.add_scribble`, a set of voxels, positive or negative): up to 3 clicks of its
  sign, farthest-point sampled along the stroke (in mm), the first nearest the stroke's centroid;
- **lasso** (:meth:`Session.add_lasso`, a filled polygon on one slice, positive or negative): up to 3
  clicks of its sign at the maxima of the polygon's in-plane distance transform (its deepest points);
- **initial mask** (:meth:`Session.set_initial_mask`, edit a mask or resume saved work): the object's mask
  until prompts refine it; every window the object opens later starts from its logits
  (``+-MASK_PROMPT_LOGIT``, area-averaged onto the low-res grid) as its mask prompt instead of zeros, and
  the model's output replaces it inside the windows' footprint only. A negative click on it opens a window;
- a **negative box** has no SAM-family mapping: a one-line ``ValueError`` says so.

Every prompt is also kept per object in voxel space (``ObjectState.prompts``), so models that take
prompts as dense input channels get them from :meth:`Session.prompt_channels` in window coordinates.

Early-fusion models (``volsam_fusion``, the default) take clicks as point channels and every previous
prediction (or the initial mask) as the previous-probability channel; a box reaches them as its box
channel too (in addition to the centre click and the restriction above). Their channel layout has room
for scribbles and lassos, but the shipped weights were trained with point and box prompts only, so
scribbles and lassos reach them through the same sampled clicks as the SAM family.
Undo restores the prompts, windows and masks exactly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from volsam.io import Volume, read_image, volume_from_array, write_mask
from volsam.modeling import PromptableModel
from volsam.models import default_weights_path, resolve_model
from volsam.prompt_geometry import (
    PROMPT_CHANNELS,
    PROMPT_KINDS,
    VoxelPrompt,
    box_channels,
    box_prompt,
    deepest_points,
    farthest_points,
    lasso_voxels,
    point_prompt,
    prompt_channels,
    prompt_from_voxels,
    to_voxel,
    voxel_set,
)
from volsam.runtime import choose_runtime
from volsam.session_state import (
    MASK_PROMPT_LOGIT,
    Crop,
    ObjectInfo,
    ObjectState,
    Timings,
    WindowState,
    initial_logits,
    label_map,
    object_mask,
    on_mask,
    visible_mask,
)
from volsam.transforms import Window, extract_window, normalize_window, voxel_to_window
from volsam.windows import SCALES, Click, Geometry, box_level, grow, interact, route

__all__ = ["MASK_PROMPT_LOGIT", "MAX_OBJECTS", "PROMPT_CHANNELS", "PROMPT_KINDS", "ObjectInfo", "Session", "Timings",
           "default_weights_path", "resolve_model"]

#: Objects one session holds: labels 1..255 fit the uint8 label map.
MAX_OBJECTS = 255

SAM_FAMILY_PROMPTS = frozenset({"point+", "point-", "box+", "scribble+", "scribble-", "lasso+", "lasso-", "initial"})
"""What a click-and-mask-prompt model takes (the mapping above); a model may declare its own set as a
``supported_prompts`` attribute. A scribble or lasso becomes up to ``CLICKS_PER_STROKE`` clicks."""
CLICKS_PER_STROKE = 3


class Session:
    """Interactive 3D segmentation of one image.

    Args:
        model: registered name, checkpoint path, ``volsam export`` folder (onnxruntime backend), a built
            :class:`~volsam.modeling.Sam3D`, or None for the default model shipped with volsam.
        device: torch device; None picks CUDA when available, else CPU.
        clip: intensity window applied before z-normalisation, e.g. (-1000, 1000) for CT (the SAM-Med3D
            paper-era pipeline); None keeps raw intensities.
        spacing: window spacing in mm (1.5 for the released models): the finest level of an early-fusion model.
        scales: an early-fusion model's window spacings as multiples of ``spacing`` (default
            :data:`~volsam.windows.SCALES`, 1.5 / 3 / 6 mm); ``(1,)`` keeps one spacing.
        max_windows: SAM family: windows per object when a target grows past the window border; early-fusion
            models: windows per interaction (zoom-out and refinement together).
        overwrite: whether a newer object may overwrite voxels of earlier ones.
        cache_size: window embeddings kept (least recently used are dropped).
        memory: a Memorizing-SAM memory file (``volsam memory build`` + ``volsam train --memory``) attached
            in place to its encoder block of the model.
        attention_backend: ``"dense"`` or ``"dilated"`` global attention in the encoder (same weights);
            None keeps the model's own.
        random_weights: a registered name (other than the default model) builds random weights instead
            of being refused; for tests and benchmarks only.
        precision, attention, compile: see :func:`volsam.runtime.choose_runtime` (``auto``: bf16 and
            SDPA's fused kernels on a CUDA GPU, fp32 on CPU; ``torch.compile`` only when ``compile=True``;
            what the device cannot run falls back with a warning).
    """

    def __init__(
        self,
        model: str | Path | PromptableModel | None = None,
        device: str | torch.device | None = None,
        *,
        clip: tuple[float, float] | None = None,
        spacing: float = 1.5,
        scales: tuple[float, ...] | None = None,
        max_windows: int = 6,
        overwrite: bool = False,
        cache_size: int = 16,
        box_margin_mm: float = 1.5,
        decoder_checkpoint: str | Path | None = None,
        trust_checkpoint: bool = False,
        precision: str = "auto",
        attention: str = "auto",
        compile: bool | None = None,
        memory: str | Path | None = None,
        attention_backend: str | None = None,
        random_weights: bool = False,
    ) -> None:
        if device is None:
            onnx = isinstance(model, str | Path) and (Path(model) / "export.json").is_file()
            device = "cuda" if torch.cuda.is_available() and not onnx else "cpu"
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.runtime = choose_runtime(device, precision, attention, compile)
        self.device = self.runtime.device
        self.model = resolve_model(
            model,
            self.device,
            decoder_checkpoint=decoder_checkpoint,
            trust_checkpoint=trust_checkpoint,
            attention_backend=attention_backend,
            random_weights=random_weights,
        )
        if memory is not None:
            from volsam.memory import use_memory

            use_memory(self.model, memory)
        self._encode = self.runtime.maybe_compile(self.model.image_encoder)
        self._decode = self.runtime.maybe_compile(self.model.decode)
        self.size = self.model.img_size
        self.spacing = float(spacing)
        fusion = getattr(self.model, "kind", None) == "fusion"
        if scales is not None and (not fusion or not scales or min(scales) <= 0):
            raise ValueError(f"scales are positive spacing factors for early-fusion models only, got {scales!r}")
        self.scales = tuple(float(f) for f in (scales or SCALES)) if fusion else (1.0,)
        self.multiscale = fusion
        self.clip = clip
        self.max_windows = max_windows
        self.overwrite = overwrite
        self.cache_size = cache_size
        self.box_margin_mm = box_margin_mm
        self.timings = Timings()
        self._volume: Volume | None = None
        self._cache: OrderedDict[Window, torch.Tensor] = OrderedDict()
        self._clear_objects()

    # ----------------------------------------------------------------- image
    @property
    def volume(self) -> Volume:
        if self._volume is None:
            raise ValueError("no image set: call set_image(path_or_array) before adding clicks")
        return self._volume

    def set_image(self, image: str | Path | np.ndarray | Volume, affine: np.ndarray | None = None) -> None:
        """Set the image: a file path (NIfTI, NRRD, MHA/MHD, DICOM folder), a Volume, or an array (X, Y, Z)
        with an optional 4x4 voxel -> RAS mm affine (identity, 1 mm, when None). Clears objects and cache."""
        if isinstance(image, Volume):
            vol = image
        elif isinstance(image, np.ndarray):
            vol = volume_from_array(image, affine)
        else:
            if affine is not None:
                raise ValueError("affine is only for arrays; a file carries its own geometry")
            vol = read_image(image)
        self._volume = vol
        self._image = np.ascontiguousarray(vol.array, dtype=np.float32)
        self._cache.clear()
        self._clear_objects()

    def _clear_objects(self) -> None:
        self._objects: list[ObjectState] = [ObjectState(label=1)]
        self._cur = 0  # index of the object prompts go to (object n has label n, index n - 1)
        self._history: list[tuple[list[ObjectState], int]] = []  # (objects, current index) before each action
        self._label_map: np.ndarray | None = None

    def reset(self) -> None:
        """Forget all clicks and objects; keep the image and its cached embeddings."""
        self.volume  # noqa: B018 - raises when no image is set
        self._clear_objects()

    # ----------------------------------------------------------------- embeddings
    def _embedding(self, window: Window) -> torch.Tensor:
        if window in self._cache:
            self._cache.move_to_end(window)
            return self._cache[window]
        t0 = time.perf_counter()
        x = extract_window(self._image, self.volume.affine, window, order=1)
        x = normalize_window(x, self.clip)
        with self.runtime.context():
            emb = self._encode(torch.from_numpy(x)[None, None].to(self.device))
        self._cache[window] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.timings.encode_ms += (time.perf_counter() - t0) * 1e3
        self.timings.windows_encoded += 1
        return emb

    def precompute(self, point: tuple[float, float, float], world: bool = False) -> None:
        """Encode the window a first click at ``point`` would open (e.g. on hover), so the click is fast."""
        self._embedding(self._geometry().window(self._to_voxel(point, world), 0))

    # ----------------------------------------------------------------- prompts
    def _to_voxel(self, point: tuple[float, float, float] | np.ndarray, world: bool) -> np.ndarray:
        return to_voxel(point, self.volume.affine, self.volume.shape, world)

    @property
    def _current(self) -> ObjectState:
        return self._objects[self._cur]

    def _snapshot(self) -> None:
        # Only the current object is edited in place (ObjectState.copy); other actions replace an object.
        objects = list(self._objects)
        objects[self._cur] = self._current.copy()
        self._history.append((objects, self._cur))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Snapshot for undo; when the prompt fails half-way (a model error, no memory), restore it."""
        self._snapshot()
        self.timings = Timings()
        try:
            yield
        except BaseException:
            self._objects, self._cur = self._history.pop()
            self._label_map = None
            raise

    def add_click(
        self, point: tuple[float, float, float] | np.ndarray, positive: bool = True, *, world: bool = False
    ) -> np.ndarray:
        """Add a click to the current object and return its mask (uint8, shaped like the image array).

        ``point`` is a voxel index (i, j, k) of the image array, or with ``world=True`` a point in mm RAS+.
        """
        voxel = self._to_voxel(point, world)
        return self._add_prompt(point_prompt(voxel, positive), [(voxel, 1 if positive else 0)], user_clicks=1)

    def add_box(
        self,
        lo: tuple[float, float, float],
        hi: tuple[float, float, float],
        *,
        world: bool = False,
        positive: bool = True,
    ) -> np.ndarray:
        """Segment inside a box given by two opposite corners (inclusive); returns the current object's mask.

        A 3D box restricts the result to the box grown by ``box_margin_mm``. A box drawn on one slice
        (``lo`` and ``hi`` equal along one voxel axis, within half a voxel) asks for the whole 3D object:
        the result is restricted in-plane only. Mapped to prompts as the module docstring says.
        """
        self._require("box", positive)
        a, b = self._to_voxel(lo, world), self._to_voxel(hi, world)
        lo_v, hi_v = np.minimum(a, b), np.maximum(a, b)
        margin = self.box_margin_mm / np.asarray(self.volume.spacing)
        flat = np.flatnonzero(hi_v - lo_v < 0.5)
        if len(flat) > 1:
            raise ValueError(f"a box must span at least two axes, got corners {tuple(lo)} and {tuple(hi)}")
        box_lo, box_hi = np.floor(lo_v - margin), np.ceil(hi_v + margin)
        box_lo[flat], box_hi[flat] = -np.inf, np.inf  # a 2D box: no through-plane restriction
        level = box_level(lo_v, hi_v, flat, np.asarray(self.volume.spacing), self._geometry())
        return self._add_prompt(box_prompt(lo_v, hi_v, positive), [((lo_v + hi_v) / 2, 1)], box=(box_lo, box_hi, level))

    def _predict(self, ws: WindowState) -> None:
        emb = self._embedding(ws.window)
        t0 = time.perf_counter()
        coords = torch.tensor(np.stack([c for c, _ in ws.clicks]), dtype=torch.float32, device=self.device)[None]
        labels = torch.tensor([lab for _, lab in ws.clicks], dtype=torch.long, device=self.device)[None]
        prev = ws.logits if ws.logits is not None else self.model.no_mask_prompt(1, self.device)
        extra = self._dense_prompts(ws.window) if self.model.kind == "fusion" else {}
        with self.runtime.context():
            low, _ = self._decode(emb, coords, labels, prev, **extra)
            # A copy: a compiled decoder may reuse its output buffers on the next call.
            ws.logits = low = low.float().clone()
            ws.mask = self.model.upsample_mask(low).cpu().numpy()
        self.timings.decode_ms += (time.perf_counter() - t0) * 1e3
        self.timings.windows_decoded += 1

    def _geometry(self) -> Geometry:
        vol = self.volume
        return Geometry(vol.affine, vol.shape, self.size, tuple(self.spacing * f for f in self.scales))

    def _predict_with(self, ws: WindowState, clicks: list[Click], prior: torch.Tensor | None) -> None:
        ws.clicks, ws.logits = clicks, (prior.to(self.device) if prior is not None else None)
        self._predict(ws)

    def _dense_prompts(self, window: Window) -> dict[str, dict[str, torch.Tensor]]:
        """An early-fusion model's box channels for ``window`` (``decode``'s ``dense_prompts``); clicks reach
        it as points, scribbles and lassos as their sampled clicks (the module docstring's mapping)."""
        boxes = box_channels(self._current.prompts, self.volume.affine, window)
        if not boxes:
            return {}
        return {"dense_prompts": {k: torch.from_numpy(v)[None, None].to(self.device) for k, v in boxes.items()}}

    # ----------------------------------------------------------------- results
    def _commit(self) -> np.ndarray:
        """Recompute the current object's mask (the only one a prompt changes) and return it visible."""
        t0 = time.perf_counter()
        vol = self.volume
        self._current.mask = Crop.of(object_mask(self._current, vol.shape, vol.affine, self.multiscale))
        self._label_map = None
        self.timings.paste_ms += (time.perf_counter() - t0) * 1e3
        return self._visible_mask(self._cur)

    def _visible_mask(self, index: int) -> np.ndarray:
        return visible_mask(self._objects, index, self.overwrite, self.volume.shape)

    @property
    def mask(self) -> np.ndarray:
        """Current object's mask (uint8 0/1, shaped like the image array)."""
        self.volume  # noqa: B018 - raises when no image is set
        return self._visible_mask(self._cur)

    @property
    def label_map(self) -> np.ndarray:
        """All objects in one uint8 label map (object n has label n), shaped like the image array."""
        vol = self.volume
        if self._label_map is None:
            self._label_map = label_map(self._objects, self.overwrite, vol.shape)
        return self._label_map

    def new_object(self) -> int:
        """Start a new object in the same label map; returns its label (ValueError past MAX_OBJECTS)."""
        self.volume  # noqa: B018 - raises when no image is set
        if len(self._objects) >= MAX_OBJECTS:
            raise ValueError(f"a session holds at most {MAX_OBJECTS} objects (labels of one uint8 label map)")
        self._snapshot()
        label = len(self._objects) + 1
        self._objects.append(ObjectState(label=label))
        self._cur = label - 1
        self._label_map = None
        return label

    def _index(self, label: int) -> int:
        self.volume  # noqa: B018 - raises when no image is set
        n = len(self._objects)
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 1 <= label <= n:
            raise ValueError(f"object label must be an existing object's label, 1..{n}, got {label!r}")
        return int(label) - 1

    def select_object(self, label: int) -> None:
        """Make the existing object ``label`` (1-based, its value in the label map) the one later prompts,
        paint and set_initial_mask edit. Not an action of its own: undo restores the object that was
        current before the action it undoes."""
        self._cur = self._index(label)

    def delete_object(self, label: int) -> np.ndarray:
        """Clear object ``label``: its mask, prompts, windows and paint. Other objects keep their labels (the
        label stays, empty, and can be prompted again). Undoable; returns the label map."""
        i = self._index(label)
        self._history.append((list(self._objects), self._cur))  # the object is replaced, not edited: shared
        self._objects[i] = ObjectState(label=i + 1)
        self._label_map = None
        return self.label_map

    @property
    def object_labels(self) -> list[ObjectInfo]:
        """Every object, in label order: label, visible voxels (after the overlap policy), ml, current."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self._objects) + 1)
        ml = float(np.prod(self.volume.spacing)) / 1000.0
        return [ObjectInfo(o.label, int(counts[o.label]), counts[o.label] * ml, i == self._cur)
                for i, o in enumerate(self._objects)]

    def undo(self) -> np.ndarray:
        """Undo the last prompt, paint, new_object or delete_object; the object that was current before it
        is current again. Returns the current object's mask."""
        if not self._history:
            raise ValueError("nothing to undo")
        self._objects, self._cur = self._history.pop()
        self._label_map = None
        return self.mask

    @property
    def windows(self) -> list[tuple[Window, np.ndarray]]:
        """The current object's windows and their (size,)^3 bool masks (before any box restriction), in the
        order they ran (multi-scale: those kept at the level reached, then the last interaction's)."""
        return [(ws.window, ws.mask) for ws in self._current.windows if ws.mask is not None]

    @property
    def current_label(self) -> int:
        """Label of the object that clicks go to."""
        return self._current.label

    @property
    def num_objects(self) -> int:
        return len(self._objects)

    @property
    def num_clicks(self) -> int:
        """User clicks on the current object."""
        return self._current.num_clicks

    def save(self, path: str | Path) -> Path:
        """Write the label map on the image's grid, atomically, in the format the extension names."""
        return write_mask(self.label_map, self.volume, path)

    # ----------------------------------------------------------------- more prompt types
    @property
    def supported_prompts(self) -> frozenset[str]:
        """Prompt kinds the model takes: ``point+``, ``point-``, ``box+``, ``box-``, ``scribble+``,
        ``scribble-``, ``lasso+``, ``lasso-``, ``initial`` (the SAM family: all but ``box-``)."""
        return frozenset(getattr(self.model, "supported_prompts", SAM_FAMILY_PROMPTS))

    def _require(self, kind: str, positive: bool = True) -> None:
        key = kind if kind == "initial" else f"{kind}{'+' if positive else '-'}"
        if key not in self.supported_prompts:
            what = "an initial mask" if kind == "initial" else f"a {'positive' if positive else 'negative'} {kind}"
            raise ValueError(
                f"{type(self.model).__name__} cannot take {what}; it takes {', '.join(sorted(self.supported_prompts))}"
            )

    def _open(self, obj: ObjectState, voxel: np.ndarray) -> WindowState:
        """A new SAM-family window of ``obj`` centred on ``voxel``; with an initial mask, its mask prompt
        starts from the mask's logits."""
        ws = WindowState(self._geometry().window(voxel, 0))
        if obj.initial is not None:
            low = initial_logits(obj.initial, self.volume.affine, ws.window, self.model.low_res_size)
            ws.logits = low.to(self.device)
        return ws

    def _add_prompt(
        self,
        prompt: VoxelPrompt,
        clicks: list[Click],
        user_clicks: int = 0,
        box: tuple[np.ndarray, np.ndarray, int] | None = None,
    ) -> np.ndarray:
        """Record ``prompt`` and route its ``clicks`` (volume voxels, label 1/0; the first anchors a new
        window): multi-scale windows, or the SAM family's (see the module docstring). A ``box`` (restriction
        bounds and multi-scale level) always opens a window at its centre."""
        with self._transaction():
            obj, geo = self._current, self._geometry()
            obj.prompts.append(prompt)
            obj.num_clicks += user_clicks
            level = None
            if box is not None:
                obj.box, level = box[:2], box[2]
            if self.multiscale:
                obj.clicks.extend(clicks)
                # A negative click on the object's mask opens a window; elsewhere it marks what it is not.
                on = any(lab == 0 and on_mask(obj.canvas, v) for v, lab in clicks)
                low = self.model.low_res_size
                interact(obj, clicks, clicks[0][0], geo, self._predict_with, low, self.max_windows, level, on)
                return self._commit()
            opener = partial(self._open, obj)
            if box is not None:
                ws = opener(clicks[0][0])
                ws.clicks.append((voxel_to_window(clicks[0][0], geo.affine, ws.window), 1))
                obj.windows.append(ws)
                self._predict(ws)
            else:
                route(obj, clicks, geo, opener, self._predict, partial(on_mask, obj.initial))
            grow(obj, geo, opener, self._predict, self.max_windows)
            return self._commit()

    def add_scribble(self, voxels: np.ndarray, positive: bool = True, *, world: bool = False) -> np.ndarray:
        """Add a scribble to the current object: points (N, 3) (voxel indices, or mm RAS+ with ``world``;
        rounded to voxels) or a mask shaped like the image. Returns the current object's mask.
        SAM family: up to ``CLICKS_PER_STROKE`` clicks of its sign, farthest-point sampled in mm."""
        self._require("scribble", positive)
        idx = voxel_set(voxels, self.volume.affine, self.volume.shape, world, "scribble")
        clicks = farthest_points(idx, np.asarray(self.volume.spacing), CLICKS_PER_STROKE)
        label = 1 if positive else 0
        return self._add_prompt(prompt_from_voxels("scribble", positive, idx), [(c, label) for c in clicks])

    def add_lasso(
        self,
        polygon: np.ndarray,
        axis: int | None = None,
        index: int | None = None,
        positive: bool = True,
    ) -> np.ndarray:
        """Add a lasso to the current object: a closed polygon (M, 2) on the slice ``index`` of voxel ``axis``
        (vertices in voxel coordinates of the two other axes, in increasing axis order; voxels whose centres
        lie inside or on the outline), or a filled image-shaped mask. Returns the current object's mask.
        SAM family: up to ``CLICKS_PER_STROKE`` clicks of its sign at the filled region's deepest points."""
        self._require("lasso", positive)
        vol = self.volume
        idx = lasso_voxels(polygon, axis, index, vol.affine, vol.shape)
        prompt = prompt_from_voxels("lasso", positive, idx)
        clicks = deepest_points(prompt.mask, np.asarray(vol.spacing), CLICKS_PER_STROKE) + prompt.origin
        label = 1 if positive else 0
        return self._add_prompt(prompt, [(c.astype(np.float64), label) for c in clicks])

    def set_initial_mask(self, mask: np.ndarray) -> np.ndarray:
        """Start the current object from an existing mask (edit a mask, resume saved work): any array
        shaped like the image, non-zero = object. It replaces the object's prompts and windows and stays
        its mask until prompts refine it (see the module docstring). Undoable; returns the object's mask."""
        self._require("initial")
        vol = self.volume
        m = np.asarray(mask)
        if m.shape != vol.shape:
            raise ValueError(f"an initial mask must be shaped like the image {vol.shape}, got {m.shape}")
        initial = np.ascontiguousarray(m != 0)
        initial.setflags(write=False)  # shared by undo snapshots
        with self._transaction():
            self._objects[self._cur] = ObjectState(self._current.label, initial=initial, canvas=Crop.of(initial))
            return self._commit()

    def paint(self, voxels: np.ndarray, *, erase: bool = False, world: bool = False) -> np.ndarray:
        """Brush (or with ``erase`` eraser) on the current object: voxels (N, 3) (indices, or mm RAS+ with
        ``world``; rounded) or a volume-shaped mask, forced into (out of) the object. Strokes form the
        object's edit layer, applied in order on top of every later prediction until undone; no model runs.
        Undoable like a click; returns the current object's mask."""
        vol = self.volume
        idx = voxel_set(voxels, vol.affine, vol.shape, world, "paint stroke")
        with self._transaction():
            self._current.edits.append(prompt_from_voxels("paint", not erase, idx))
            return self._commit()

    def prompt_channels(self, window: Window) -> np.ndarray:
        """The current object's prompts as dense masks on ``window``: float32 ``[len(PROMPT_CHANNELS),
        size, size, size]`` 0/1, for models that take prompts as channels
        (:func:`~volsam.prompt_geometry.prompt_channels`)."""
        return prompt_channels(self._current.prompts, self.volume.affine, window)

    def initial_in_window(self, window: Window) -> np.ndarray | None:
        """The current object's initial mask resampled (trilinear, 0..1 float32 ``(size,)*3``) onto
        ``window``: the previous-probability input before the first prediction; None without one."""
        init = self._current.initial
        return None if init is None else extract_window(init.view(np.uint8), self.volume.affine, window, order=1)
