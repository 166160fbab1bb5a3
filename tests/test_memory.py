"""Memorizing SAM: memory attention wrapper, memory building, storage and checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from volsam.memory import Memory, block_qkv, build_memory, check_memory, load_memory, save_memory, weights_sha256
from volsam.modeling.attention import RelPosAttention
from volsam.modeling.memory_attention import CLOSED_LOGIT, MemoryAttention, attach_memory, detach_memory
from volsam.registry import build_model

BLOCK = 2  # fastsam3d_mini: blocks 0-1 are MLP-only


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("fastsam3d_mini")
    # Non-zero relative-position tables and qkv bias so the local path is not trivial.
    with torch.no_grad():
        for name, p in m.image_encoder.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 1, 128, 128, 128, generator=g)


def _own_memory(model: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return block_qkv(model, image, BLOCK)


def test_closed_gate_is_bit_exact(model, image):
    with torch.no_grad():
        ref = model.image_encoder(image)
        _, k, v = _own_memory(model, image)
        handle = attach_memory(model, (k, v), BLOCK)
        try:
            assert handle.module.is_closed()
            assert float(handle.module.gate().abs().max()) == 0.0
            out = model.image_encoder(image)
            # One head open, the other closed: the closed head's output must still be untouched.
            handle.module.gate_logit.data[:] = torch.tensor([0.0, CLOSED_LOGIT])
            partial = model.image_encoder(image)
        finally:
            detach_memory(model)
    assert torch.equal(out, ref)
    assert not torch.equal(partial, ref)


def test_open_gate_reads_memory(model, image):
    attn = model.image_encoder.blocks[BLOCK].attn
    with torch.no_grad():
        _, k, v = _own_memory(model, image)
        enc = model.image_encoder
        x = enc.blocks[1](enc.blocks[0](enc.tokens(image)))
        x = enc.blocks[BLOCK].norm1(x)  # the block's attention input: the memory holds its own keys/values
        local = attn(x)
        wrapper = MemoryAttention(attn, k, v, top_k=k.shape[1], gate_init=40.0)  # sigmoid(40) == 1 in fp32
        assert float(wrapper.gate().min()) == 1.0
        got = wrapper(x)
        wrapper.gate_logit.data.zero_()  # g = 0.5: the projection is affine, so the output is the midpoint
        half = wrapper(x)
        # Gate 1 and top_k = M: the output is plain softmax attention of x's queries over the memory.
        qx = attn.qkv(x).reshape(1, 512, 3, 2, 48)[:, :, 0].transpose(1, 2)
        want = F.scaled_dot_product_attention(qx, k[None], v[None], scale=attn.scale)
        want = attn.proj(want.transpose(1, 2).reshape(1, 8, 8, 8, 96))
    assert not torch.allclose(got, local, atol=1e-3)
    torch.testing.assert_close(qx[0], _own_memory(model, image)[0])  # queries are the memorised tokens' own
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(half, 0.5 * got + 0.5 * local, rtol=1e-4, atol=1e-5)
    # The module's own parameters and state are untouched by the wrapper.
    assert isinstance(wrapper.inner, RelPosAttention) and wrapper.inner is attn


def test_retrieval_indices_hand_made():
    inner = RelPosAttention(8, 2, use_rel_pos=False)
    keys = torch.zeros(2, 5, 4)
    for m in range(4):
        keys[:, m, m] = float(m + 1)  # key m points along axis m with norm m + 1
    keys[:, 4] = -1.0
    values = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    wrapper = MemoryAttention(inner, keys, values, top_k=2)
    q = torch.zeros(1, 2, 3, 4)
    q[0, :, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # best: key 0 (1), then 1,2,3 tie at 0 -> not 4
    q[0, :, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # key 3 (4) then key 2 (3)
    q[0, :, 2] = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # key 4 (4) then key 0 (-1)
    logits, idx = wrapper.retrieve(q)
    assert idx[0, 0, 0, 0] == 0 and idx[0, 0, 0, 1] != 4
    assert idx[0, :, 1].tolist() == [[3, 2], [3, 2]]
    assert idx[0, :, 2].tolist() == [[4, 0], [4, 0]]
    torch.testing.assert_close(logits[0, 0, 1], torch.tensor([4.0, 3.0]) * inner.scale)
    out = wrapper.read(q)
    w = torch.softmax(torch.tensor([4.0, -1.0]) * inner.scale, 0)
    torch.testing.assert_close(out[0, 1, 2], w[0] * values[1, 4] + w[1] * values[1, 0])


def test_attach_detach_restores_module_and_keys(model, image):
    keys_before = list(model.state_dict())
    original = model.image_encoder.blocks[BLOCK].attn
    sha = weights_sha256(model)
    _, k, v = _own_memory(model, image)
    handle = attach_memory(model, (k, v), BLOCK)
    assert model.image_encoder.blocks[BLOCK].attn is handle.module and handle.original is original
    assert weights_sha256(model) == sha  # the wrapper's gate is not part of the model's identity
    with pytest.raises(ValueError, match="already has a memory"):
        attach_memory(model, (k, v), BLOCK)
    assert detach_memory(model) == [BLOCK]
    assert model.image_encoder.blocks[BLOCK].attn is original
    assert list(model.state_dict()) == keys_before
    with pytest.raises(ValueError, match="MLP-only"):
        attach_memory(model, (k, v), 0)


def test_save_load_round_trip(tmp_path, model, image):
    _, k, v = _own_memory(model, image)
    mem = Memory(k.clone(), v.clone(), BLOCK, "fastsam3d_mini", weights_sha256(model), meta={"tokens": "all"})
    path = save_memory(mem, tmp_path / "sub" / "mem.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["mem.safetensors"]  # no temporary file left
    back = load_memory(path)
    assert torch.equal(back.keys, mem.keys) and torch.equal(back.values, mem.values)
    assert (back.block, back.model_name, back.weights_sha256, back.version, back.meta) == (
        mem.block,
        mem.model_name,
        mem.weights_sha256,
        mem.version,
        mem.meta,
    )
    check_memory(back, model, BLOCK)
    handle = attach_memory(model, back, BLOCK, top_k=4)
    detach_memory(model)
    assert handle.module.top_k == 4
    (tmp_path / "bad.safetensors").write_bytes(b"not a memory")
    with pytest.raises(ValueError, match="not a readable memory file"):
        load_memory(tmp_path / "bad.safetensors")


def test_memory_from_another_model_is_refused(model, image):
    _, k, v = _own_memory(model, image)
    mem = Memory(k, v, BLOCK, "fastsam3d_mini", weights_sha256(model))
    torch.manual_seed(123)
    other = build_model("fastsam3d_mini")
    with pytest.raises(ValueError, match="built by another model"):
        check_memory(mem, other, BLOCK)
    with pytest.raises(ValueError, match="built by another model"):
        attach_memory(other, mem, BLOCK)
    assert isinstance(other.image_encoder.blocks[BLOCK].attn, RelPosAttention)
    with pytest.raises(ValueError, match="built at encoder block 2, not block 3"):
        check_memory(mem, model, 3)


def _write_dataset(root: Path) -> None:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    rng = np.random.default_rng(0)
    img = rng.uniform(1, 100, size=(64, 64, 64)).astype(np.float32)
    lab = np.zeros((64, 64, 64), dtype=np.uint8)
    lab[10:51, 20:31, 20:31] = 1  # centre of mass (30, 25, 25): window voxels [44,85) x [59,70) x [59,70)
    lab[45, 45, 45] = 2  # one voxel, at window voxel (64, 64, 64)
    nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / "x_0000.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "x.nii.gz")
    meta = {"labels": {"background": 0, "box": 1, "dot": 2}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))


def test_build_memory_labelled_tokens(tmp_path, model):
    data = tmp_path / "Dataset001_Toy"
    _write_dataset(data)
    # margin 1: box dilated to [43,86) x [58,71)^2 -> tokens 2..5 x 3..4 x 3..4 = 16; dot -> 2^3 = 8.
    mem = build_memory(model, data, BLOCK, model_name="fastsam3d_mini")
    assert mem.keys.shape == (2, 16 + 8, 48) and mem.values.shape == mem.keys.shape
    assert mem.keys.dtype == torch.float32 and mem.meta["targets"] == 2
    check_memory(mem, model, BLOCK)
    # margin 0: box 16 tokens, the dot only its own token.
    assert build_memory(model, data, BLOCK, margin_voxels=0).size == 16 + 1
    assert build_memory(model, data, BLOCK, tokens="all").size == 2 * 512
    sub = build_memory(model, data, BLOCK, tokens="all", max_tokens=100, seed=3)
    assert sub.size == 100
    with pytest.raises(ValueError, match="MLP-only"):
        build_memory(model, data, 1)


def test_build_memory_keys_match_the_model(tmp_path, model):
    """The memorised keys of a target are the block's own keys of that window."""
    from volsam.transforms import extract_window, normalize_window, window_for_point

    data = tmp_path / "Dataset001_Toy"
    _write_dataset(data)
    mem = build_memory(model, data, BLOCK, tokens="all")
    img = nib.load(data / "imagesTr" / "x_0000.nii.gz")
    arr, aff = np.asarray(img.dataobj, dtype=np.float32), img.affine
    win = window_for_point(aff, (30, 25, 25))
    x = torch.from_numpy(normalize_window(extract_window(arr, aff, win)))[None, None]
    _, k, v = block_qkv(model, x, BLOCK)
    torch.testing.assert_close(mem.keys[:, :512], k)
    torch.testing.assert_close(mem.values[:, :512], v)


