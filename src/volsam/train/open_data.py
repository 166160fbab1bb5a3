"""The default model's training set, from open data that installs offline.

Four sources, each a function returning one labelled case ``(image, label map, {name: value})`` on the
image's own grid; :func:`build_training_set` writes them as an nnU-Net raw folder (``imagesTr/``,
``labelsTr/``, ``dataset.json``) that ``volsam train --data`` reads. Label values are offset per source
(AAL as is, NeuroMaps + 10000, CT + 20000, MNI152 + 30000) so every structure has its own value.

- :func:`colin27_case`: Colin27 T1 with the AAL atlas (Debian ``mricron-data``) **minus the held-out
  evaluation structures** (:data:`HELD_OUT_AAL`), set to background so none of their voxels is a target;
- :func:`inia19_case`: the macaque inia19 T1 with its NeuroMaps labels (``mricron-data``), labels under
  :data:`MIN_NEUROMAPS_VOXELS` dropped;
- :func:`invesalius_case`: the head CT of Debian ``invesalius-examples`` (``Cranium.inv3``), with skull and
  head labelled by threshold (:func:`read_inv3`, :func:`ct_head_labels`);
- :func:`mni152_case`: the MNI152 2009a symmetric T1 template shipped inside nilearn, with grey and white
  matter from its probability maps;
- :func:`atlas_cases`: the other MNI-space atlases of ``mricron-data`` (Brodmann, Harvard-Oxford cortical,
  JHU white matter, AICHA, JHU-189, NatBrainLab) on the Colin27 T1, resampled to its grid;
- :func:`tissue_case`: connected components of Colin27's k-means tissue classes (structures with visible
  boundaries: ventricles, white matter, cerebellar and cortical grey matter pieces);
- :func:`shapes_cases`: procedural volumes (:mod:`volsam.train.shapes`) of deformed ellipsoids on a
  textured background, every shape a target whose border *is* an image edge;
- :func:`large_cases` (source ``large``): large targets for multi-scale training, 0.1-2 L: the MNI152 brain
  and its left/right halves, the whole head of the CT (skull included), and procedural volumes of large
  shapes at 2.5 mm (:data:`LARGE_BASE` values; one case per label map, since these targets overlap).

:func:`large_validation_cases` (the inia19 brain and hemispheres, one large-shapes volume of its own seed)
are never trained on: ``scripts/build_default_data.py --large-val`` writes them to ``OUT/validation_large``
for the ship rule's large-target validation. Colin27's large structures (``volsam evaluate --data
large-targets``) are a target of no source: the held-out large-target evaluation.

**Held out everywhere**: the voxels of the held-out AAL structures (:data:`HELD_OUT_AAL`, resampled by world
coordinates onto grids in MNI space) are removed from every target of every MNI-space source, and a label
that lies mostly inside them (:data:`MAX_HELD_OUT_OVERLAP`) is dropped whole. Voxels outside every target
are filled with k-means tissue classes (:func:`tissue_classes`; values from :data:`TISSUE_BASE`, listed in
no ``dataset.json``, so never a target): SynthSeg-style synthesis then draws a contrast per tissue instead
of one uniform background.

Synthetic images from these label maps (random contrast per label) are drawn on the fly by ``volsam train
--p-synth``, so the model is not tied to one modality.
"""

from __future__ import annotations

import importlib.util
import json
import plistlib
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from volsam.atomic import atomic_path
from volsam.eval.datasets import MRICRON_TEMPLATES
from volsam.io import Volume, read_image, write_image, write_mask
from volsam.train.shapes import SHAPES_PER_VOLUME, SHAPES_SIZE, shapes_volume

HELD_OUT_AAL = frozenset({37, 38, 41, 42, 71, 72, 73, 74, 77, 78})
"""AAL values never used for training: left/right hippocampus, amygdala, caudate, putamen, thalamus."""

