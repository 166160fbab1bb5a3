from __future__ import annotations

import warnings

import pytest
import torch

from volsam.runtime import RuntimeFallbackWarning, choose_runtime


def test_cpu_defaults_to_fp32_without_compilation():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt = choose_runtime("cpu")
    assert (rt.device.type, rt.precision, rt.attention, rt.compile, rt.dtype) == ("cpu", "fp32", "auto", False, None)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cpu_falls_back_to_fp32_with_one_warning(precision):
    with pytest.warns(RuntimeFallbackWarning, match=f"{precision} on cpu .* using fp32") as rec:
        rt = choose_runtime("cpu", precision=precision)
    assert rt.precision == "fp32" and len(rec) == 1


def test_flash_on_cpu_falls_back():
    with pytest.warns(RuntimeFallbackWarning, match="flash attention needs a CUDA GPU"):
        rt = choose_runtime("cpu", attention="flash")
    assert rt.attention == "auto"


def test_unknown_choices_are_errors():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        choose_runtime("cpu", precision="int8")
    with pytest.raises(ValueError, match="attention must be one of"):
        choose_runtime("cpu", attention="xformers")


def test_math_kernel_context_restricts_sdpa_and_restores_it():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    rt = choose_runtime("cpu", attention="math")
    before = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()
    with rt.context():
        assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled() and torch.is_inference_mode_enabled()
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()) == before
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    assert torch.allclose(got, ref, atol=1e-5)


def test_compilation_is_opt_in():
    assert not choose_runtime("cpu").compile and choose_runtime("cpu", compile=True).compile


def test_session_and_cli_fall_back_with_a_one_line_warning(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from volsam.cli import main
    from volsam.session import Session

    with pytest.warns(RuntimeFallbackWarning):
        s = Session("fastsam3d_mini", "cpu", precision="bf16", random_weights=True)
    assert s.runtime.precision == "fp32"
    img = np.zeros((24, 24, 24), np.float32)
    img[8:16, 8:16, 8:16] = 100
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "x.nii.gz")
    argv = ["segment", str(tmp_path / "x.nii.gz"), "--point", "12,12,12", "--model", "fastsam3d_mini"]
    argv += ["--random-weights", "--device", "cpu", "--precision", "bf16", "-o", str(tmp_path / "m.nii.gz")]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and lines[0].startswith("volsam: warning: bf16 on cpu is far slower than fp32")
    assert lines[0].endswith("using fp32")
