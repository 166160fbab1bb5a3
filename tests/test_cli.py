from __future__ import annotations

import contextlib

import nibabel as nib
import numpy as np
import pytest

from volsam.cli import main
from volsam.demo import DEMO_IMAGE, run_demo
from volsam.io import read_image

DEMO_DICE_FLOOR = 0.5  # the shipped model measured 0.606 on the demo (MODEL_CARD.md); a floor below that


@pytest.fixture()
def image(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(10, 1, (40, 44, 30)).astype(np.float32)
    data[10:25, 12:30, 8:20] += 100
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.1, 0.9, 2.0, 1.0])), path)
    return path


def test_info(image, capsys):
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert "(40, 44, 30)" in out and "1.1 x 0.9 x 2 mm" in out and "RAS" in out


def test_segment_writes_mask_on_input_grid(image, tmp_path, capsys):
    out = tmp_path / "mask.nrrd"
    rc = main(
        [
            "segment",
            str(image),
            "--point",
            "17,20,14",
            "--negative",
            "30,5,3",
            "--point",
            "18,21,14",
            "--model",
            "fastsam3d_mini",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    mask, ref = read_image(out, dtype=None), read_image(image)
    assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine, atol=1e-5)
    err = capsys.readouterr().err
    # clicks applied in the order given, each reported
    assert err.index("+ click (17.0") < err.index("- click (30.0") < err.index("+ click (18.0")


def test_segment_with_the_shipped_model_and_dilated_encoder_attention(image, tmp_path):
    dense, dilated = tmp_path / "dense.nii.gz", tmp_path / "dilated.nii.gz"
    point = "44,56,56"  # left thalamus of the bundled crop
    for out, extra in ((dense, []), (dilated, ["--encoder-attention", "dilated"])):
        assert main(["segment", str(DEMO_IMAGE), "--point", point, "-o", str(out), *extra]) == 0
    a = read_image(dense, dtype=None).array > 0
    b = read_image(dilated, dtype=None).array > 0
    assert a.any() and b.any() and not np.array_equal(a, b)  # the backend changed the encoder's output
    with pytest.raises(SystemExit):
        main(["segment", str(image), "--point", "1,1,1", "--encoder-attention", "sparse"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "{img}", "--point", "99,1,1"], "outside the volume"),
        (["segment", "{missing}", "--point", "1,1,1"], "no such file"),
        (["segment", "{img}", "--point", "1,1"], None),  # argparse usage error
        (["segment", "{img}", "--point", "1,1,1", "-o", "{img}"], "input"),
        (["segment", "{img}", "--point", "1,1,1", "--model", "{trunc}"], "not a readable checkpoint"),
        (["segment", "{img}", "--point", "1,1,1", "--model", "nonsense"], "model must be one of"),
        (["segment", "{img4d}", "--point", "1,1,1"], "3D"),
        (["info", "{trunc_nii}"], "truncated"),
    ],
)
def test_bad_input_is_one_line_no_traceback(image, tmp_path, capsys, args, message):
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    trunc_nii = tmp_path / "trunc.nii.gz"
    trunc_nii.write_bytes(image.read_bytes()[:200])
    img4d = tmp_path / "img4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), img4d)
    before = image.read_bytes()
    fill = {"img": image, "missing": tmp_path / "nope.nii.gz", "trunc": trunc, "trunc_nii": trunc_nii, "img4d": img4d}
    argv = [a.format(**fill) for a in args]
    if "--model" not in argv and argv[0] == "segment":
        argv += ["--model", "fastsam3d_mini"]
    with pytest.raises(SystemExit) if message is None else contextlib.nullcontext():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if message is not None:
        errors = [line for line in err.splitlines() if line.startswith("volsam: error:")]
        assert len(errors) == 1 and err.splitlines()[-1] == errors[0]  # one line, last
        assert message.lower() in errors[0].lower()
    assert image.read_bytes() == before  # the input is never touched


def test_demo_writes_mask_and_png(tmp_path):
    r = run_demo(tmp_path, model="fastsam3d_mini")
    assert 0.0 <= r.dice <= 1.0
    assert read_image(r.mask_path).shape == read_image(DEMO_IMAGE).shape
    assert r.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundled_default_model_segments_the_demo(tmp_path):
    """Regression floor for the shipped weights (MODEL_CARD.md): one click in the demo's left thalamus."""
    from volsam.session import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("no default weights bundled in this build")
    r = run_demo(tmp_path, device="cpu")
    assert r.dice >= DEMO_DICE_FLOOR, r.dice


def test_segment_refines_an_initial_mask_and_checks_its_grid(image, tmp_path, capsys):
    ref = nib.load(image)
    initial = np.zeros(ref.shape, np.uint8)
    initial[2:6, 2:6, 2:6] = 1
    init_path = tmp_path / "initial.nii.gz"
    nib.save(nib.Nifti1Image(initial, ref.affine), init_path)
    out = tmp_path / "mask.nii.gz"
    # A negative click off the initial mask and outside every window changes nothing: the mask stays.
    args = ["segment", str(image), "--initial", str(init_path), "--negative", "30,40,25"]  # the shipped model
    assert main([*args, "-o", str(out)]) == 0
    assert np.array_equal(np.asarray(nib.load(out).dataobj), initial)
    assert "initial mask:" in capsys.readouterr().err
    nib.save(nib.Nifti1Image(initial[:-1], ref.affine), init_path)
    assert main([*args, "-o", str(out)]) == 2
    assert "is not on the image's grid" in capsys.readouterr().err