MAX_HELD_OUT_OVERLAP = 0.25
"""A label of an MNI-space source with more than this fraction of its voxels inside held-out structures is
dropped (what remains of it would trace a held-out structure's outline)."""

TISSUE_BASE = 60000
"""Label values TISSUE_BASE + 1 .. + k: k-means tissue classes filling the voxels outside every target."""

TISSUE_CLASSES = 5

MIN_COMPONENT_VOXELS = 300
"""Smallest connected component of a tissue class kept as a target (1 mm voxels)."""

MNI_ATLASES = (
    ("brodmann.nii.gz", "Brodmann"),
    ("HarvardOxford-cort-maxprob-thr0-1mm.nii.gz", "HarvardOxford"),
    ("JHU-WhiteMatter-labels-1mm.nii.gz", "JHU_WM"),
    ("AICHAmc.nii.gz", "AICHA"),
    ("jhu189.nii.gz", "JHU189"),
    ("natbrainlab.nii.gz", "NatBrainLab"),
)
"""The MNI-space atlases of ``mricron-data`` used as extra label maps of the Colin27 T1 (file, name)."""

MIN_NEUROMAPS_VOXELS = 4000
"""NeuroMaps labels smaller than this many 0.5 mm voxels (500 mm^3, ~150 voxels at the model's 1.5 mm) are
dropped."""

INVESALIUS_EXAMPLE = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
"""Where Debian's ``invesalius-examples`` installs its head CT project."""

SKULL_HU = 226
"""Bone threshold (HU) of the InVesalius example's own bone mask."""

HEAD_HU = -300
"""Soft-tissue threshold (HU) separating the head from the air around it."""


class LabelledCase(NamedTuple):
    """One training case: ``image`` and ``label`` share a grid; ``labels`` maps names to label values."""

    name: str
    image: Volume
    label: np.ndarray
    labels: dict[str, int]


