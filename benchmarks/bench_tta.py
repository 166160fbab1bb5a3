"""Does mirroring test-time augmentation help the early-fusion model? Mean Dice per click with and without it.

With ``--flips`` the network input (image and every prompt channel) is also run mirrored along each listed
window axis and the logits are mirrored back and averaged with the plain pass (nnU-Net's mirroring; one
extra network pass per axis, so the per-click cost grows by the same factor). Both runs use the same
model, data, protocol and click seeds; the table is the mean over ``--seeds``.

    python -m benchmarks.bench_tta --data /tmp/defdata3/validation [--flips 0 1 2] [--seeds 0 1 2]

Choose with a validation set (``scripts/build_default_data.py --val-targets``), never the held-out
structures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from torch import nn


class FlipMean(nn.Module):
    """``net(x)`` averaged with ``flip(net(flip(x)))`` along each of ``axes`` (window axes 0-2 of
    [B, C, D, H, W]); the output has ``net``'s shape."""

    def __init__(self, net: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.dims = net, tuple((a + 2,) for a in axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.net(x)] + [torch.flip(self.net(torch.flip(x, d)), d) for d in self.dims]
        return torch.stack(outs).mean(0)


def main() -> None:
    from volsam.eval.runner import evaluate
    from volsam.models import default_weights_path
    from volsam.registry import DEFAULT_MODEL, build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset (a validation folder; not the held-out structures)")
    p.add_argument("--model", default=None, help="checkpoint of the default architecture (default: shipped)")
    p.add_argument("--flips", type=int, nargs="+", default=[0, 1, 2], choices=[0, 1, 2], help="window axes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clicks", type=int, default=5)
    a = p.parse_args()

    model = build_model(DEFAULT_MODEL, a.model or default_weights_path()).eval()
    plain = model.net
    table = {}
    for name, axes in (("plain", ()), (f"flips {a.flips}", tuple(a.flips))):
        model.net = FlipMean(plain, axes) if axes else plain
        per_seed = []
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as out:
                s = evaluate(a.data, model, "sam_med3d", a.clicks, out, seed=seed, progress=False, write=False)
            per_seed.append(s.overall["dice"])
        table[name] = [statistics.mean(col) for col in zip(*per_seed, strict=True)]
    print(f"mean Dice per click over seeds {a.seeds} ({a.data})")
    for name, dices in table.items():
        print(f"{name:18s} " + " ".join(f"{d:.3f}" for d in dices))


if __name__ == "__main__":
    main()
