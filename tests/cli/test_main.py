"""volsam.cli: the parser built from the command groups, argv preprocessing and one-line errors."""

from __future__ import annotations

import argparse
import contextlib

import nibabel as nib
import numpy as np
import pytest

from volsam.cli import build_parser, main


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
        argv += ["--model", "fastsam3d_mini", "--random-weights"]
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


def test_negative_coordinates_are_accepted(tmp_path):
    from volsam.cli import _join_negative_coordinates, build_parser

    argv = ["segment", "x.nii.gz", "--point", "-5,100,80", "--negative", "-.5,-1,2", "--box", "-1,-2,-3,4,5,6"]
    args = build_parser().parse_args(_join_negative_coordinates(argv))
    assert args.clicks == [((-5.0, 100.0, 80.0), True), ((-0.5, -1.0, 2.0), False)]
    assert args.box == (-1.0, -2.0, -3.0, 4.0, 5.0, 6.0)
    world = tmp_path / "w.nii.gz"  # world coordinates are often negative: end to end through main
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -16.0
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), affine), world)
    out = tmp_path / "m.nii.gz"
    argv = ["segment", str(world), "--world", "--point", "-2,-2,-2", "-o", str(out)]
    assert main([*argv, "--model", "fastsam3d_mini", "--random-weights", "--device", "cpu"]) == 0
    assert out.is_file()


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every command and subcommand below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_the_groups_register_every_command_in_the_documented_order_each_with_a_body(capsys):
    parser = build_parser()
    top = [path[0] for path, _ in _commands(parser) if len(path) == 1]
    assert top == [
        "info", "demo", "memory", "serve", "datastore", "models", "weights", "segment", "evaluate", "challenge-predict",
        "export", "train", "distill",
    ]  # fmt: skip
    commands = dict(_commands(parser))
    nested = {path[:-1] for path in commands if len(path) > 1}
    for path, sub in commands.items():
        if path in nested:
            continue  # `memory`, `weights`, `datastore`: their subcommands run
        assert callable(sub.get_default("func")), path
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: volsam {' '.join(path)} ")
