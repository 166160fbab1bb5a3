"""Interactive segmentation state: one image, its cached window embeddings, objects, clicks, undo.

Geometry and the coordinate convention live in :mod:`volsam.transforms`; file access in
:mod:`volsam.io`. A :class:`Session` owns preprocessing, so callers pass raw intensities.

Refinement follows SAM-Med3D: every click re-runs the decoder with *all* clicks so far and the
previous low-res logits as the mask prompt (zeros before the first click); the embedding of a window
is computed once and cached.

Windows. The first positive click of an object opens a 128^3 window at 1.5 mm centred on it. A later
positive click outside the object's windows opens another window centred on it; a negative click there
changes nothing (it is counted, and undone like any click). When a window's mask touches the
window border (a target larger than 192 mm), a window is added that overlaps the touching one by half
along the touching face, centred laterally on the touching voxels, and prompted with a positive click
on the mask inside the overlap plus that window's clicks; this repeats until no border is touched or
``max_windows`` windows exist. The object mask is the union of its windows' masks.

Objects share one label map (object n has label n). Overlap policy: by default a new object never
overwrites voxels of earlier objects (``overwrite=False``); with ``overwrite=True`` the newest wins.

Boxes. The released weights have no box embedding, so a 3D box becomes: a window centred on the box
centre, a positive click at the box centre, and the result restricted to the box grown by
``box_margin_mm``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from volsam.checkpoint import load_checkpoint
from volsam.hub import is_official, list_weights, weights_info, weights_path
from volsam.io import Volume, read_image, volume_from_array, write_mask
from volsam.modeling import Sam3D
from volsam.registry import DEFAULT_MODEL, build_model, list_models
from volsam.runtime import choose_runtime
from volsam.transforms import (
    Window,
    extract_window,
    normalize_window,
    paste_back,
    voxel_to_window,
    voxel_to_world,
    window_to_voxel,
    world_to_voxel,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_weights_path() -> Path:
    """Bundled weights of the default model."""
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"


def resolve_model(
    model: str | Path | Sam3D | None,
    device: str | torch.device | None = None,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    attention_backend: str | None = None,
) -> Sam3D:
    """A model from a registered name, official weights by name (:mod:`volsam.hub`, once fetched), a
    checkpoint path, an ONNX export folder (``volsam export``, run
    by onnxruntime on the CPU), an instance, or None (the shipped default).

    ``attention_backend`` (``"dense"`` or ``"dilated"``) switches the encoder's global attention, same
    weights (:meth:`~volsam.modeling.sam3d.Sam3D.set_attention_backend`); an instance
    passed in is switched in place."""
    if model is not None and not isinstance(model, Sam3D) and (Path(model) / "export.json").is_file():
        from volsam.export import OnnxModel

        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"an ONNX export runs on the CPU here, got device {device}")
        if attention_backend is not None:
            raise ValueError("an ONNX export has its attention fixed at export time; export the model with it")
        return OnnxModel(model)  # type: ignore[return-value]
    if isinstance(model, Sam3D):
        net = model
    elif model is None:
        path = default_weights_path()
        if not path.is_file():
            raise ValueError(
                f"the default model's weights are not bundled in this build ({path}); "
                f"name a checkpoint or one of {', '.join(list_models())}"
            )
        net = build_model(DEFAULT_MODEL, path)
    elif isinstance(model, str) and model in list_models():
        net = build_model(model)
    elif isinstance(model, str) and is_official(model):
        # Official weights by name (`volsam weights list`): the fetched file, or a one-line "fetch it" error.
        net = build_model(weights_info(model).architecture, weights_path(model), trust_checkpoint=trust_checkpoint)
    else:
        path = Path(model)
        if not path.exists():
            official = ", ".join(w.name for w in list_weights())
            raise ValueError(
                f"model must be one of {', '.join(list_models())}, official weights ({official}) "
                f"or a checkpoint file; got {model}"
            )
        net = load_checkpoint(path, decoder_checkpoint=decoder_checkpoint, trust_checkpoint=trust_checkpoint)
    if attention_backend is not None:
        net.set_attention_backend(attention_backend)
    net.eval()
    return net.to(device) if device is not None else net


@dataclass
class _WindowState:
    window: Window
    clicks: list[tuple[np.ndarray, int]] = field(default_factory=list)  # window coords, label 1/0
    logits: torch.Tensor | None = None  # previous low-res logits [1, 1, 32, 32, 32]
    mask: np.ndarray | None = None  # window mask (size,)^3 bool


@dataclass
class _ObjectState:
    label: int
    windows: list[_WindowState] = field(default_factory=list)
    box: tuple[np.ndarray, np.ndarray] | None = None  # voxel bounds, inclusive
    num_clicks: int = 0  # user clicks (windows also hold the seeds of grown windows)


@dataclass
class Timings:
    """Milliseconds spent in the last call."""

    encode_ms: float = 0.0
    decode_ms: float = 0.0
    paste_ms: float = 0.0
    windows_encoded: int = 0


class Session:
    """Interactive 3D segmentation of one image.

    Args:
        model: registered name, checkpoint path, ``volsam export`` folder (onnxruntime backend), a built
            :class:`~volsam.modeling.Sam3D`, or None for the default model shipped with volsam.
        device: torch device; None picks CUDA when available, else CPU.
        clip: intensity window applied before z-normalisation, e.g. (-1000, 1000) for CT (the SAM-Med3D
            paper-era pipeline); None keeps raw intensities.
        spacing: window spacing in mm (1.5 for the released models).
        max_windows: windows per object when a target grows past the window border.
        overwrite: whether a newer object may overwrite voxels of earlier ones.
        cache_size: window embeddings kept (least recently used are dropped).
        memory: a Memorizing-SAM memory file (``volsam memory build`` + ``volsam train --memory``) attached
            in place to its encoder block of the model.
        attention_backend: ``"dense"`` or ``"dilated"`` global attention in the encoder (same weights);
            None keeps the model's own.
        precision, attention, compile: see :func:`volsam.runtime.choose_runtime` (``auto``: bf16 and
            SDPA's fused kernels on a CUDA GPU, fp32 on CPU; ``torch.compile`` only when ``compile=True``;
            what the device cannot run falls back with a warning).
    """

    def __init__(
        self,
        model: str | Path | Sam3D | None = None,
        device: str | torch.device | None = None,
        *,
        clip: tuple[float, float] | None = None,
        spacing: float = 1.5,
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
        )
        if memory is not None:
            from volsam.memory import use_memory

            use_memory(self.model, memory)
        self._encode = self.runtime.maybe_compile(self.model.image_encoder)
        self._decode = self.runtime.maybe_compile(self.model.decode)
        self.size = self.model.img_size
        self.spacing = float(spacing)
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
        with an optional 4x4 voxel -> RAS mm affine (identity, 1 mm, when None). Clears objects and cache.
        """
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
        self._objects: list[_ObjectState] = [_ObjectState(label=1)]
        self._history: list[list[_ObjectState]] = []
        self._label_map: np.ndarray | None = None
        self._masks: list[np.ndarray] = []  # per object, before the overlap policy

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
        self._embedding(self._window_at(self._to_voxel(point, world)))

    # ----------------------------------------------------------------- prompts
    def _to_voxel(self, point: tuple[float, float, float] | np.ndarray, world: bool) -> np.ndarray:
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"a point must be 3 finite numbers (i, j, k), got {point!r}")
        vol = self.volume
        v = world_to_voxel(p, vol.affine) if world else p
        shape = np.asarray(vol.shape)
        if np.any(v < -0.5) or np.any(v >= shape - 0.5):
            pt = tuple(float(x) for x in p)
            what = (
                f"world point {pt} mm (RAS) = voxel {tuple(float(x) for x in np.round(v, 2))}"
                if world
                else f"point {pt}"
            )
            raise ValueError(f"{what} is outside the volume of shape {tuple(vol.shape)} (valid voxel indices 0..n-1)")
        return v

    def _window_at(self, voxel: np.ndarray) -> Window:
        return Window(voxel_to_world(voxel, self.volume.affine), size=self.size, spacing=self.spacing)

    @property
    def _current(self) -> _ObjectState:
        return self._objects[-1]

    def _snapshot(self) -> None:
        # Logits and masks are never modified in place, so states can share them: only lists are copied.
        self._history.append(
            [replace(o, windows=[replace(ws, clicks=list(ws.clicks)) for ws in o.windows]) for o in self._objects]
        )

    def add_click(
        self, point: tuple[float, float, float] | np.ndarray, positive: bool = True, *, world: bool = False
    ) -> np.ndarray:
        """Add a click to the current object and return its mask (uint8, shaped like the image array).

        ``point`` is a voxel index (i, j, k) of the image array, or with ``world=True`` a point in mm RAS+.
        """
        voxel = self._to_voxel(point, world)
        self._snapshot()
        self.timings = Timings()
        obj = self._current
        obj.num_clicks += 1
        label = 1 if positive else 0
        hit = False
        for ws in obj.windows:
            wc = voxel_to_window(voxel, self.volume.affine, ws.window)
            if ws.window.contains(wc):
                ws.clicks.append((wc, label))
                self._predict(ws)
                hit = True
        # A negative click outside every window marks voxels the object does not hold; a window prompted
        # only by it could add foreground, and would cost an encoder pass.
        if not hit and positive:
            ws = _WindowState(self._window_at(voxel))
            ws.clicks.append((voxel_to_window(voxel, self.volume.affine, ws.window), label))
            obj.windows.append(ws)
            self._predict(ws)
        self._grow(obj)
        return self._commit()

    def add_box(
        self, lo: tuple[float, float, float], hi: tuple[float, float, float], *, world: bool = False
    ) -> np.ndarray:
        """Segment inside a 3D box given by two opposite corners; returns the current object's mask.

        Mapped to prompts as the module docstring says: positive click at the centre, result restricted
        to the box grown by ``box_margin_mm``.
        """
        a, b = self._to_voxel(lo, world), self._to_voxel(hi, world)
        lo_v, hi_v = np.minimum(a, b), np.maximum(a, b)
        margin = self.box_margin_mm / np.asarray(self.volume.spacing)
        self._snapshot()
        self.timings = Timings()
        obj = self._current
        obj.box = (np.floor(lo_v - margin), np.ceil(hi_v + margin))
        centre = (lo_v + hi_v) / 2
        ws = _WindowState(self._window_at(centre))
        ws.clicks.append((voxel_to_window(centre, self.volume.affine, ws.window), 1))
        obj.windows.append(ws)
        self._predict(ws)
        self._grow(obj)
        return self._commit()

    def _predict(self, ws: _WindowState) -> None:
        emb = self._embedding(ws.window)
        t0 = time.perf_counter()
        coords = torch.tensor(np.stack([c for c, _ in ws.clicks]), dtype=torch.float32, device=self.device)[None]
        labels = torch.tensor([lab for _, lab in ws.clicks], dtype=torch.long, device=self.device)[None]
        g = self.size // 4
        prev = ws.logits if ws.logits is not None else torch.zeros(1, 1, g, g, g, device=self.device)
        with self.runtime.context():
            low, _ = self._decode(emb, coords, labels, prev)
            # A copy: a compiled decoder may reuse its output buffers on the next call.
            ws.logits = low = low.float().clone()
            ws.mask = self.model.upsample_mask(low).cpu().numpy()
        self.timings.decode_ms += (time.perf_counter() - t0) * 1e3

    def _grow(self, obj: _ObjectState) -> None:
        """Add overlapping windows where masks touch a window border (see module docstring)."""
        queue = list(obj.windows)
        while queue and len(obj.windows) < self.max_windows:
            ws = queue.pop(0)
            for centre_vox, seed_vox in self._border_touches(ws):
                if len(obj.windows) >= self.max_windows:
                    break
                win = self._window_at(centre_vox)
                if any(
                    np.allclose(win.center_world, o.window.center_world, atol=self.spacing * self.size / 4)
                    for o in obj.windows
                ):
                    continue
                new = _WindowState(win)
                new.clicks.append((voxel_to_window(seed_vox, self.volume.affine, win), 1))
                self._predict(new)
                obj.windows.append(new)
                queue.append(new)

    def _border_touches(self, ws: _WindowState) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each window face the mask touches (inside the volume): the next window's centre and a seed
        voxel (volume indices) on the mask inside the overlap."""
        m, s = ws.mask, self.size
        out = []
        shape = np.asarray(self.volume.shape)
        for axis in range(3):
            for side, idx in ((0, 0), (1, s - 1)):
                face = np.take(m, idx, axis=axis)
                if not face.any():
                    continue
                uv = np.argwhere(face).mean(0)
                centre_w = np.insert(uv, axis, float(idx))  # on the face: the windows overlap by half
                centre_v = window_to_voxel(centre_w, self.volume.affine, ws.window)
                # Stay where there is image: a window centred outside the volume sees only padding.
                if np.any(centre_v < -0.5) or np.any(centre_v > shape - 0.5):
                    centre_v = np.clip(centre_v, 0, shape - 1)
                # Seed: a mask voxel a quarter window inside the face, nearest the touching centroid.
                depth = idx - s // 4 if side else idx + s // 4
                plane = np.take(m, depth, axis=axis)
                if not plane.any():
                    continue
                pts = np.argwhere(plane)
                seed_uv = pts[np.argmin(((pts - uv) ** 2).sum(1))]
                seed_w = np.insert(seed_uv.astype(float), axis, depth)
                out.append((centre_v, window_to_voxel(seed_w, self.volume.affine, ws.window)))
        return out

    # ----------------------------------------------------------------- results
    def _object_mask(self, obj: _ObjectState) -> np.ndarray:
        vol = self.volume
        mask = np.zeros(vol.shape, dtype=np.uint8)
        for ws in obj.windows:
            if ws.mask is not None:
                mask |= paste_back(ws.mask, ws.window, vol.shape, vol.affine)
        if obj.box is not None:
            lo = np.clip(obj.box[0], 0, np.asarray(vol.shape) - 1).astype(int)
            hi = np.clip(obj.box[1], 0, np.asarray(vol.shape) - 1).astype(int)
            keep = np.zeros_like(mask)
            sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
            keep[sl] = mask[sl]
            mask = keep
        return mask

    def _commit(self, everything: bool = False) -> np.ndarray:
        """Recompute the current object's mask (every object's after undo)."""
        t0 = time.perf_counter()
        if everything or len(self._masks) != len(self._objects):
            self._masks = [self._object_mask(o) for o in self._objects]
        else:
            self._masks[-1] = self._object_mask(self._current)
        self._label_map = None
        self.timings.paste_ms += (time.perf_counter() - t0) * 1e3
        return self._visible_mask(len(self._objects) - 1)

    def _visible_mask(self, index: int) -> np.ndarray:
        """Mask of object ``index`` after the overlap policy."""
        masks = self._masks
        m = masks[index].copy()
        others = masks[:index] if not self.overwrite else masks[index + 1 :]
        for o in others:
            m[o > 0] = 0
        return m

    @property
    def mask(self) -> np.ndarray:
        """Current object's mask (uint8 0/1, shaped like the image array)."""
        self.volume  # noqa: B018 - raises when no image is set
        if len(self._masks) != len(self._objects):
            self._commit(everything=True)
        return self._visible_mask(len(self._objects) - 1)

    @property
    def label_map(self) -> np.ndarray:
        """All objects in one label map (object n has label n), shaped like the image array."""
        vol = self.volume
        if self._label_map is None:
            dtype = np.uint8 if len(self._objects) < 256 else np.uint16
            lm = np.zeros(vol.shape, dtype=dtype)
            if len(self._masks) != len(self._objects):
                self._commit(everything=True)
            for i, obj in enumerate(self._objects):
                lm[self._visible_mask(i) > 0] = obj.label
            self._label_map = lm
        return self._label_map

    def new_object(self) -> int:
        """Start a new object in the same label map; returns its label."""
        self.volume  # noqa: B018 - raises when no image is set
        self._snapshot()
        label = self._objects[-1].label + 1
        self._objects.append(_ObjectState(label=label))
        self._commit(everything=True)
        return label

    def undo(self) -> np.ndarray:
        """Undo the last click, box or new_object; returns the current object's mask."""
        if not self._history:
            raise ValueError("nothing to undo")
        self._objects = self._history.pop()
        return self._commit(everything=True)

    @property
    def windows(self) -> list[tuple[Window, np.ndarray]]:
        """The current object's windows and their (size,)^3 bool masks (before any box restriction),
        in the order they were opened; the first is centred on the object's first click or box."""
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
