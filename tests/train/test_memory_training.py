"""``volsam train --memory``: only the memory block's gates train; the result plugs into Session/evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from volsam import build_model, save_checkpoint
from volsam.cli import main
from volsam.memory import load_memory, use_memory
from volsam.modeling.memory_attention import MemoryAttention, detach_memory

MODEL = "fastsam3d_mini"


@pytest.fixture(scope="module")
def trained(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.train import one_thread

    root = tmp_path_factory.mktemp("memtrain")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(MODEL), root / "model.pt")
    mem = root / "mem.safetensors"
    with one_thread():
        build = ["memory", "build", "--data", str(toy_data), "--model", str(ckpt), "--block", "2", "-o", str(mem)]
        assert main(build) == 0
        argv = ["train", "--init", str(ckpt), "--data", str(toy_data), "--memory", str(mem), "--steps", "3"]
        argv += ["--lr", "0.5", "--rounds", "2", "--workers", "0", "--no-progress", "--out", str(root / "out")]
        assert main(argv) == 0
    return {"ckpt": ckpt, "memory": mem, "trained": root / "out" / "memory.safetensors", "out": root / "out"}


def test_only_the_gates_train(trained):
    before, after = load_memory(trained["memory"]), load_memory(trained["trained"])
    assert before.gate_logits is None
    assert after.gate_logits is not None and after.gate_logits.shape == (before.keys.shape[0],)
    assert not torch.allclose(after.gate_logits, torch.full_like(after.gate_logits, -4.0))
    assert torch.equal(after.keys, before.keys) and torch.equal(after.values, before.values)
    assert after.weights_sha256 == before.weights_sha256
    # final.pt is the plain model, unchanged (the memory lives in memory.safetensors)
    a = build_model(MODEL, trained["ckpt"]).state_dict()
    b = build_model(MODEL, trained["out"] / "final.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trained_memory_changes_the_session_and_untrained_warns(trained):
    from volsam.session import Session

    img = np.random.default_rng(0).normal(100, 20, (40, 40, 40)).astype(np.float32)
    img[10:25, 12:28, 8:30] += 150
    plain = Session(str(trained["ckpt"]), "cpu")
    plain.set_image(img)
    with_mem = Session(str(trained["ckpt"]), "cpu", memory=trained["trained"])
    assert isinstance(with_mem.model.image_encoder.blocks[2].attn, MemoryAttention)
    with_mem.set_image(img)
    plain.add_click((16, 20, 18))
    with_mem.add_click((16, 20, 18))
    a, b = plain.windows[0], with_mem.windows[0]
    ea, eb = plain._cache[a[0]], with_mem._cache[b[0]]
    assert not torch.allclose(ea, eb)
    m = build_model(MODEL, trained["ckpt"])
    with pytest.warns(UserWarning, match="no trained gate"):
        use_memory(m, trained["memory"])
    detach_memory(m)


def test_memory_of_another_model_is_refused(trained):
    from volsam.session import Session

    torch.manual_seed(5)
    with pytest.raises(ValueError, match="memory was built by another model"):
        Session(build_model(MODEL), "cpu", memory=trained["trained"])