def _aal_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _require(path: Path, install: str) -> None:
    """``install``: the command that provides ``path``."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {install}")


def colin27_case(templates: Path = MRICRON_TEMPLATES) -> LabelledCase:
    """Colin27 T1 (1 mm) with AAL labels, the held-out structures removed."""
    _require(templates / "ch2.nii.gz", "apt-get install mricron-data")
    aal = read_image(templates / "aal.nii.gz", dtype=None)
    names = _aal_names(templates / "aal.nii.txt")
    lab = np.asarray(aal.array).astype(np.uint16)
    lab[np.isin(lab, list(HELD_OUT_AAL))] = 0
    labels = {f"AAL_{names.get(int(v), v)}": int(v) for v in np.unique(lab) if v}
    return LabelledCase("colin27", read_image(templates / "ch2.nii.gz"), lab, labels)


def inia19_case(templates: Path = MRICRON_TEMPLATES) -> LabelledCase:
    """The macaque inia19 T1 (0.5 mm) with its NeuroMaps labels of at least MIN_NEUROMAPS_VOXELS voxels."""
    _require(templates / "inia19-t1-brain.nii.gz", "apt-get install mricron-data")
    nm = read_image(templates / "inia19-NeuroMaps.nii.gz", dtype=None)
    lab = np.asarray(nm.array).astype(np.int64)
    counts = np.bincount(lab.ravel().clip(min=0))
    lab[np.isin(lab, np.flatnonzero(counts < MIN_NEUROMAPS_VOXELS))] = 0
    lab = np.where(lab > 0, lab + 10000, 0).astype(np.uint16)
    labels = {f"NeuroMaps_{int(v) - 10000}": int(v) for v in np.unique(lab) if v}
    return LabelledCase("inia19", read_image(templates / "inia19-t1-brain.nii.gz"), lab, labels)


def read_inv3(path: Path) -> Volume:
    """The CT of an InVesalius project (``.inv3``: a gzipped tar of ``main.plist`` + a raw ``matrix.dat``).

    ``main.plist`` gives the matrix's dtype and shape (slices, rows, columns) and the spacing (x, y, z) in mm.
    Returns a :class:`Volume` whose array is (x, y, z) = (columns, rows, slices), HU, with a diagonal affine
    (the project stores no orientation beyond "axial", so the origin is 0 and axes are taken as RAS+).
    """
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{path}: not an InVesalius project (no main.plist)")
        main = plistlib.load(tar.extractfile(members["main.plist"]))
        info = main["matrix"]
        raw = tar.extractfile(members[info["filename"]]).read()
    shape = tuple(int(s) for s in info["shape"])
    arr = np.frombuffer(raw, dtype=np.dtype(info["dtype"]))
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: matrix has {arr.size} values, expected {shape}")
    vol = arr.reshape(shape).transpose(2, 1, 0).astype(np.float32)
    affine = np.diag([*(float(s) for s in main["spacing"]), 1.0])
    return Volume(vol, affine)


def ct_head_labels(hu: np.ndarray, skull_hu: float = SKULL_HU, head_hu: float = HEAD_HU) -> np.ndarray:
    """Skull (1) and the rest of the head (2) of a head CT by threshold: hu (X, Y, Z) -> uint8 label map.

    Skull: the largest connected component above ``skull_hu``. Head: the largest component above
    ``head_hu``, holes filled slice by slice (air in sinuses and ear canals), minus the skull.
    """
    def largest(mask: np.ndarray) -> np.ndarray:
        lab, n = ndimage.label(mask)
        if n == 0:
            return mask
        sizes = np.bincount(lab.ravel())[1:]
        return lab == (1 + int(np.argmax(sizes)))

    skull = largest(hu >= skull_hu)
    head = largest(hu >= head_hu)
    for k in range(head.shape[2]):
        head[..., k] = ndimage.binary_fill_holes(head[..., k])
    out = np.zeros(hu.shape, dtype=np.uint8)
    out[head] = 2
    out[skull] = 1
    return out


def invesalius_case(path: Path = INVESALIUS_EXAMPLE) -> LabelledCase:
    """The head CT of ``invesalius-examples`` with skull and head by threshold."""
    _require(path, "apt-get install invesalius-examples")
    ct = read_inv3(path)
    lab = ct_head_labels(np.asarray(ct.array)).astype(np.uint16)
    lab = np.where(lab > 0, lab + 20000, 0).astype(np.uint16)
    return LabelledCase("invesalius_head_ct", ct, lab, {"CT_skull": 20001, "CT_head": 20002})


def nilearn_data_dir() -> Path:
    """nilearn's packaged data folder (``nilearn/datasets/data``), found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn not installed: pip install 'volsam[data]' (its package holds MNI152 2009a)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def mni152_case(data_dir: Path | None = None) -> LabelledCase:
    """MNI152 2009a symmetric T1 (1 mm) with grey (30001) and white matter (30002): the larger of the two
    probability maps where it is at least 0.5."""
    d = nilearn_data_dir() if data_dir is None else Path(data_dir)
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    _require(d / stem.format("t1"), "pip install 'volsam[data]' (nilearn)")
    t1 = read_image(d / stem.format("t1"))
    gm = np.asarray(read_image(d / stem.format("gm")).array)
    wm = np.asarray(read_image(d / stem.format("wm")).array)
    lab = np.zeros(gm.shape, dtype=np.uint16)
    lab[(gm >= 0.5) & (gm >= wm)] = 30001
    lab[(wm >= 0.5) & (wm > gm)] = 30002
    lab = remove_held_out(lab, held_out_mask(t1))
    return LabelledCase("mni152_2009a", t1, lab, {"MNI152_grey_matter": 30001, "MNI152_white_matter": 30002})


def on_grid(src: Volume, ref: Volume) -> np.ndarray:
    """``src``'s array resampled (nearest neighbour, by world coordinates) onto ``ref``'s voxel grid; 0 outside."""
    m = np.linalg.inv(src.affine) @ ref.affine
    return ndimage.affine_transform(
        np.asarray(src.array), m[:3, :3], offset=m[:3, 3], output_shape=ref.shape, order=0, mode="constant", cval=0
    )