def test_cli_memory_build(tmp_path):
    from volsam.cli import main

    data = tmp_path / "Dataset001_Toy"
    _write_dataset(data)
    out = tmp_path / "mem.safetensors"
    argv = ["memory", "build", "--data", str(data), "--model", "fastsam3d_mini", "--random-weights"]
    rc = main([*argv, "--block", "2", "-o", str(out)])
    assert rc == 0
    mem = load_memory(out)
    assert mem.size == 24 and mem.block == 2 and mem.model_name == "fastsam3d_mini"


def test_faiss_search_equals_torch_search():
    pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install 'volsam[memory]')")
    torch.manual_seed(5)
    inner = RelPosAttention(64, 4, use_rel_pos=False)  # 4 heads x 16
    keys, values = torch.randn(4, 3000, 16), torch.randn(4, 3000, 16)
    q = torch.randn(1, 4, 200, 16, requires_grad=True)
    exact = MemoryAttention(inner, keys, values, top_k=8, search="torch")
    flat = MemoryAttention(inner, keys, values, top_k=8, search="faiss")
    hnsw = MemoryAttention(inner, keys, values, top_k=8, search="faiss-hnsw")
    assert (exact.search_kind(q.device), flat.search_kind(q.device)) == ("torch", "flat")
    l0, i0 = exact.retrieve(q)
    l1, i1 = flat.retrieve(q)
    assert torch.equal(i0, i1)  # random continuous keys: no ties
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    # Gradients reach the queries through the recomputed logits whichever search found the keys.
    (g0,) = torch.autograd.grad(exact.read(q).sum(), q)
    (g1,) = torch.autograd.grad(flat.read(q).sum(), q)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
    # HNSW is approximate: most of the exact top-k is found.
    _, i2 = hnsw.retrieve(q)
    pairs = zip(i0.reshape(-1, 8).tolist(), i2.reshape(-1, 8).tolist(), strict=True)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in pairs])
    assert recall > 0.9
    with pytest.raises(ValueError, match="search must be one of"):
        MemoryAttention(inner, keys, values, search="annoy")


