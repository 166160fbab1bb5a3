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

Objects share one uint8 label map (object n has label n, at most :data:`MAX_OBJECTS`). Overlap policy: by
default a new object never overwrites voxels of earlier objects (``overwrite=False``); with
``overwrite=True`` the newest wins. Each object keeps its mask cropped to its bounding box, so empty or
small objects cost next to nothing, and a prompt that fails half-way leaves the session as it was.

Boxes. The released weights have no box embedding, so a 3D box becomes: a window centred on the box
centre, a positive click at the box centre, and the result restricted to the box grown by
``box_margin_mm``. A box drawn on one slice (``lo`` and ``hi`` equal along one axis, a "2D box") asks for
the 3D object: the same click, restricted in-plane only, never through-plane.

Other prompts, and how they reach the SAM family (SAM-Med3D, FastSAM3D, volsam's SAM-style models),
whose only inputs are clicks and a low-res mask prompt:

- **scribble** (:meth:`Session.add_scribble`, a set of voxels, positive or negative): up to 3 clicks of its
  sign, farthest-point sampled along the stroke (in mm), the first nearest the stroke's centroid;
- **lasso** (:meth:`Session.add_lasso`, a filled polygon on one slice, positive or negative): up to 3
  clicks of its sign at the maxima of the polygon's in-plane distance transform (its deepest points);
- **initial mask** (:meth:`Session.set_initial_mask`, edit an existing mask or resume saved work): the
  object's mask until prompts refine it; every window the object opens later starts from the mask's
  logits (``+-MASK_PROMPT_LOGIT`` where the window sees the mask / not, area-averaged onto the low-res
  grid) as its mask prompt instead of zeros, and inside the windows' footprint the model's output replaces
  the initial mask (outside it the initial mask stays). A negative click on the initial mask opens a
  window (elsewhere a negative click outside every window still adds nothing);
- a **negative box** has no SAM-family mapping: a one-line ``ValueError`` says so.

Every prompt is also kept per object in voxel space (``_ObjectState.prompts``), so models that take
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from volsam.hub import is_official, list_weights, weights_info, weights_path
from volsam.io import Volume, read_image, volume_from_array, write_mask
from volsam.modeling import PromptableModel
from volsam.registry import DEFAULT_MODEL, build_model, list_models, load_checkpoint
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
#: Objects one session holds: labels 1..255 fit the uint8 label map.
MAX_OBJECTS = 255

PROMPT_KINDS = ("point", "box", "scribble", "lasso")
PROMPT_CHANNELS = tuple(f"{k}{sign}" for k in PROMPT_KINDS for sign in "+-")
"""Order of :meth:`Session.prompt_channels`: point+, point-, box+, box-, scribble+, scribble-, lasso+, lasso-."""
SAM_FAMILY_PROMPTS = frozenset({"point+", "point-", "box+", "scribble+", "scribble-", "lasso+", "lasso-", "initial"})
"""What a click-and-mask-prompt model takes (the mapping is in the module docstring); a model may declare
its own set as a ``supported_prompts`` attribute."""
MASK_PROMPT_LOGIT = 8.0
"""Logit magnitude of an initial mask turned into a mask prompt (``+`` inside, ``-`` outside)."""
CLICKS_PER_STROKE = 3
"""Clicks a scribble or lasso becomes for the SAM family (fewer for short strokes or thin polygons)."""


def default_weights_path() -> Path:
    """Bundled weights of the default model."""
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"


# Where the official weights of the registered architectures come from (named in the error for a bare name).
_OFFICIAL_WEIGHTS = {
    "sam_med3d": ("sam_med3d_turbo.pth", "the SAM-Med3D release (github.com/uni-medical/SAM-Med3D)", "sam_med3d_turbo"),
    "fastsam3d": ("FastSAM3D.pth", "the FastSAM3D release (github.com/arcadelab/FastSAM3D)", "fastsam3d_official"),
}


def _named_model(name: str, random_weights: bool) -> PromptableModel:
    """A registered name: the default model with its bundled weights, random weights only when asked
    (tests, benchmarks), else a one-line error saying which weights file to give."""
    if random_weights:
        return build_model(name)
    if name == DEFAULT_MODEL and default_weights_path().is_file():
        return build_model(name, default_weights_path())
    if name in _OFFICIAL_WEIGHTS:
        file, source, hub_name = _OFFICIAL_WEIGHTS[name]
        how = (
            f"give its weights file (e.g. --model {file}; official weights: {source}), "
            f"or `volsam weights fetch {hub_name}` then --model {hub_name}"
        )
    else:
        how = f"give a weights file trained for it (no official weights exist; `volsam train --model {name}` makes one)"
    raise ValueError(
        f"model {name!r} is an architecture without weights and would segment at random: {how}; "
        "random weights only with --random-weights (random_weights=True), for tests and benchmarks"
    )


def resolve_model(
    model: str | Path | PromptableModel | None,
    device: str | torch.device | None = None,
    *,
    decoder_checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    attention_backend: str | None = None,
    random_weights: bool = False,
) -> PromptableModel:
    """A model from a registered name, official weights by name (:mod:`volsam.hub`, once fetched), a
    checkpoint path, an ONNX export folder (``volsam export``, run
    by onnxruntime on the CPU), an instance, or None (the shipped default).

    A registered name carries no weights: only the default model's resolves (to its bundled weights);
    others are a ValueError naming the weights file to give, unless ``random_weights`` (tests, benchmarks).
    ``attention_backend`` (``"dense"`` or ``"dilated"``) switches the encoder's global attention, same
    weights (:meth:`~volsam.modeling.sam3d.Sam3D.set_attention_backend`); an instance
    passed in is switched in place."""
    if model is not None and not isinstance(model, PromptableModel) and (Path(model) / "export.json").is_file():
        from volsam.export import OnnxModel

        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"an ONNX export runs on the CPU here, got device {device}")
        if attention_backend is not None:
            raise ValueError("an ONNX export has its attention fixed at export time; export the model with it")
        return OnnxModel(model)  # type: ignore[return-value]
    if isinstance(model, PromptableModel):
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
        net = _named_model(model, random_weights)
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
    logits: torch.Tensor | None = None  # previous low-res logits [1, 1, g, g, g] (g = model.low_res_size)
    mask: np.ndarray | None = None  # window mask (size,)^3 bool