def held_out_mask(ref: Volume, templates: Path = MRICRON_TEMPLATES) -> np.ndarray:
    """Voxels of ``ref`` (a grid in MNI space) inside the held-out AAL structures, bool (X, Y, Z)."""
    aal = read_image(templates / "aal.nii.gz", dtype=None)
    held = Volume(np.isin(np.asarray(aal.array), list(HELD_OUT_AAL)).astype(np.uint8), aal.affine)
    return on_grid(held, ref) > 0


def remove_held_out(lab: np.ndarray, held: np.ndarray) -> np.ndarray:
    """``lab`` with held-out voxels set to 0 and labels mostly inside them (> MAX_HELD_OUT_OVERLAP) dropped."""
    lab = lab.copy()
    values, counts = np.unique(lab[lab > 0], return_counts=True)
    inside = dict(zip(*np.unique(lab[held & (lab > 0)], return_counts=True), strict=True))
    for v, c in zip(values, counts, strict=True):
        if inside.get(v, 0) > MAX_HELD_OUT_OVERLAP * c:
            lab[lab == v] = 0
    lab[held] = 0
    return lab


def tissue_classes(image: np.ndarray, k: int = TISSUE_CLASSES, seed: int = 0) -> np.ndarray:
    """k-means (1D, on intensity) classes 1..k of the voxels brighter than 5 % of the 99th percentile, ordered
    by intensity; 0 elsewhere (air). uint8 (X, Y, Z)."""
    from scipy.cluster.vq import kmeans2

    x = np.asarray(image, dtype=np.float32)
    fg = x > 0.05 * np.percentile(x, 99)
    vals = x[fg]
    rng = np.random.default_rng(seed)
    sample = vals[rng.choice(vals.size, min(vals.size, 200_000), replace=False)].astype(np.float64)
    centres, _ = kmeans2(sample[:, None], k, seed=seed, minit="++")
    centres = np.sort(centres[:, 0])
    out = np.zeros(x.shape, dtype=np.uint8)
    out[fg] = 1 + np.digitize(vals, (centres[1:] + centres[:-1]) / 2)
    return out