def test_auto_search_uses_faiss_only_for_large_memories(monkeypatch):
    pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install 'volsam[memory]')")
    import volsam.modeling.memory_attention as ma

    inner = RelPosAttention(16, 1, use_rel_pos=False)
    wrapper = MemoryAttention(inner, torch.randn(1, 100, 16), torch.randn(1, 100, 16))
    assert wrapper.search_kind(torch.device("cpu")) == "torch"
    monkeypatch.setattr(ma, "FAISS_MIN_TOKENS", 100)
    assert wrapper.search_kind(torch.device("cpu")) == "hnsw"
    assert wrapper.search_kind(torch.device("cuda")) == "torch"  # faiss-cpu would copy queries off the GPU


def test_fp16_memory_halves_the_file_and_attaches(tmp_path, model):
    data = tmp_path / "Dataset001_Toy"
    _write_dataset(data)
    full = build_memory(model, data, BLOCK, tokens="all")
    half = build_memory(model, data, BLOCK, tokens="all", fp16=True)
    assert half.keys.dtype == torch.float16 and half.meta["dtype"] == "float16"
    torch.testing.assert_close(half.keys.float(), full.keys, rtol=1e-3, atol=1e-3)
    a = save_memory(full, tmp_path / "full.safetensors").stat().st_size
    b = save_memory(half, tmp_path / "half.safetensors").stat().st_size
    assert b < 0.55 * a
    handle = attach_memory(model, load_memory(tmp_path / "half.safetensors"), BLOCK)
    try:
        assert handle.module.mem_keys.dtype == torch.float32  # cast to the model's dtype
    finally:
        detach_memory(model)
