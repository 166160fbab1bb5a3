"""Training samples: 128^3 windows at 1.5 mm around one target, with MONAI augmentation.

A sample is a pure function of ``(seed, index)``: sample ``index`` belongs to epoch ``index // P`` (P =
number of (case, target) pairs), whose pair order is a permutation seeded by ``(seed, epoch)``; the
window, synthetic-image, spatial- and intensity-augmentation draws come from four generators seeded
``[seed, 1, index, k]``.
So a resumed run, a run with DataLoader workers and a run sharded over processes (each rank takes its
own indices of the global batch, see :class:`StepSampler`) all see exactly the same data.

Windows. The window centre is a random foreground voxel of the target, moved by a uniform jitter of at
most ``jitter_mm`` per axis, capped so that the chosen voxel stays at least ``margin`` voxels inside
the window: no window leaves the target. The image window (trilinear, ``order=1``) and the label window
(nearest, ``order=0``) are resampled with :func:`volsam.transforms.extract_window` straight from the
file grid, the single interpolation :class:`volsam.session.Session` uses at inference (resampling the
volume to 1.5 mm first and cropping later would interpolate twice). Then:

1. spatial augmentation of image and label together: flips and affine (rotation, scaling) from MONAI,
   optional elastic deformation (:class:`AugmentConfig`); padding is zero, like the out-of-volume padding
   of real windows;
2. :func:`volsam.transforms.normalize_window` (optionally clipping CT first);
3. intensity augmentation (MONAI, image only): scale, shift, gamma, Gaussian noise.

If a spatial augmentation leaves the target empty the un-augmented window is kept.

Multi-scale windows (``spacings``, the multi-scale Session's 1.5 / 3 / 6 mm: 96 / 192 / 384 mm of field at
64^3). Each sample draws its window spacing uniformly from the spacings at which its target covers at least
:data:`MIN_TARGET_WINDOW_VOXELS` window voxels (the finest always qualifies): a whole brain is seen whole at
6 mm and in part at 1.5 mm (as the Session's border-refining windows see it), a 1 cm^3 nucleus only at
1.5 mm, where it is more than a few voxels. The draw uses its own generator, so the other draws do not move.

Caching (:class:`~volsam.train.cache.ArrayCache`). Decoded volumes are kept in memory (LRU, bounded in
bytes; DataLoader workers started with ``fork`` share them copy-on-write) and, with ``cache_dir``, as ``.npy``
files that are memory-mapped, so repeated epochs and every worker read only the window they need and never
decompress a file twice.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from volsam.eval.datasets import Case, Target, load_dataset, load_target_mask, resolve_targets, validate_case
from volsam.io import read_image
from volsam.train.cache import ArrayCache, _file_key
from volsam.train.sample_augment import AugmentConfig, _elastic, _intensity_transforms, _plain, _spatial_transforms
from volsam.train.sampler import StepSampler, make_loader
from volsam.transforms import Window, extract_window, normalize_window, voxel_to_world

if TYPE_CHECKING:
    from volsam.train.synth import SynthGenerator

__all__ = [
    "ArrayCache",
    "AugmentConfig",
    "StepSampler",
    "SynthDataset",
    "TargetEntry",
    "TrainDataset",
    "TrainingDataError",
    "make_loader",
]

# Sub-streams of the per-index random generators (the second seed word).
_STREAM_PERM = 0
_STREAM_SAMPLE = 1

MIN_TARGET_WINDOW_VOXELS = 64
"""A window spacing is drawn for a target only if the target covers at least this many of its voxels."""


class TrainingDataError(ValueError):
    """Training data that cannot be used (no usable case, image/label mismatch); one-line message."""


@dataclass(frozen=True)
class TargetEntry:
    """One (case, target) pair with foreground.

    Attributes:
        case_index: index into the dataset's cases.
        target: the target.
        derived: the mask comes from its own cached array (own label file, threshold or largest
            component) instead of ``label == value``.
        voxels: foreground voxel count on the file grid.
        fg: (K, 3) int32 foreground voxel indices (all, or a random subset of ``max_fg_samples``).
        anchor: (3,) int32 foreground voxel nearest the centroid of ``fg`` (deterministic windows).
    """

    case_index: int
    target: Target
    derived: bool
    voxels: int
    fg: np.ndarray
    anchor: np.ndarray


@dataclass(frozen=True)
class _CaseInfo:
    case: Case
    shape: tuple[int, int, int]
    affine: np.ndarray
    key: str


def _compact_image(arr: np.ndarray) -> np.ndarray:
    """Image voxels as stored when they are small integers, else float32 (window extraction casts anyway)."""
    if arr.dtype in (np.uint8, np.int8, np.int16, np.uint16):
        return arr
    return arr.astype(np.float32, copy=False)


def _compact_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map in the smallest fitting dtype."""
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.array_equal(a, np.rint(a)):
            raise TrainingDataError(f"{path}: label map has non-integer values")
        a = np.rint(a)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    for dt in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return a.astype(dt, copy=False)
    raise TrainingDataError(f"{path}: label values {lo}..{hi} do not fit int32")


