"""volsam segment (volsam.cli.segment); the batch form is in tests/test_batch.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from volsam.cli import main
from volsam.demo import DEMO_IMAGE
from volsam.io import read_image


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
            "--random-weights",
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


def test_segment_with_the_shipped_model_refuses_encoder_attention_in_one_line(image, tmp_path, capsys):
    dense, dilated = tmp_path / "dense.nii.gz", tmp_path / "dilated.nii.gz"
    point = "44,56,56"  # left thalamus of the bundled crop
    assert main(["segment", str(DEMO_IMAGE), "--point", point, "-o", str(dense)]) == 0
    assert read_image(dense, dtype=None).array.any()
    capsys.readouterr()
    argv = ["segment", str(DEMO_IMAGE), "--point", point, "-o", str(dilated), "--encoder-attention", "dilated"]
    assert main(argv) == 2  # the early-fusion default has no attention to switch
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("volsam: error:") and "no attention" in err[-1] and not dilated.exists()
    with pytest.raises(SystemExit):
        main(["segment", str(image), "--point", "1,1,1", "--encoder-attention", "sparse"])


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


@pytest.mark.parametrize("name", ["sam_med3d", "fastsam3d", "volsam_small"])
def test_architecture_name_without_weights_fails_in_one_line(image, tmp_path, capsys, name):
    out = tmp_path / "m.nii.gz"
    assert main(["segment", str(image), "--point", "1,1,1", "--model", name, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("volsam: error:") and "without weights" in err[0]
    assert "--random-weights" in err[0] and not out.exists()
    if name == "sam_med3d":
        assert "sam_med3d_turbo.pth" in err[0] and "SAM-Med3D" in err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "{tmp}/mask.png"], "output format"),
        (["-o", "{img}"], "overwrite the input"),
        (["-o", "{tmp}"], "is a directory"),
        (["-o", "{tmp}/seg.dcm"], "DICOM-SEG"),
    ],
)
def test_bad_output_is_refused_before_the_model_loads(image, tmp_path, capsys, monkeypatch, extra, message):
    import volsam.session

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(volsam.session, "resolve_model", no_model)
    argv = ["segment", str(image), "--point", "1,1,1", *[a.format(tmp=tmp_path, img=image) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.lower() in err.lower() and "Traceback" not in err


def test_missing_input_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import volsam.session

    monkeypatch.setattr(volsam.session, "resolve_model", lambda *a, **kw: pytest.fail("model loaded"))
    assert main(["segment", str(tmp_path / "nope.nii.gz"), "--point", "1,1,1"]) == 2
    assert "no such file" in capsys.readouterr().err