@dataclass(frozen=True, eq=False)
class _Prompt:
    """One user prompt in volume voxel space: ``mask`` (bool sub-volume) placed at voxel ``origin``.

    Never modified after creation, so undo snapshots share them."""

    kind: str  # one of PROMPT_KINDS
    positive: bool
    origin: np.ndarray  # (3,) int64, the volume voxel of mask[0, 0, 0]
    mask: np.ndarray  # bool (a, b, c) >= 1 voxel per axis

    def voxels(self) -> np.ndarray:
        """Volume voxel indices (N, 3) int64 of the prompt."""
        return np.argwhere(self.mask) + self.origin


@dataclass(frozen=True)
class _Crop:
    """A mask kept as its bounding box: ``data`` (bool) covers voxels ``lo .. lo + data.shape - 1``."""

    lo: tuple[int, int, int]
    data: np.ndarray

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, a + n) for a, n in zip(self.lo, self.data.shape, strict=True))  # type: ignore[return-value]

    @staticmethod
    def of(mask: np.ndarray) -> _Crop | None:
        """The crop of a full-size mask; None when it is empty."""
        axes = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        if any(a.size == 0 for a in axes):
            return None
        lo = tuple(int(a[0]) for a in axes)
        sl = tuple(slice(int(a[0]), int(a[-1]) + 1) for a in axes)
        return _Crop(lo, mask[sl].astype(bool))  # type: ignore[arg-type]

    def overlap(self, other: _Crop) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """Slices of the common box in ``self.data`` and in ``other.data``; None when they do not meet."""
        mine, theirs = [], []
        for a, n, b, m in zip(self.lo, self.data.shape, other.lo, other.data.shape, strict=True):
            start, stop = max(a, b), min(a + n, b + m)
            if start >= stop:
                return None
            mine.append(slice(start - a, stop - a))
            theirs.append(slice(start - b, stop - b))
        return tuple(mine), tuple(theirs)


