"""ONNX export: onnxruntime reproduces the PyTorch model (parity fixtures) with a dynamic point count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from volsam import build_model
from volsam.cli import main
from volsam.export import OnnxModel, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOL = 1e-4
MINI = ["sam_med3d_mini", "fastsam3d_mini"]
CASES = ["one_positive_zero_mask", "three_clicks_prev_logits", "two_points_no_mask"]


@pytest.fixture(scope="module", params=MINI)
def exported(request, load_fixture, tmp_path_factory):
    """(fixture dict, PyTorch model, OnnxModel) per parity fixture, exported once per module."""
    fx = load_fixture(request.param)
    model = build_model(request.param)
    model.load_state_dict(fx["state_dict"], strict=True)
    out = tmp_path_factory.mktemp(request.param)
    paths = export_onnx(model, out, name=request.param)
    assert {p.name for p in paths.values()} == {"encoder.onnx", "decoder.onnx", "export.json"}
    return fx, model, OnnxModel(out)


def test_embedding_matches_fixture(exported):
    fx, _, onnx_model = exported
    image = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(fx["image_seed"]))
    emb = onnx_model.image_encoder(image)
    assert emb.shape == fx["outputs"]["image_embedding"].shape
    assert (emb - fx["outputs"]["image_embedding"]).abs().max() <= TOL


@pytest.mark.parametrize("case", CASES)
def test_decoder_matches_fixture(exported, case):
    fx, _, onnx_model = exported
    inp = fx["inputs"][case]
    low, iou = onnx_model.decode(fx["outputs"]["image_embedding"], inp["coords"], inp["labels"], inp["mask"])
    want_low, want_iou = fx["outputs"][f"{case}/low_res_logits"], fx["outputs"][f"{case}/iou"]
    assert low.shape == want_low.shape == (1, 1, 32, 32, 32)
    assert iou.shape == want_iou.shape == (1, 1)
    assert (low - want_low).abs().max() <= TOL
    assert (iou - want_iou).abs().max() <= TOL


@pytest.mark.parametrize("n", [1, 3])
def test_dynamic_point_count(exported, n):
    fx, model, onnx_model = exported
    emb = fx["outputs"]["image_embedding"]
    g = torch.Generator().manual_seed(n)
    coords = torch.rand(1, n, 3, generator=g) * 127
    labels = torch.randint(0, 2, (1, n), generator=g)
    prev = torch.randn(1, 1, 32, 32, 32, generator=g)
    for mask in (None, prev):
        with torch.no_grad():
            want_low, want_iou = model.decode(emb, coords, labels, mask)
        low, iou = onnx_model.decode(emb, coords, labels, mask)
        assert (low - want_low).abs().max() <= TOL
        assert (iou - want_iou).abs().max() <= TOL


def test_cli_export_writes_files(tmp_path: Path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "--model", "fastsam3d_mini", "--random-weights", "--format", "onnx", "-o", str(out)]) == 0
    assert (out / "encoder.onnx").stat().st_size > 0
    assert (out / "decoder.onnx").stat().st_size > 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "fastsam3d_mini" and meta["opset"] == 17
    assert list(meta["decoder"]["inputs"]) == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
    ]
    assert meta["decoder"]["outputs"]["low_res_logits"]["shape"] == [1, 1, 32, 32, 32]
    import onnx

    for name in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(str(out / name))
    assert "wrote" in capsys.readouterr().err


def test_cli_bad_format_is_usage_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", "fastsam3d_mini", "--format", "tflite", "-o", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_session_runs_on_onnxruntime_like_pytorch(tmp_path, load_fixture):
    """The session's onnxruntime backend gives the PyTorch session's masks, click after click."""
    import numpy as np

    from volsam.session import Session

    fx = load_fixture("fastsam3d_mini")
    model = build_model("fastsam3d_mini")
    model.load_state_dict(fx["state_dict"])
    export_onnx(model, tmp_path / "onnx")
    rng = np.random.default_rng(0)
    img = rng.normal(10, 1, (70, 60, 50)).astype(np.float32)
    img[20:45, 15:40, 10:30] += 100
    affine = np.diag([1.2, 0.9, 2.0, 1.0])
    a, b = Session(model), Session(str(tmp_path / "onnx"))
    for s in (a, b):
        s.set_image(img, affine)
    for point, positive in (((30, 25, 20), True), ((5, 5, 5), False), ((35, 30, 22), True)):
        ma, mb = a.add_click(point, positive), b.add_click(point, positive)
        assert (ma != mb).mean() < 1e-4  # logits within ~1e-5; a voxel at the threshold may flip


def test_click_prior_is_in_the_decoder_graph(tmp_path):
    """A model with the click prior (volsam_tiny's) exports it: onnxruntime equals Sam3D.decode."""
    from dataclasses import replace

    from volsam.modeling import Sam3D
    from volsam.registry import model_config

    cfg = model_config("fastsam3d_mini")
    torch.manual_seed(0)
    model = Sam3D.from_config(replace(cfg, prompt=replace(cfg.prompt, click_prior_sigma=6.0))).eval()
    export_onnx(model, tmp_path)
    onnx = OnnxModel(tmp_path)
    emb = torch.randn(1, cfg.encoder.out_chans, 8, 8, 8)
    coords = torch.tensor([[[40.0, 60.0, 70.0], [90.0, 20.0, 30.0]]])
    labels = torch.tensor([[1, 0]])
    prev = torch.randn(1, 1, 32, 32, 32)
    for mask in (None, prev):
        with torch.no_grad():
            want, _ = model.decode(emb, coords, labels, mask)
        got, _ = onnx.decode(emb, coords, labels, mask)
        assert torch.allclose(torch.as_tensor(got), want, atol=TOL)
