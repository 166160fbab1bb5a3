"""What a REST session gives back: its label map as a file (``/labels``) or raw overlay bytes
(``/overlay``), and its image (``/image``, what the viewer displays)."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from volsam.io import nifti_bytes
from volsam.serve.routes.prompts import prompting
from volsam.serve.state import State, check_token

router = APIRouter(dependencies=[Depends(check_token)])

_OWN_FORMAT = {"nifti": "nii.gz", "nrrd": "nrrd", "mha": "mha", "mhd": "mha", "dicom": "dcm"}
"""Label-file format ``GET /sessions/{id}/labels?format=auto`` gives for each input format."""


@router.get(
    "/sessions/{sid}/labels",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "label map file"}},
)
def labels(sid: str, srv: State, format: Literal["auto", "nii.gz", "nrrd", "mha", "dcm"] = "auto") -> Response:
    """The label map (object n has label n) as a file on the image's grid; ``auto``: the image's own
    format (NIfTI, NRRD, MHA, or DICOM-SEG for a DICOM series)."""
    with prompting(srv, sid) as s:
        if format == "auto":
            format = _OWN_FORMAT.get(s.volume.format, "nii.gz")
        if format == "dcm" and s.volume.format != "dicom":
            raise HTTPException(400, f"DICOM-SEG needs a DICOM series; this image is {s.volume.format}")
        tmpdir = tempfile.mkdtemp(prefix="volsam-labels-")
        try:
            data = s.save(Path(tmpdir) / f"labels.{format}").read_bytes()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="labels.{format}"'},
    )


@router.get(
    "/sessions/{sid}/overlay",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "gzip of the raw label map"}},
)
def overlay(sid: str, srv: State, order: Literal["C", "F"] = "C") -> Response:
    """Label map as gzip-compressed raw bytes of the (X, Y, Z) array in C order (k fastest) or F order
    (i fastest, NIfTI's voxel order); see X-Shape, X-Dtype, X-Order."""
    with prompting(srv, sid) as s:
        lm = s.label_map
        data = gzip.compress(lm.tobytes(order=order), compresslevel=1)
    return Response(
        data,
        media_type="application/gzip",
        headers={"X-Shape": ",".join(map(str, lm.shape)), "X-Dtype": str(lm.dtype), "X-Order": order},
    )


@router.get(
    "/sessions/{sid}/image",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "the image as .nii.gz"}},
)
def image(sid: str, srv: State) -> Response:
    """The session's image as a gzip-compressed NIfTI-1 file (what the viewer displays)."""
    with srv.store.use(sid) as s:
        vol = s.volume
    return Response(
        nifti_bytes(vol.array, vol),
        media_type="application/gzip",
        headers={"Content-Disposition": 'attachment; filename="image.nii.gz"'},
    )