def fill_tissue(lab: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``lab`` (uint16) with its 0 voxels set to TISSUE_BASE + tissue class (air stays 0)."""
    t = tissue_classes(image)
    out = lab.astype(np.uint16)
    fill = (out == 0) & (t > 0)
    out[fill] = TISSUE_BASE + t[fill].astype(np.uint16)
    return out


def atlas_cases(templates: Path = MRICRON_TEMPLATES) -> list[LabelledCase]:
    """The MNI-space atlases (:data:`MNI_ATLASES`) on the Colin27 T1, held-out voxels removed; label values
    offset by 40000 + 1000 x atlas index."""
    _require(templates / "ch2.nii.gz", "apt-get install mricron-data")
    ch2 = read_image(templates / "ch2.nii.gz")
    held = held_out_mask(ch2, templates)
    out = []
    for i, (fname, name) in enumerate(MNI_ATLASES):
        lab = on_grid(read_image(templates / fname, dtype=None), ch2).astype(np.int64)
        lab = remove_held_out(lab, held)
        lab = np.where(lab > 0, lab + 40000 + 1000 * i, 0).astype(np.uint16)
        labels = {f"{name}_{int(v) - 40000 - 1000 * i}": int(v) for v in np.unique(lab) if v}
        out.append(LabelledCase(f"colin27_{name.lower()}", ch2, lab, labels))
    return out


def tissue_case(templates: Path = MRICRON_TEMPLATES) -> LabelledCase:
    """Connected components (26-connected, >= MIN_COMPONENT_VOXELS) of Colin27's tissue classes, held-out
    voxels removed first; values 50001, 50002, ..."""
    _require(templates / "ch2.nii.gz", "apt-get install mricron-data")
    ch2 = read_image(templates / "ch2.nii.gz")
    held = held_out_mask(ch2, templates)
    t = tissue_classes(np.asarray(ch2.array))
    t[held] = 0
    lab = np.zeros(t.shape, dtype=np.uint16)
    n = 0
    for c in range(1, int(t.max()) + 1):
        comp, _ = ndimage.label(t == c, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(comp.ravel())
        for j in np.flatnonzero(sizes[1:] >= MIN_COMPONENT_VOXELS) + 1:
            n += 1
            lab[comp == j] = 50000 + n
    labels = {f"tissue_component_{v - 50000}": int(v) for v in np.unique(lab) if v}
    return LabelledCase("colin27_tissue", ch2, lab, labels)


SHAPES_BASE = 61000
"""Label values of :func:`shapes_cases`: SHAPES_BASE + 64 x volume + shape (1..63); below TISSUE_BASE's
filler only in name: they lie above 60000 so :func:`split_validation` never draws them (validation stays on
real anatomy)."""

SHAPES_VOLUMES = 16
"""Procedural volumes written by :func:`shapes_cases`."""


def shapes_cases(
    count: int = SHAPES_VOLUMES, seed: int = 0, size: int = SHAPES_SIZE, shapes: int = SHAPES_PER_VOLUME
) -> list[LabelledCase]:
    """``count`` procedural volumes (:func:`shapes_volume`), shapes valued SHAPES_BASE + 64 x i + j,
    background tissue as TISSUE_BASE + class (never a target); identity affine (1 mm, RAS+)."""
    out = []
    for i in range(count):
        image, lab = shapes_volume(np.random.default_rng([seed, 7, i]), size, shapes)
        vals = np.where(lab > 0, SHAPES_BASE + 64 * i + np.clip(lab, 0, 63), TISSUE_BASE - lab).astype(np.uint16)
        vals[lab > 63] = TISSUE_BASE + 1  # more than 63 kept shapes: the rest become filler
        labels = {f"shape_{i}_{int(v) - SHAPES_BASE - 64 * i}": int(v)
                  for v in np.unique(vals) if SHAPES_BASE < v < SHAPES_BASE + 64 * (i + 1)}
        out.append(LabelledCase(f"shapes_{i:02d}", Volume(image, np.eye(4)), vals, labels))
    return out


LARGE_BASE = 63000
"""Label values of :func:`large_cases` (63001 ...; large shapes from 63100) and of
:func:`large_validation_cases` (64001 ...): above 60000, so :func:`split_validation` never draws them."""

LARGE_SHAPES_VOLUMES = 4
LARGE_SHAPES_SPACING_MM = 2.5
"""Large-shape volumes: 128^3 voxels of 2.5 mm (320 mm), 6 shapes of 25-75 mm semi-axes each."""


def _brain_mask(prob: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of ``prob``, holes filled (ventricles, deep nuclei stay inside)."""
    lab, n = ndimage.label(prob, structure=np.ones((3, 3, 3)))
    if n == 0:
        return prob.astype(bool)
    sizes = np.bincount(lab.ravel())[1:]
    return ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))


