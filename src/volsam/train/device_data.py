"""Training windows drawn on the training device from a packed dataset (:mod:`volsam.train.pack`).

Everything a CPU data loader does per sample happens here per batch, in torch, where the model runs: the whole
packed dataset sits in device memory; a batch picks targets uniformly (or with per-source weights), centres
each window on one of the target's stored foreground voxels moved by a uniform jitter (at most ``jitter``
voxels per axis, so the voxel stays ``window / 2 - jitter`` voxels inside), crops image and label map (zero
outside the scanned volume, as :func:`volsam.transforms.extract_window` pads), replaces some images by
SynthSeg-style contrasts generated from the label window (:func:`volsam.train.synth.synth_images`) and
normalises each window as inference does (:func:`volsam.transforms.normalize_windows`). The packed grid is the model's
(RAS+-aligned, isotropic), so no resampling happens here; spatial augmentation is
:func:`volsam.train.augment.augment_batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from volsam.train.pack import read_pack
from volsam.train.synth import SynthConfig, synth_images
from volsam.transforms import normalize_windows

__all__ = ["PackedBatch", "PackedVolumes"]


@dataclass
class PackedBatch:
    """A batch of training windows on the device.

    Attributes:
        image: [B, 1, S, S, S] float32, normalised.
        target: [B, 1, S, S, S] float32 0/1.
        target_index: [B] long, rows of the pack's ``targets``.
        synthetic: [B] bool, image generated from the label window.
    """

    image: torch.Tensor
    target: torch.Tensor
    target_index: torch.Tensor
    synthetic: torch.Tensor


class PackedVolumes:
    """A packed dataset held on ``device``; :meth:`sample` draws batches of windows.

    Args:
        path: a file written by :func:`volsam.train.pack.pack_dataset`.
        device: where volumes and batches live.
        window: window side S, voxels.
        jitter: largest per-axis offset of the window centre from the chosen foreground voxel, voxels.
        p_synth: probability that a sample's image is synthetic.
        synth: ranges of the synthetic contrasts.
        case_weights: relative sampling weight of the targets of every case whose name starts with a key
            (e.g. ``{"shapes_": 0.4}``: procedural shapes drawn 0.4 times as often as other targets); the
            first matching key counts, other targets weigh 1. None: targets drawn uniformly.

    Raises:
        ValueError: ``jitter`` leaves the chosen voxel closer than 1 voxel to the window's border,
            ``p_synth`` outside [0, 1], or a case weight negative, matching no case, or leaving no target.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str = "cpu",
        *,
        window: int = 64,
        jitter: int = 16,
        p_synth: float = 0.4,
        synth: SynthConfig | None = None,
        case_weights: Mapping[str, float] | None = None,
    ) -> None:
        if not 0 <= jitter < window // 2:
            raise ValueError(f"jitter must be in [0, {window // 2 - 1}] voxels for a {window}^3 window, got {jitter}")
        if not 0.0 <= p_synth <= 1.0:
            raise ValueError(f"p_synth must be in [0, 1], got {p_synth}")
        self.meta, arrays = read_pack(path)
        self.device = torch.device(device)
        self.window, self.jitter, self.p_synth = int(window), int(jitter), float(p_synth)
        self.synth = synth or SynthConfig()
        self.pad = self.window // 2 + self.jitter + 1
        p = (self.pad,) * 6
        cases = self.meta["cases"]
        self.images = [
            F.pad(torch.from_numpy(arrays[f"image_{i}"]).to(self.device), p)
            for i in range(len(arrays["image_scale"]))
        ]
        self.scales = [float(s) for s in arrays["image_scale"]]
        # int32: torch's uint16 lacks most ops; the packed file keeps uint16.
        self.labels = [
            F.pad(torch.from_numpy(arrays[f"label_{c}"].astype("int32")).to(self.device), p) for c in range(len(cases))
        ]
        self.case_image = [int(c["image"]) for c in cases]
        self.shapes = [tuple(c["shape"]) for c in cases]
        self.targets = torch.from_numpy(arrays["targets"]).long()
        self.fg = torch.from_numpy(arrays["fg"]).long()
        self.weights = None if case_weights is None else self._target_weights(case_weights)

    def _target_weights(self, case_weights: Mapping[str, float]) -> torch.Tensor:
        names = [str(c["name"]) for c in self.meta["cases"]]
        for prefix, w in case_weights.items():
            if not w >= 0:
                raise ValueError(f"case weight for {prefix!r} must be >= 0, got {w}")
            hits = [i for i, n in enumerate(names) if n.startswith(prefix)]
            if not hits:
                raise ValueError(f"case weight prefix {prefix!r} matches no case; cases: {', '.join(names)}")
        per_case = [next((float(w) for p, w in case_weights.items() if n.startswith(p)), 1.0) for n in names]
        weights = torch.tensor(per_case, dtype=torch.float64)[self.targets[:, 0]]
        if not float(weights.sum()) > 0:
            raise ValueError("case weights leave no target to draw (all weights 0)")
        return weights

    def sampling_shares(self) -> dict[str, float]:
        """Expected share of the draws per case name (uniform over targets unless ``case_weights``)."""
        w = self.weights if self.weights is not None else torch.ones(self.num_targets, dtype=torch.float64)
        per_case = torch.zeros(len(self.labels), dtype=torch.float64).index_add_(0, self.targets[:, 0], w)
        total = float(per_case.sum())
        return {str(c["name"]): float(v) / total for c, v in zip(self.meta["cases"], per_case, strict=True)}

    @property
    def num_targets(self) -> int:
        return int(self.targets.shape[0])

    def nbytes(self) -> int:
        """Device bytes held by the volumes."""
        return sum(t.numel() * t.element_size() for t in self.images + self.labels)

    def sample(self, batch: int, generator: torch.Generator, device_generator: torch.Generator) -> PackedBatch:
        """Draw ``batch`` windows.

        Args:
            batch: B.
            generator: CPU generator (which targets, voxels and offsets).
            device_generator: generator on the device (synthetic contrasts).
        """
        s, half = self.window, self.window // 2
        if self.weights is None:
            ti = torch.randint(self.num_targets, (batch,), generator=generator)
        else:
            ti = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        pick = torch.randint(self.fg.shape[1], (batch,), generator=generator)
        jit = torch.randint(-self.jitter, self.jitter + 1, (batch, 3), generator=generator)
        starts = self.fg[ti, pick] + jit - half + self.pad  # padded-grid index of window voxel 0
        imgs, labs, valids = [], [], []
        ar = torch.arange(s, device=self.device)
        for k in range(batch):
            case, value = (int(v) for v in self.targets[ti[k]])
            x, y, z = (int(v) for v in starts[k])
            sl = (slice(x, x + s), slice(y, y + s), slice(z, z + s))
            imgs.append(self.images[self.case_image[case]][sl].float() * self.scales[self.case_image[case]])
            labs.append(self.labels[case][sl])
            pos = [ar + o - self.pad for o in (x, y, z)]  # packed-grid index of each window voxel, per axis
            inside = [(q >= 0) & (q < n) for q, n in zip(pos, self.shapes[case], strict=True)]
            valids.append(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
        value = self.targets[ti, 1].to(self.device).view(batch, 1, 1, 1, 1)
        lab = torch.stack(labs)[:, None]
        valid = torch.stack(valids)[:, None]
        image = torch.stack(imgs)[:, None]
        synthetic = torch.rand(batch, generator=generator) < self.p_synth
        if bool(synthetic.any()):
            idx = torch.nonzero(synthetic).flatten().to(self.device)
            image[idx] = synth_images(lab[idx], valid[idx], device_generator, self.synth)
        return PackedBatch(normalize_windows(image), (lab == value).float(), ti, synthetic)

    def describe(self) -> str:
        """One line: cases, images, targets, device memory."""
        return (
            f"{len(self.labels)} case(s), {len(self.images)} image(s), {self.num_targets} target(s), "
            f"{self.nbytes() / 2**20:.0f} MiB on {self.device}, {self.window}^3 windows at "
            f"{self.meta['spacing']} mm (jitter {self.jitter} voxels, p_synth {self.p_synth}"
            + (", weighted by source" if self.weights is not None else "") + ")"
        )

