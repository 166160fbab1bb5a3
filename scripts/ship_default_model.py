"""Install trained weights as volsam's bundled default model (``src/volsam/weights/volsam_fusion.safetensors``).

Loads the checkpoint strictly as the default model (:data:`volsam.registry.DEFAULT_MODEL`), writes its
state dict as safetensors (fp32) atomically, and prints the size and SHA-256 for the model card.

    python scripts/ship_default_model.py runs/default/final.pt
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from safetensors.torch import save_file

from volsam.atomic import atomic_path
from volsam.models import default_weights_path
from volsam.registry import DEFAULT_MODEL, build_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint of the default model (volsam train's final.pt or latest.pt)")
    ap.add_argument("-o", "--output", default=None, help=f"default: {default_weights_path()}")
    args = ap.parse_args(argv)
    model = build_model(DEFAULT_MODEL, args.checkpoint)
    out = Path(args.output) if args.output else default_weights_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"model": DEFAULT_MODEL, "source": Path(args.checkpoint).name})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