def _halves(brain: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parts of ``brain`` left (world x < 0, RAS) and right of the mid-sagittal plane x = 0."""
    i = np.arange(brain.shape[0], dtype=np.float64)
    x = affine[0, 0] * i + affine[0, 3]  # axis-aligned MNI-space grids: x depends on the first index only
    left = (x < 0)[:, None, None]
    return brain & left, brain & ~left


def _large_shapes(i: int, seed: int, base: int) -> LabelledCase:
    image, lab = shapes_volume(np.random.default_rng([seed, 9, i]), 128, 6, axes_voxels=(10.0, 30.0))
    vals = np.where(lab > 0, base + np.clip(lab, 0, 15), TISSUE_BASE - lab).astype(np.uint16)
    names = {f"large_shape_{i}_{int(v) - base}": int(v) for v in np.unique(vals) if base < v < base + 16}
    affine = np.diag([LARGE_SHAPES_SPACING_MM] * 3 + [1.0])
    return LabelledCase(f"large_shapes_{i:02d}", Volume(image, affine), vals, names)


def large_cases(data_dir: Path | None = None, ct: Path = INVESALIUS_EXAMPLE, seed: int = 0) -> list[LabelledCase]:
    """Large targets (0.1-2 L) of other images than Colin27, for multi-scale training.

    - MNI152 2009a (nilearn): the brain (grey + white matter probability >= 0.5, largest component, holes
      filled; 63001) in one case, its left and right halves at x = 0 (63002, 63003) in another;
    - the InVesalius head CT: the whole head, skull included (63004);
    - :data:`LARGE_SHAPES_VOLUMES` procedural volumes of large shapes (63100 + 16 i + j).

    The held-out AAL structures lie inside the brain: their voxels stay in these targets (they are interior,
    so no target border traces them). Label maps are filled with tissue classes outside the targets.
    """
    d = nilearn_data_dir() if data_dir is None else Path(data_dir)
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    _require(d / stem.format("t1"), "pip install 'volsam[data]' (nilearn)")
    _require(ct, "apt-get install invesalius-examples")
    t1 = read_image(d / stem.format("t1"))
    prob = np.asarray(read_image(d / stem.format("gm")).array) + np.asarray(read_image(d / stem.format("wm")).array)
    brain = _brain_mask(prob >= 0.5)
    left, right = _halves(brain, np.asarray(t1.affine))
    img = np.asarray(t1.array)
    lab_brain = fill_tissue(np.where(brain, LARGE_BASE + 1, 0).astype(np.uint16), img)
    lab_halves = fill_tissue(
        np.where(left, LARGE_BASE + 2, np.where(right, LARGE_BASE + 3, 0)).astype(np.uint16), img
    )
    out = [
        LabelledCase("large_mni152_brain", t1, lab_brain, {"MNI152_brain": LARGE_BASE + 1}),
        LabelledCase(
            "large_mni152_halves",
            t1,
            lab_halves,
            {"MNI152_brain_left": LARGE_BASE + 2, "MNI152_brain_right": LARGE_BASE + 3},
        ),
    ]
    vol = read_inv3(ct)
    head = ct_head_labels(np.asarray(vol.array)) > 0
    out.append(LabelledCase("large_ct_head", vol, np.where(head, LARGE_BASE + 4, 0).astype(np.uint16),
                            {"CT_whole_head": LARGE_BASE + 4}))
    out += [_large_shapes(i, seed, LARGE_BASE + 100 + 16 * i) for i in range(LARGE_SHAPES_VOLUMES)]
    return out


def large_validation_cases(templates: Path = MRICRON_TEMPLATES, seed: int = 0) -> list[LabelledCase]:
    """Large targets never trained on, for the ship rule's validation: the inia19 brain (all NeuroMaps
    labels, holes filled; 64001, 100 cm^3) in one case, its hemispheres at x = 0 (64002, 64003) in another,
    and one large-shapes volume of its own seed (64100 + j)."""
    _require(templates / "inia19-t1-brain.nii.gz", "apt-get install mricron-data")
    t1 = read_image(templates / "inia19-t1-brain.nii.gz")
    nm = np.asarray(read_image(templates / "inia19-NeuroMaps.nii.gz", dtype=None).array)
    brain = _brain_mask(nm > 0)
    left, right = _halves(brain, np.asarray(t1.affine))
    img = np.asarray(t1.array)
    base = LARGE_BASE + 1000
    lab_brain = fill_tissue(np.where(brain, base + 1, 0).astype(np.uint16), img)
    lab_halves = fill_tissue(np.where(left, base + 2, np.where(right, base + 3, 0)).astype(np.uint16), img)
    shapes = _large_shapes(0, seed + 1000, base + 100)
    return [
        LabelledCase("large_val_inia19_brain", t1, lab_brain, {"inia19_brain": base + 1}),
        LabelledCase("large_val_inia19_halves", t1, lab_halves, {"inia19_left": base + 2, "inia19_right": base + 3}),
        shapes._replace(name="large_val_shapes"),
    ]


SOURCES = {"colin27": colin27_case, "inia19": inia19_case, "invesalius": invesalius_case, "mni152": mni152_case,
           "atlases": atlas_cases, "tissue": tissue_case, "shapes": shapes_cases, "large": large_cases}
"""Source name -> case function, in the order :func:`build_training_set` writes them."""


VALIDATION_SOURCES = {"large_validation": large_validation_cases}
"""Sources written only as validation folders (``build_training_set(..., registry=VALIDATION_SOURCES)``)."""


def build_training_set(
    out: Path, sources: Iterable[str] = tuple(SOURCES), registry: dict | None = None
) -> dict[str, int]:
    """Write the chosen sources under ``out`` as an nnU-Net raw folder; returns its ``labels`` map.

    A source whose package is missing raises ``FileNotFoundError`` naming the package to install.
    """
    sources = list(sources)
    registry = SOURCES if registry is None else registry
    unknown = [s for s in sources if s not in registry]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; expected some of {list(registry)}")
    out = Path(out)
    labels: dict[str, int] = {"background": 0}
    names = []
    for s in sources:
        made = registry[s]()
        for case in made if isinstance(made, list) else [made]:
            label = case.label
            # CT labels cover the head; shapes carry their own tissue; large cases are filled already
            if s not in ("invesalius", "shapes", "large", "large_validation"):
                label = fill_tissue(label, np.asarray(case.image.array))
            write_image(case.image, out / "imagesTr" / f"{case.name}_0000.nii.gz")
            write_mask(label, case.image, out / "labelsTr" / f"{case.name}.nii.gz")
            labels.update(case.labels)
            names.append(case.name)
    meta = {
        "name": "volsam-default-train",
        "description": "open data installed offline: " + ", ".join(names),
        "channel_names": {"0": "image"},
        "labels": labels,
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "held_out_aal": sorted(HELD_OUT_AAL),
    }
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return labels


def split_validation(out: Path, count: int, seed: int = 0) -> dict[str, int]:
    """Move ``count`` targets of the MRI sources, drawn with ``seed`` (chosen in advance, before any training),
    from ``out``'s ``dataset.json`` into a validation folder ``out/validation`` (same layout, the cases that
    hold them linked): they are then never trained on. Returns the validation labels."""
    out = Path(out)
    meta = json.loads((out / "dataset.json").read_text())
    pool = sorted(
        (n, v) for n, v in meta["labels"].items() if 0 < v < 20000 or 30000 <= v < 60000
    )
    rng = np.random.default_rng(seed)
    chosen = dict(pool[int(i)] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False))
    val_dir = out / "validation"
    cases = set()
    for lab_path in sorted((out / "labelsTr").glob("*.nii.gz")):
        present = set(np.unique(np.asarray(read_image(lab_path, dtype=None).array)).astype(int).tolist())
        if present & set(chosen.values()):
            cases.add(lab_path.name[: -len(".nii.gz")])
    for sub, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        (val_dir / sub).mkdir(parents=True, exist_ok=True)
        for c in cases:
            link = val_dir / sub / f"{c}{suffix}"
            if not link.exists():
                link.symlink_to((out / sub / f"{c}{suffix}").resolve())
    val_meta = dict(meta, labels={"background": 0, **chosen}, numTraining=len(cases), description="validation split")
    meta["labels"] = {n: v for n, v in meta["labels"].items() if n not in chosen}
    meta["validation_labels"] = chosen
    for path, m in ((val_dir / "dataset.json", val_meta), (out / "dataset.json", meta)):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(m, indent=1))
    return chosen