def _present_values(label: np.ndarray) -> set[int]:
    """The label values present in an integer label map."""
    a = np.asarray(label)
    if a.dtype in (np.uint8, np.uint16):
        return {int(v) for v in np.flatnonzero(np.bincount(a.ravel()))}
    return {int(v) for v in np.unique(a)}


def _is_derived(t: Target) -> bool:
    return t.label_path is not None or t.threshold is not None or t.largest_component or t.values is not None


class TrainDataset(Dataset):
    """Windows around the targets of a list of cases; ``dataset[index]`` is a dict:

    - ``image``: float32 [1, S, S, S], normalised (S = ``size``, 128);
    - ``target``: float32 [T, S, S, S], 1 inside the target (T = 1 + ``extra_targets``: the sampled
      target first, then other labelled structures of the same window, see ``extra_targets``);
    - ``index``: the sample index (int), which seeds the clicks of the training loop;
    - ``pair``: index into :attr:`entries`;
    - ``spacing``: the window's spacing, mm (float; one of ``spacings``, else ``spacing``).

    Any non-negative ``index`` is valid (the data repeat in epochs of ``len(self)`` = number of pairs).

    Args:
        cases: cases from :func:`volsam.eval.datasets.load_dataset`.
        size: window side, voxels.
        spacing: window spacing, mm.
        spacings: window spacings drawn per sample (multi-scale training, see the module docstring); None:
            always ``spacing``.
        seed: seed of every random draw.
        jitter_mm: maximum per-axis offset of the window centre from the chosen foreground voxel.
        margin: the chosen voxel stays at least this many voxels inside the window.
        augment: augmentation settings; None disables augmentation.
        p_synth: probability that a sample's image is synthesised from its label window
            (:class:`~volsam.train.synth.SynthGenerator`); 1 never reads images.
        synth: the generator (default settings when None).
        clip: intensity clip applied before normalisation (CT: (-1000, 1000)).
        cache_dir: folder for ``.npy`` copies of decoded volumes (None: memory only).
        cache_bytes: memory cache bound, bytes.
        skip_bad_cases: drop cases :func:`~volsam.eval.datasets.validate_case` rejects instead of raising.
        preload: decode every volume once now (fills ``cache_dir``; workers forked later share memory).
        max_fg_samples: foreground voxels remembered per target for centre sampling.
        extra_targets: also return this many other structures of the sample's label window (label
            values with at least ``min_extra_voxels`` voxels there, drawn at random; the sampled target
            repeats when fewer exist), so one encoder pass trains on several targets. Training windows
            are centred near the first target only; the others lie anywhere in the window.
        min_extra_voxels: smallest extra target, window voxels.

    Raises:
        TrainingDataError: a case is unusable (unless ``skip_bad_cases``) or no target has foreground.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        size: int = 128,
        spacing: float = 1.5,
        seed: int = 0,
        jitter_mm: float = 24.0,
        margin: int = 8,
        augment: AugmentConfig | None = None,
        p_synth: float = 0.0,
        synth: SynthGenerator | None = None,
        clip: tuple[float, float] | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = 4 << 30,
        skip_bad_cases: bool = False,
        preload: bool = False,
        max_fg_samples: int = 20000,
        extra_targets: int = 0,
        min_extra_voxels: int = 64,
        spacings: Sequence[float] | None = None,
    ) -> None:
        if not 0.0 <= p_synth <= 1.0:
            raise ValueError(f"p_synth must be in [0, 1], got {p_synth}")
        if size // 2 <= margin:
            raise ValueError(f"window size {size} too small for margin {margin}")
        self.size = int(size)
        self.spacing = float(spacing)
        if spacings is not None and (not spacings or min(spacings) <= 0):
            raise ValueError(f"spacings must be positive, got {spacings}")
        self.spacings = tuple(sorted(float(x) for x in spacings)) if spacings else None
        self.seed = int(seed)
        self.jitter_mm = float(jitter_mm)
        self.margin = int(margin)
        self.augment = augment
        self.p_synth = float(p_synth)
        if synth is None and self.p_synth > 0:
            from volsam.train.synth import SynthGenerator

            synth = SynthGenerator()
        self.synth = synth
        self.clip = clip
        self.cache = ArrayCache(cache_dir, cache_bytes)
        self.max_fg_samples = int(max_fg_samples)
        if extra_targets < 0:
            raise ValueError(f"extra_targets must be >= 0, got {extra_targets}")
        self.extra_targets = int(extra_targets)
        self.min_extra_voxels = int(min_extra_voxels)
        self.cases: list[_CaseInfo] = []
        self.entries: list[TargetEntry] = []
        self.skipped: list[tuple[str, str]] = []
        self._spatial: Any = None
        self._intensity: Any = None
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._prepare(list(cases), skip_bad_cases, preload)

    @classmethod
    def from_dataset(cls, spec: str | Path, labels: Sequence[str | int] | None = None, **kwargs: Any) -> TrainDataset:
        """Build from a :func:`~volsam.eval.datasets.load_dataset` spec (folder, CSV or built-in name)."""
        return cls(load_dataset(spec, labels), **kwargs)

    # ------------------------------------------------------------------ preparation
    def _prepare(self, cases: list[Case], skip_bad: bool, preload: bool) -> None:
        if not cases:
            raise TrainingDataError("no cases given")
        bad = []
        for case in cases:
            reason = validate_case(case)
            if reason is not None:
                bad.append((case.name, reason))
        if bad and not skip_bad and len(bad) < len(cases):
            name, reason = bad[0]
            raise TrainingDataError(
                f"{len(bad)} of {len(cases)} cases cannot be used (first: {name}: {reason}); "
                "fix or remove them, or skip them (--skip-bad-cases)"
            )
        if len(bad) == len(cases):
            name, reason = bad[0]
            raise TrainingDataError(f"no usable case among {len(cases)} (first: {name}: {reason})")
        self.skipped = bad
        bad_names = {n for n, _ in bad}
        for case in cases:
            if case.name in bad_names:
                continue
            info = self._case_info(case)
            ci = len(self.cases)
            self.cases.append(info)
            label = self._label(ci)
            found = self._targets(ci, label)
            if not found:
                self.skipped.append((case.name, "no target has foreground"))
            self.entries.extend(found)
            if preload and self.p_synth < 1.0:
                self._image(ci)
        if not self.entries:
            raise TrainingDataError(f"no usable target: none of the {len(cases)} cases has a target with foreground")

    def _case_info(self, case: Case) -> _CaseInfo:
        vol = read_image(case.label, dtype=None)  # header + data; the label is needed right away anyway
        key = _file_key(case.image, case.label)
        info = _CaseInfo(case, vol.shape, vol.affine, key)
        self.cache.get(f"{key}_label", lambda: _compact_labels(vol.array, case.label))
        return info

    def _label(self, ci: int) -> np.ndarray:
        info = self.cases[ci]
        return self.cache.get(
            f"{info.key}_label", lambda: _compact_labels(read_image(info.case.label, dtype=None).array, info.case.label)
        )

    def _image(self, ci: int) -> np.ndarray:
        info = self.cases[ci]
        return self.cache.get(
            f"{info.key}_image", lambda: _compact_image(read_image(info.case.image, dtype=None).array)
        )

    def _mask_key(self, entry: TargetEntry) -> str:
        t = entry.target
        info = self.cases[entry.case_index]
        src = _file_key(t.label_path) if t.label_path is not None else info.key
        union = "" if t.values is None else f"_u{zlib.crc32(str(t.values).encode()):08x}"
        return f"{src}_mask_{t.value}_{t.threshold}_{int(t.largest_component)}{union}"

    def _targets(self, ci: int, label: np.ndarray) -> list[TargetEntry]:
        info = self.cases[ci]
        out = []
        # A dataset.json names every structure of every case: skip the values this label map lacks without
        # scanning the volume once per name (1300 names x 100 cases otherwise dominate start-up).
        present = _present_values(label)
        for t in resolve_targets(info.case, label):
            if not _is_derived(t) and t.value not in present:
                continue
            mask = load_target_mask(info.case, t, label)
            flat = np.flatnonzero(mask)
            if flat.size == 0:
                continue
            if flat.size > self.max_fg_samples:
                pick = np.random.default_rng([self.seed, ci, t.value]).choice(flat.size, self.max_fg_samples, False)
                flat = flat[np.sort(pick)]
            fg = np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)
            anchor = fg[int(np.argmin(((fg - fg.mean(axis=0)) ** 2).sum(axis=1)))]
            entry = TargetEntry(ci, t, _is_derived(t), int(np.count_nonzero(mask)), fg, anchor)
            if entry.derived:
                self.cache.get(self._mask_key(entry), lambda m=mask: m.astype(np.uint8))
            out.append(entry)
        return out

    # ------------------------------------------------------------------ sampling
    def __len__(self) -> int:
        return len(self.entries)

    def pair_of(self, index: int) -> int:
        """The entry sample ``index`` draws from (epoch-wise random permutations of all pairs)."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        epoch, pos = divmod(int(index), len(self.entries))
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, _STREAM_PERM, epoch]).permutation(len(self.entries))
            self._perm_cache = (epoch, perm)
        return int(self._perm_cache[1][pos])

    def _window(
        self, entry: TargetEntry, voxel: np.ndarray, offset_mm: np.ndarray, spacing: float | None = None
    ) -> Window:
        info = self.cases[entry.case_index]
        sp = self.spacing if spacing is None else spacing
        return Window(voxel_to_world(voxel, info.affine) + offset_mm, size=self.size, spacing=sp)

    def spacing_choices(self, entry: TargetEntry) -> tuple[float, ...]:
        """The window spacings a sample of ``entry`` draws from: those of ``spacings`` at which the target
        covers at least MIN_TARGET_WINDOW_VOXELS window voxels, the finest always; (spacing,) without
        ``spacings``."""
        if self.spacings is None:
            return (self.spacing,)
        voxel_mm3 = abs(float(np.linalg.det(self.cases[entry.case_index].affine[:3, :3])))
        volume = entry.voxels * voxel_mm3
        fit = tuple(s for s in self.spacings if volume / s**3 >= MIN_TARGET_WINDOW_VOXELS)
        return fit or self.spacings[:1]

    def _random_window(
        self, entry: TargetEntry, rng: np.random.Generator, jitter: bool, spacing: float | None = None
    ) -> Window:
        sp = self.spacing if spacing is None else spacing
        voxel = entry.fg[int(rng.integers(len(entry.fg)))].astype(np.float64)
        limit = min(self.jitter_mm, (self.size // 2 - self.margin) * sp) if jitter else 0.0
        return self._window(entry, voxel, rng.uniform(-limit, limit, 3) if limit > 0 else np.zeros(3), sp)

    def _label_windows(
        self, entry: TargetEntry, window: Window, want_map: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Target mask (S, S, S) bool and, if ``want_map``, the case's label map window (float32)."""
        info = self.cases[entry.case_index]
        lab = None
        if want_map or not entry.derived:
            lab = extract_window(self._label(entry.case_index), info.affine, window, order=0)
        if entry.derived:
            m = self.cache.get(
                self._mask_key(entry), lambda: load_target_mask(info.case, entry.target).astype(np.uint8)
            )
            target = extract_window(m, info.affine, window, order=0) > 0.5
        else:
            assert lab is not None
            target = lab == entry.target.value
        return target, lab

    def _synth_image(
        self, entry: TargetEntry, window: Window, target: np.ndarray, lab: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        info = self.cases[entry.case_index]
        if entry.derived:  # make sure the target's own extent shows up as a region
            lab = lab.copy()
            lab[target & (lab == 0)] = float(lab.max()) + 1.0
        valid = extract_window(np.broadcast_to(np.uint8(1), info.shape), info.affine, window, order=0) > 0.5
        assert self.synth is not None
        return self.synth(lab, rng, valid)

    def _transforms(self) -> tuple[Any, Any]:
        if self._spatial is None and self.augment is not None:
            self._spatial = _spatial_transforms(self.augment)
            self._intensity = _intensity_transforms(self.augment)
        return self._spatial, self._intensity

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        pair = self.pair_of(index)
        entry = self.entries[pair]
        # One generator per purpose, so switching augmentation or synthesis on does not move the windows.
        rng, rng_synth, rng_spatial, rng_intensity = (
            np.random.default_rng([self.seed, _STREAM_SAMPLE, index, k]) for k in range(4)
        )
        use_synth = self.p_synth >= 1.0 or (self.p_synth > 0.0 and rng_synth.random() < self.p_synth)
        choices = self.spacing_choices(entry)
        spacing = choices[int(np.random.default_rng([self.seed, _STREAM_SAMPLE, index, 5]).integers(len(choices)))]
        tries = 8
        for attempt in range(tries):
            window = self._random_window(entry, rng, jitter=attempt < tries - 1, spacing=spacing)
            target, lab = self._label_windows(entry, window, want_map=use_synth or self.extra_targets > 0)
            if target.any():
                break
        targets = [target]
        if self.extra_targets:
            assert lab is not None
            rng_extra = np.random.default_rng([self.seed, _STREAM_SAMPLE, index, 4])
            targets += self._extra_targets(entry, target, lab, rng_extra)
        if use_synth:
            assert lab is not None
            image = self._synth_image(entry, window, target, lab, rng_synth)
        else:
            info = self.cases[entry.case_index]
            image = extract_window(self._image(entry.case_index), info.affine, window, order=1)
        img_t = torch.from_numpy(image)[None]
        tgt_t = torch.from_numpy(np.stack(targets).astype(np.float32))
        spatial, intensity = self._transforms()
        if spatial is not None:
            assert self.augment is not None
            spatial.set_random_state(seed=int(rng_spatial.integers(2**31 - 1)))
            out = spatial({"image": img_t, "label": tgt_t})
            aug_img, aug_lab = _plain(out["image"]), _plain(out["label"])
            if self.augment.elastic_prob > 0 and rng_spatial.random() < self.augment.elastic_prob:
                aug_img, aug_lab = _elastic(aug_img, aug_lab, rng_spatial, self.augment)
            if bool((aug_lab > 0.5).flatten(1).any(1).all()):
                img_t, tgt_t = aug_img, (aug_lab > 0.5).float()
        img_t = torch.from_numpy(normalize_window(img_t.numpy(), self.clip))
        if intensity is not None:
            intensity.set_random_state(seed=int(rng_intensity.integers(2**31 - 1)))
            img_t = _plain(intensity({"image": img_t})["image"])
        return {
            "image": img_t.contiguous(),
            "target": tgt_t.contiguous(),
            "index": index,
            "pair": pair,
            "spacing": float(spacing),
        }

    def _extra_targets(
        self, entry: TargetEntry, target: np.ndarray, lab: np.ndarray, rng: np.random.Generator
    ) -> list[np.ndarray]:
        values, counts = np.unique(lab[lab > 0], return_counts=True)
        own = None if entry.derived else float(entry.target.value)
        # Only the case's own targets: a label map may hold values that are no target (tissue filler).
        allowed = {float(e.target.value) for e in self.entries if e.case_index == entry.case_index and not e.derived}
        pool = [
            v for v, c in zip(values, counts, strict=True) if c >= self.min_extra_voxels and v != own and v in allowed
        ]
        chosen = rng.choice(len(pool), min(len(pool), self.extra_targets), replace=False) if pool else []
        extra = [lab == pool[int(i)] for i in chosen]
        return extra + [target] * (self.extra_targets - len(extra))

    def eval_item(self, pair: int) -> dict[str, Any]:
        """Deterministic sample of entry ``pair``: window centred on its anchor voxel, no augmentation."""
        entry = self.entries[pair]
        info = self.cases[entry.case_index]
        window = self._window(entry, entry.anchor.astype(np.float64), np.zeros(3))
        target, _ = self._label_windows(entry, window, want_map=False)
        if self.p_synth >= 1.0:
            _, lab = self._label_windows(entry, window, want_map=True)
            assert lab is not None
            image = self._synth_image(entry, window, target, lab, np.random.default_rng([self.seed, 2, pair]))
        else:
            image = extract_window(self._image(entry.case_index), info.affine, window, order=1)
        image = normalize_window(image, self.clip)
        return {
            "image": torch.from_numpy(image)[None],
            "target": torch.from_numpy(target.astype(np.float32))[None],
            "index": pair,
            "pair": pair,
            "spacing": self.spacing,
        }

    def describe(self) -> str:
        """One line: cases, targets, skipped cases."""
        text = f"{len(self.cases)} case(s), {len(self.entries)} (case, target) pair(s)"
        if self.skipped:
            name, why = self.skipped[0]
            more = ", ..." if len(self.skipped) > 1 else ""
            text += f"; skipped {len(self.skipped)} ({name}: {why}{more})"
        return text


class SynthDataset(TrainDataset):
    """A :class:`TrainDataset` over label files only: every image is synthetic
    (:class:`~volsam.train.synth.SynthGenerator`).

    Args:
        labels: label map files (NIfTI and the formats :mod:`volsam.io` reads); every non-zero value is a
            target.
        **kwargs: forwarded to :class:`TrainDataset` (``p_synth`` is forced to 1).
    """

    def __init__(self, labels: Sequence[str | Path], **kwargs: Any) -> None:
        cases = [Case(Path(p).name.split(".")[0], Path(p), Path(p)) for p in labels]  # images are never read
        kwargs["p_synth"] = 1.0
        super().__init__(cases, **kwargs)