@dataclass
class _ObjectState:
    label: int
    windows: list[_WindowState] = field(default_factory=list)
    box: tuple[np.ndarray, np.ndarray] | None = None  # voxel bounds, inclusive (+-inf: unbounded axis)
    num_clicks: int = 0  # user clicks (windows also hold the seeds of grown windows)
    prompts: list[_Prompt] = field(default_factory=list)  # every user prompt, in order (voxel space)
    initial: np.ndarray | None = None  # bool volume-shaped initial mask (read-only), see set_initial_mask
    mask: _Crop | None = None  # the object's mask before the overlap policy (None: empty); replaced, never edited


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
        v, inside = self._voxels_inside(p[None], world)
        v = v[0]
        if not inside[0]:
            pt = tuple(float(x) for x in p)
            what = (
                f"world point {pt} mm (RAS) = voxel {tuple(round(float(x), 2) for x in v)}"
                if world
                else f"point {pt}"
            )
            raise ValueError(f"{what} is outside the volume of shape {tuple(vol.shape)} (valid voxel indices 0..n-1)")
        return v

    def _voxels_inside(self, points: np.ndarray, world: bool) -> tuple[np.ndarray, np.ndarray]:
        """Finite points (N, 3) (voxel, or mm RAS+ with ``world``) -> float voxel coordinates (N, 3) and (N,)
        bool: the point rounds to a voxel of the volume. Checked on floats, before any integer cast."""
        with np.errstate(over="ignore", invalid="ignore"):  # a huge world point: inf/NaN, never inside
            v = world_to_voxel(points, self.volume.affine) if world else points
        inside = np.all(np.isfinite(v) & (v >= -0.5) & (v < np.asarray(self.volume.shape) - 0.5), axis=1)
        return v, inside

    def _window_at(self, voxel: np.ndarray) -> Window:
        return Window(voxel_to_world(voxel, self.volume.affine), size=self.size, spacing=self.spacing)

    @property
    def _current(self) -> _ObjectState:
        return self._objects[-1]

    def _snapshot(self) -> None:
        # Logits and masks are never modified in place, so states can share them: only lists are copied.
        # Prompts change only the current object, so earlier ones are shared with the snapshot as they are.
        cur = self._current
        copy = replace(
            cur, windows=[replace(ws, clicks=list(ws.clicks)) for ws in cur.windows], prompts=list(cur.prompts)
        )
        self._history.append([*self._objects[:-1], copy])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Snapshot for undo; when the prompt fails half-way (a model error, no memory), restore it."""
        self._snapshot()
        self.timings = Timings()
        try:
            yield
        except BaseException:
            self._objects = self._history.pop()
            self._label_map = None
            raise

    def add_click(
        self, point: tuple[float, float, float] | np.ndarray, positive: bool = True, *, world: bool = False
    ) -> np.ndarray:
        """Add a click to the current object and return its mask (uint8, shaped like the image array).

        ``point`` is a voxel index (i, j, k) of the image array, or with ``world=True`` a point in mm RAS+.
        """
        voxel = self._to_voxel(point, world)
        with self._transaction():
            obj = self._current
            obj.num_clicks += 1
            obj.prompts.append(_point_prompt(voxel, positive))
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
            if not hit and (positive or self._on_initial(obj, voxel)):
                ws = self._window_state(obj, self._window_at(voxel))
                ws.clicks.append((voxel_to_window(voxel, self.volume.affine, ws.window), label))
                obj.windows.append(ws)
                self._predict(ws)
            self._grow(obj)
            return self._commit()

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
        with self._transaction():
            obj = self._current
            box_lo, box_hi = np.floor(lo_v - margin), np.ceil(hi_v + margin)
            box_lo[flat], box_hi[flat] = -np.inf, np.inf  # a 2D box: no through-plane restriction
            obj.box = (box_lo, box_hi)
            obj.prompts.append(_box_prompt(lo_v, hi_v, positive))
            centre = (lo_v + hi_v) / 2
            ws = self._window_state(obj, self._window_at(centre))
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
        prev = ws.logits if ws.logits is not None else self.model.no_mask_prompt(1, self.device)
        extra = self._dense_prompts(ws.window) if self.model.kind == "fusion" else {}
        with self.runtime.context():
            low, _ = self._decode(emb, coords, labels, prev, **extra)
            # A copy: a compiled decoder may reuse its output buffers on the next call.
            ws.logits = low = low.float().clone()
            ws.mask = self.model.upsample_mask(low).cpu().numpy()
        self.timings.decode_ms += (time.perf_counter() - t0) * 1e3

    def _dense_prompts(self, window: Window) -> dict[str, dict[str, torch.Tensor]]:
        """An early-fusion model's box channels for ``window`` (``decode``'s ``dense_prompts``); clicks reach
        it as points, scribbles and lassos as their sampled clicks (the module docstring's mapping)."""
        boxes = [p for p in self._current.prompts if p.kind == "box"]
        if not boxes:
            return {}
        out: dict[str, torch.Tensor] = {}
        for p in boxes:
            name = "box_pos" if p.positive else "box_neg"
            m = torch.from_numpy(self._prompt_in_window(p, window).astype(np.float32))[None, None].to(self.device)
            out[name] = torch.maximum(out[name], m) if name in out else m
        return {"dense_prompts": out}

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
                new = self._window_state(obj, win)
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
        if obj.initial is not None:
            # The initial mask outside the windows' footprint, the model's output inside it.
            out = obj.initial.astype(np.uint8)
            blank = np.zeros((self.size,) * 3, dtype=np.uint8)
            for ws in obj.windows:
                paste_back(blank, ws.window, vol.shape, vol.affine, out=out)
            mask = out | mask
        return mask

    def _commit(self) -> np.ndarray:
        """Recompute the current object's mask (the only one a prompt changes) and return it visible."""
        t0 = time.perf_counter()
        self._current.mask = _Crop.of(self._object_mask(self._current))
        self._label_map = None
        self.timings.paste_ms += (time.perf_counter() - t0) * 1e3
        return self._visible_mask(len(self._objects) - 1)

    def _visible_mask(self, index: int) -> np.ndarray:
        """Mask of object ``index`` after the overlap policy (uint8, shaped like the image array)."""
        out = np.zeros(self.volume.shape, dtype=np.uint8)
        crop = self._objects[index].mask
        if crop is None:
            return out
        keep = crop.data.copy()
        others = self._objects[:index] if not self.overwrite else self._objects[index + 1 :]
        for o in others:
            common = crop.overlap(o.mask) if o.mask is not None else None
            if common is not None:
                keep[common[0]] &= ~o.mask.data[common[1]]  # type: ignore[union-attr]
        out[crop.slices] = keep
        return out

    @property
    def mask(self) -> np.ndarray:
        """Current object's mask (uint8 0/1, shaped like the image array)."""
        self.volume  # noqa: B018 - raises when no image is set
        return self._visible_mask(len(self._objects) - 1)

    @property
    def label_map(self) -> np.ndarray:
        """All objects in one uint8 label map (object n has label n), shaped like the image array."""
        vol = self.volume
        if self._label_map is None:
            lm = np.zeros(vol.shape, dtype=np.uint8)
            # Painted so that the object the overlap policy favours is painted last: the oldest by default.
            for obj in self._objects if self.overwrite else reversed(self._objects):
                if obj.mask is not None:
                    lm[obj.mask.slices][obj.mask.data] = obj.label
            self._label_map = lm
        return self._label_map

    def new_object(self) -> int:
        """Start a new object in the same label map; returns its label (ValueError past MAX_OBJECTS)."""
        self.volume  # noqa: B018 - raises when no image is set
        if len(self._objects) >= MAX_OBJECTS:
            raise ValueError(f"a session holds at most {MAX_OBJECTS} objects (labels of one uint8 label map)")
        self._snapshot()
        label = self._objects[-1].label + 1
        self._objects.append(_ObjectState(label=label))
        self._label_map = None
        return label

    def undo(self) -> np.ndarray:
        """Undo the last click, box or new_object; returns the current object's mask."""
        if not self._history:
            raise ValueError("nothing to undo")
        self._objects = self._history.pop()
        self._label_map = None
        return self.mask

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

    def _window_state(self, obj: _ObjectState, window: Window) -> _WindowState:
        """A new window of ``obj``; with an initial mask, its mask prompt starts from the mask's logits."""
        ws = _WindowState(window)
        if obj.initial is not None:
            frac = extract_window(obj.initial.view(np.uint8), self.volume.affine, window, order=1)
            low = torch.nn.functional.adaptive_avg_pool3d(
                torch.from_numpy(frac)[None, None], self.model.low_res_size
            )
            ws.logits = (MASK_PROMPT_LOGIT * (2 * low - 1)).to(self.device)
        return ws

    def _on_initial(self, obj: _ObjectState, voxel: np.ndarray) -> bool:
        if obj.initial is None:
            return False
        idx = np.clip(np.floor(voxel + 0.5).astype(int), 0, np.asarray(self.volume.shape) - 1)
        return bool(obj.initial[tuple(idx)])

    def _voxel_set(self, voxels: np.ndarray, world: bool, what: str) -> np.ndarray:
        """Points (N, 3) (voxel, or mm RAS+ with ``world``) or a volume-shaped mask -> unique voxels (N, 3)."""
        vol = self.volume
        a = np.asarray(voxels)
        if a.ndim == 3 and a.shape == vol.shape:
            if world:
                raise ValueError(f"a {what} given as a mask is on the image grid; world=True is for points")
            idx = np.argwhere(a)
        else:
            p = np.asarray(a, dtype=np.float64)
            if p.ndim != 2 or p.shape[1] != 3 or not np.all(np.isfinite(p)):
                raise ValueError(
                    f"a {what} must be finite points (N, 3) or a mask shaped like the image {vol.shape}, "
                    f"got shape {a.shape}"
                )
            v, inside = self._voxels_inside(p, world)
            bad = ~inside
            if bad.any():
                raise ValueError(f"{what} point {tuple(p[bad][0].tolist())} is outside the volume of shape {vol.shape}")
            idx = np.floor(v + 0.5).astype(np.int64)
        if len(idx) == 0:
            raise ValueError(f"a {what} needs at least one voxel, got none")
        return np.unique(idx.astype(np.int64), axis=0)

    def _add_prompt(self, prompt: _Prompt, clicks: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """Record ``prompt`` and route its SAM-family ``clicks`` (volume voxels, label 1/0) like add_click,
        predicting each touched window once."""
        with self._transaction():
            obj = self._current
            obj.prompts.append(prompt)
            touched: list[_WindowState] = []
            for voxel, label in clicks:
                hit = False
                for ws in obj.windows:
                    wc = voxel_to_window(voxel, self.volume.affine, ws.window)
                    if ws.window.contains(wc):
                        ws.clicks.append((wc, label))
                        hit = True
                        if not any(t is ws for t in touched):
                            touched.append(ws)
                if not hit and (label == 1 or self._on_initial(obj, voxel)):
                    ws = self._window_state(obj, self._window_at(voxel))
                    ws.clicks.append((voxel_to_window(voxel, self.volume.affine, ws.window), label))
                    obj.windows.append(ws)
                    touched.append(ws)
            for ws in touched:
                self._predict(ws)
            self._grow(obj)
            return self._commit()

    def add_scribble(self, voxels: np.ndarray, positive: bool = True, *, world: bool = False) -> np.ndarray:
        """Add a scribble to the current object: points (N, 3) (voxel indices, or mm RAS+ with ``world``;
        rounded to voxels) or a mask shaped like the image. Returns the current object's mask.

        SAM family: up to ``CLICKS_PER_STROKE`` clicks of its sign, farthest-point sampled in mm."""
        self._require("scribble", positive)
        idx = self._voxel_set(voxels, world, "scribble")
        clicks = _farthest_points(idx, np.asarray(self.volume.spacing), CLICKS_PER_STROKE)
        label = 1 if positive else 0
        return self._add_prompt(_prompt_from_voxels("scribble", positive, idx), [(c, label) for c in clicks])

    def add_lasso(
        self,
        polygon: np.ndarray,
        axis: int | None = None,
        index: int | None = None,
        positive: bool = True,
    ) -> np.ndarray:
        """Add a lasso to the current object: a closed polygon (M, 2) drawn on the slice ``index`` of voxel
        ``axis`` (vertices in voxel coordinates of the two other axes, in increasing axis order; the voxels
        whose centres lie inside or on the outline are taken), or an already filled mask shaped like the
        image (``axis``/``index`` unused). Returns the current object's mask.

        SAM family: up to ``CLICKS_PER_STROKE`` clicks of its sign at the in-plane distance-transform
        maxima of the filled region."""
        self._require("lasso", positive)
        vol = self.volume
        poly = np.asarray(polygon)
        if poly.ndim == 3:
            idx = self._voxel_set(poly, False, "lasso")
        else:
            if axis not in (0, 1, 2) or index is None or not 0 <= int(index) < vol.shape[axis]:
                raise ValueError(
                    f"a lasso polygon needs axis 0, 1 or 2 and a slice index inside the volume {vol.shape}, "
                    f"got axis={axis!r} index={index!r}"
                )
            plane = tuple(a for a in range(3) if a != axis)
            uv = _fill_polygon(poly, (vol.shape[plane[0]], vol.shape[plane[1]]))
            idx = np.insert(uv, axis, int(index), axis=1)
        prompt = _prompt_from_voxels("lasso", positive, idx)
        clicks = _deepest_points(prompt.mask, np.asarray(vol.spacing), CLICKS_PER_STROKE) + prompt.origin
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
            self._objects[-1] = _ObjectState(label=self._current.label, initial=initial)
            return self._commit()

    def prompt_channels(self, window: Window) -> np.ndarray:
        """The current object's prompts as dense masks in ``window`` coordinates: float32
        ``[len(PROMPT_CHANNELS), size, size, size]`` (0/1; channel order ``PROMPT_CHANNELS``), for
        models that take prompts as input channels. A prompt covers each window voxel its voxels round to
        (thin strokes are never lost on a coarser window) and each window voxel whose centre falls in one
        of its voxels (none is sparse on a finer window)."""
        out = np.zeros((len(PROMPT_CHANNELS), *window.shape), dtype=np.float32)
        for p in self._current.prompts:
            c = PROMPT_CHANNELS.index(f"{p.kind}{'+' if p.positive else '-'}")
            out[c][self._prompt_in_window(p, window)] = 1.0
        return out

    def initial_in_window(self, window: Window) -> np.ndarray | None:
        """The current object's initial mask resampled (trilinear, 0..1 float32 ``(size,)*3``) onto
        ``window``: the previous-probability input before the first prediction; None without one."""
        init = self._current.initial
        if init is None:
            return None
        return extract_window(init.view(np.uint8), self.volume.affine, window, order=1)

    def _prompt_in_window(self, p: _Prompt, window: Window) -> np.ndarray:
        affine = self.volume.affine
        shift = np.eye(4)
        shift[:3, 3] = p.origin - 1  # the crop is padded by one empty voxel: its hull then covers every voxel
        sub = np.pad(p.mask, 1).view(np.uint8)
        inside = extract_window(sub, affine @ shift, window, order=0) > 0.5
        if p.mask.sum() <= _SCATTER_MAX:
            wc = np.floor(voxel_to_window(p.voxels(), affine, window) + 0.5).astype(np.int64)
            ok = np.all((wc >= 0) & (wc < window.size), axis=1)
            inside[tuple(wc[ok].T)] = True
        return inside


_SCATTER_MAX = 1 << 20  # voxels of a prompt also scattered into windows (strokes; not huge boxes)


def _prompt_from_voxels(kind: str, positive: bool, idx: np.ndarray) -> _Prompt:
    lo = idx.min(axis=0)
    mask = np.zeros(tuple(idx.max(axis=0) - lo + 1), dtype=bool)
    mask[tuple((idx - lo).T)] = True
    mask.setflags(write=False)
    return _Prompt(kind, positive, lo.astype(np.int64), mask)


def _point_prompt(voxel: np.ndarray, positive: bool) -> _Prompt:
    return _prompt_from_voxels("point", positive, np.floor(np.asarray(voxel) + 0.5).astype(np.int64)[None])


def _box_prompt(lo: np.ndarray, hi: np.ndarray, positive: bool) -> _Prompt:
    a, b = np.floor(lo + 0.5).astype(np.int64), np.floor(hi + 0.5).astype(np.int64)
    mask = np.ones(tuple(b - a + 1), dtype=bool)
    mask.setflags(write=False)
    return _Prompt("box", positive, a, mask)


def _farthest_points(idx: np.ndarray, spacing: np.ndarray, k: int) -> list[np.ndarray]:
    """Up to ``k`` voxels of ``idx`` (N, 3): the one nearest the centroid, then each farthest (mm) from
    those chosen."""
    mm = idx * spacing
    chosen = [int(np.argmin(((mm - mm.mean(0)) ** 2).sum(1)))]
    dist = ((mm - mm[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(k, len(idx)) and dist.max() > 0:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, ((mm - mm[chosen[-1]]) ** 2).sum(1))
    return [idx[i].astype(np.float64) for i in chosen]


def _deepest_points(mask: np.ndarray, spacing: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` voxels (K, 3) of ``mask`` (a crop) at maxima of its distance transform (mm), computed
    in-plane for a one-slice mask; each next maximum lies outside the balls of those chosen and at least
    half as deep as the first."""
    import scipy.ndimage as ndi

    keep = [a for a in range(3) if mask.shape[a] > 1]
    flat = mask.reshape([mask.shape[a] for a in keep]) if keep else mask.reshape(1)
    if not keep:
        return np.zeros((1, 3), dtype=np.int64)
    sp = spacing[keep]
    dist = ndi.distance_transform_edt(np.pad(flat, 1), sampling=sp)[(slice(1, -1),) * len(keep)]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in flat.shape], indexing="ij"), -1) * sp
    out = []
    first = None
    while len(out) < k:
        i = np.unravel_index(int(np.argmax(dist)), dist.shape)
        d = float(dist[i])
        if d <= 0 or (first is not None and d < first / 2):
            break
        first = d if first is None else first
        out.append(i)
        dist = np.where(((grid - grid[i]) ** 2).sum(-1) <= (2 * d) ** 2, 0.0, dist)
    pts = np.zeros((len(out), 3), dtype=np.int64)
    pts[:, keep] = np.asarray(out, dtype=np.int64)
    return pts


_MAX_LASSO_COORD = 1e9  # voxels; beyond it edge arithmetic nears float overflow, and no slice is that large


def _clip_segments(
    start: np.ndarray, end: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The parts of segments ``start -> end`` (N, D) inside the box ``lo <= x <= hi`` (Liang-Barsky); segments
    that miss the box are dropped. Returns the clipped (start, end), each (K, D), K <= N."""
    d = end - start
    t0, t1 = np.zeros(len(start)), np.ones(len(start))
    keep = np.ones(len(start), dtype=bool)
    for k in range(start.shape[1]):
        flat = d[:, k] == 0
        keep &= ~flat | ((start[:, k] >= lo[k]) & (start[:, k] <= hi[k]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (lo[k] - start[:, k]) / d[:, k], (hi[k] - start[:, k]) / d[:, k]
        t0 = np.where(flat, t0, np.maximum(t0, np.minimum(ta, tb)))
        t1 = np.where(flat, t1, np.minimum(t1, np.maximum(ta, tb)))
    keep &= t0 <= t1
    return start[keep] + t0[keep, None] * d[keep], start[keep] + t1[keep, None] * d[keep]


def _fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """In-plane voxels (N, 2) of a closed polygon (M, 2) whose centres lie inside it or on its outline,
    clipped to ``shape``."""
    from matplotlib.path import Path as PolyPath

    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.all(np.isfinite(poly)):
        raise ValueError(f"a lasso polygon must be at least 3 finite vertices (M, 2), got shape {poly.shape}")
    if np.abs(poly).max() > _MAX_LASSO_COORD:
        raise ValueError(f"lasso vertices must lie within {_MAX_LASSO_COORD:.0e} voxels of the origin, "
                         f"got {np.abs(poly).max():.3g}")
    lo = np.clip(np.floor(poly.min(0)), 0, np.asarray(shape) - 1).astype(int)  # clipped before the cast,
    hi = np.clip(np.ceil(poly.max(0)), 0, np.asarray(shape) - 1).astype(int)  # which far vertices overflow
    uu, vv = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    centres = np.stack([uu.ravel(), vv.ravel()], -1)
    inside = centres[PolyPath(poly).contains_points(centres)]
    # The outline itself, sampled every half voxel, so thin or tiny polygons still hold voxels; each edge is
    # first clipped to the slice, so a vertex far outside costs no more than one inside.
    a, b = _clip_segments(poly, np.roll(poly, -1, axis=0), np.full(2, -1.0), np.asarray(shape, np.float64))
    steps = np.ceil(2 * np.abs(b - a).max(1)).astype(int) + 1
    outline = np.concatenate([np.zeros((0, 2))] + [np.linspace(p, q, n) for p, q, n in zip(a, b, steps, strict=True)])
    outline = np.floor(outline + 0.5).astype(np.int64)
    pts = np.concatenate([inside.astype(np.int64), outline])
    pts = pts[np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)]
    if len(pts) == 0:
        raise ValueError(f"the lasso polygon lies outside the slice of shape {shape}")
    return np.unique(pts, axis=0)
