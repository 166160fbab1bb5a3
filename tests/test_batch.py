"""Batch prompts: prompts files (JSON, CSV), one label map per image, per-case errors, exit status."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from volsam.batch import read_prompts, run_batch
from volsam.cli import main
from volsam.io import read_image


def _image(path, shift: int) -> None:
    rng = np.random.default_rng(shift)
    data = rng.normal(10, 1, (28, 30, 26)).astype(np.float32)
    data[6 + shift : 16 + shift, 8:20, 6:16] += 100
    nib.save(nib.Nifti1Image(data, np.diag([1.2, 1.0, 1.5, 1.0])), path)


class CountingSession:
    """Records the prompts; the label map paints a voxel per positive click (object n -> value n)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_image(self, image) -> None:
        self.volume = read_image(image)
        self.lm = np.zeros(self.volume.shape, np.uint8)
        self.label = 1
        self.calls.append(("image", str(image)))

    def new_object(self) -> int:
        self.label += 1
        return self.label

    def add_click(self, point, positive=True, world=False):
        self.calls.append(("point" if positive else "negative", tuple(point), self.label))
        if positive:
            self.lm[tuple(int(v) for v in point)] = self.label
        return self.lm == self.label

    def add_box(self, lo, hi, world=False):
        self.calls.append(("box", tuple(lo), tuple(hi), self.label))
        self.lm[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))] = self.label
        return self.lm == self.label

    @property
    def label_map(self):
        return self.lm


def test_json_and_csv_give_the_same_cases_in_order(tmp_path):
    spec = [
        {
            "image": "a.nii.gz",
            "objects": [
                {"label": 6, "box": [1, 2, 3, 4, 5, 6]},
                {"label": 2, "prompts": [{"point": [7, 8, 9]}, {"negative": [7, 8, 10]}], "points": [[1, 1, 1]]},
            ],
        }
    ]
    (tmp_path / "p.json").write_text(json.dumps(spec))
    (tmp_path / "p.csv").write_text(
        "image,label,prompt,i,j,k,i1,j1,k1\n"
        "a.nii.gz,6,box,1,2,3,4,5,6\n"
        "a.nii.gz,2,point,7,8,9,,,\n"
        "a.nii.gz,2,negative,7,8,10,,,\n"
        "a.nii.gz,2,point,1,1,1,,,\n"
    )
    a, b = read_prompts(tmp_path / "p.json"), read_prompts(tmp_path / "p.csv")
    assert a == b
    assert a[0].image == tmp_path / "a.nii.gz"  # relative to the prompts file
    assert [o.label for o in a[0].objects] == [6, 2]
    assert a[0].objects[1].prompts == [("point", (7, 8, 9)), ("negative", (7, 8, 10)), ("point", (1, 1, 1))]


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ('[{"image": "a.nii.gz", "objects": []}]', ".json", "non-empty 'objects'"),
        ('[{"image": "a.nii.gz", "objects": [{"box": [1, 2, 3]}]}]', ".json", "a box needs 6 numbers"),
        ('[{"image": "a.nii.gz", "objects": [{"label": 0, "points": [[1, 2, 3]]}]}]', ".json", "label must be"),
        (
            '[{"image": "a", "objects": [{"label": 1, "points": [[1,1,1]]}, {"label": 1, "points": [[2,2,2]]}]}]',
            ".json",
            "to two objects",
        ),
        ("image,label,prompt,i,j,k\na.nii.gz,1,click,1,2,3\n", ".csv", r"p\.csv:2: prompt must be one of"),
        ("image,label,i,j,k\n", ".csv", "header needs"),
    ],
)
def test_bad_prompts_files_name_the_problem(tmp_path, text, suffix, message):
    (tmp_path / f"p{suffix}").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts(tmp_path / f"p{suffix}")


def test_labels_are_the_files_and_two_images_never_share_an_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _image(tmp_path / "x" / "scan.nii.gz", 0)
    _image(tmp_path / "y" / "scan.nii.gz", 1)
    spec = [
        {"image": f"{d}/scan.nii.gz", "objects": [{"label": 6, "box": [8, 9, 7, 14, 18, 13]}, {"points": [[2, 2, 2]]}]}
        for d in ("x", "y")
    ]
    (tmp_path / "p.json").write_text(json.dumps(spec))
    res = run_batch(read_prompts(tmp_path / "p.json"), CountingSession(), output_dir=tmp_path / "out")
    assert res[0].error is None and res[1].error is not None and "already written" in res[1].error
    lm = np.asarray(nib.load(res[0].output).dataobj)
    assert set(np.unique(lm)) == {0, 2, 6}  # label 6 from the file; the second object's default is its position
    assert res[0].voxels == {6: 7 * 10 * 7, 2: 1}


def test_batch_of_eleven_with_one_bad_file_writes_the_good_ones_and_exits_1(tmp_path, capsys):
    """>= 10 images through the CLI with the shipped model; one file is corrupt."""
    cases = []
    for n in range(10):
        path = tmp_path / f"img{n:02d}.nii.gz"
        _image(path, n % 3)
        cases.append({"image": path.name, "objects": [{"points": [[11 + n % 3, 14, 11]]}]})
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    cases.insert(4, {"image": "broken.nii.gz", "objects": [{"points": [[1, 1, 1]]}]})
    (tmp_path / "prompts.json").write_text(json.dumps(cases))
    out = tmp_path / "masks"
    rc = main(["segment", "--prompts", str(tmp_path / "prompts.json"), "-o", str(out), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "10 of 11 image(s) written, 1 failed" in err
    assert "failed" in err and "broken.nii.gz" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"img{n:02d}_mask.nii.gz" for n in range(10)]
    for n in range(10):  # each label map on its image's grid, with the clicked block found
        img = nib.load(tmp_path / f"img{n:02d}.nii.gz")
        lm = nib.load(out / f"img{n:02d}_mask.nii.gz")
        assert lm.shape == img.shape and np.allclose(lm.affine, img.affine)
        assert np.asarray(lm.dataobj)[11 + n % 3, 14, 11] == 1


def test_segment_refuses_prompts_together_with_an_image(tmp_path, capsys):
    (tmp_path / "p.json").write_text("[]")
    assert main(["segment", "img.nii.gz", "--prompts", str(tmp_path / "p.json")]) == 2
    assert "give no image" in capsys.readouterr().err


@pytest.mark.parametrize("random_weights", [False, True])
def test_segment_batch_passes_random_weights_to_the_model(tmp_path, capsys, random_weights):
    """--random-weights reaches the batch's session as it does a single image's (it was once dropped)."""
    _image(tmp_path / "img.nii.gz", 0)
    (tmp_path / "p.json").write_text(json.dumps([{"image": "img.nii.gz", "objects": [{"points": [[11, 14, 11]]}]}]))
    argv = ["segment", "--prompts", str(tmp_path / "p.json"), "-o", str(tmp_path / "out"), "--no-progress"]
    argv += ["--model", "sam_med3d_mini", "--device", "cpu"] + (["--random-weights"] if random_weights else [])
    rc = main(argv)
    if random_weights:
        assert rc == 0 and (tmp_path / "out" / "img_mask.nii.gz").is_file()
    else:  # an architecture name without weights is refused in one line
        assert rc == 2 and "--random-weights" in capsys.readouterr().err
