"""Request and response bodies of the REST API (:mod:`volsam.serve.app`), as pydantic models."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "BoxRequest",
    "ClickRequest",
    "DatastoreImage",
    "DatastoreImages",
    "DatastoreSession",
    "LassoRequest",
    "ObjectEntry",
    "ObjectList",
    "OpenRequest",
    "PaintRequest",
    "PathRequest",
    "PromptResult",
    "SaveRequest",
    "SaveResult",
    "ScribbleRequest",
    "SessionBinding",
    "SessionInfo",
    "SessionState",
]


class PathRequest(BaseModel):
    """Create a session from a file under the server's data root."""

    path: str = Field(description="path relative to --data-root, e.g. case01/ct.nii.gz")


class ClickRequest(BaseModel):
    point: tuple[float, float, float] = Field(description="voxel (i, j, k), or mm RAS+ with world=true")
    positive: bool = True
    world: bool = False


class BoxRequest(BaseModel):
    lo: tuple[float, float, float] = Field(description="one corner, voxel (i, j, k) or mm RAS+ with world=true")
    hi: tuple[float, float, float] = Field(description="the opposite corner")
    world: bool = False


class ScribbleRequest(BaseModel):
    points: list[tuple[float, float, float]] = Field(
        min_length=1, max_length=1 << 20, description="the stroke's voxels (i, j, k), or mm RAS+ with world=true"
    )
    positive: bool = True
    world: bool = False


class LassoRequest(BaseModel):
    polygon: list[tuple[float, float]] = Field(
        min_length=3,
        max_length=1 << 16,
        description="closed polygon on the slice: voxel coordinates of the two other axes, in axis order",
    )
    axis: int = Field(ge=0, le=2, description="voxel axis the slice is normal to")
    index: int = Field(description="slice index along axis")
    positive: bool = True


class SessionInfo(BaseModel):
    id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: list[list[float]] = Field(description="4x4 voxel -> mm RAS+")


class SessionState(SessionInfo):
    objects: int
    clicks: int = Field(description="clicks on the current object")


class PromptResult(BaseModel):
    voxels: int = Field(description="voxels of the current object")
    latency_ms: float = Field(description="time spent segmenting (excluding waiting for the session lock)")
    object: int = Field(description="label of the current object")
    clicks: int = Field(description="clicks on the current object")


class PaintRequest(BaseModel):
    points: list[tuple[float, float, float]] = Field(
        min_length=1, max_length=1 << 20, description="the stroke's voxels (i, j, k), or mm RAS+ with world=true"
    )
    erase: bool = Field(False, description="take the voxels out of the current object instead")
    world: bool = False


class ObjectEntry(BaseModel):
    label: int = Field(description="the object's value in the label map")
    voxels: int = Field(description="its visible voxels (after the overlap policy)")
    volume_ml: float
    current: bool = Field(description="prompts and paint edit this object")


class ObjectList(BaseModel):
    current: int = Field(description="label of the current object")
    objects: list[ObjectEntry]


# ----------------------------------------------------------------------------- datastore (routes/datastore.py)


class DatastoreImage(BaseModel):
    id: str = Field(description="local: file name without extension; DICOMweb: SeriesInstanceUID")
    name: str
    status: str = Field(description="none | original | final (a person's label exists)")
    labels: dict[str, int] = Field(description="latest saved version per kind, e.g. {'original': 1, 'final': 3}")
    meta: dict = Field(description="backend details (local: path; DICOMweb: study UID, modality, instances, SEGs)")


class DatastoreImages(BaseModel):
    location: str = Field(description="the datastore's folder or DICOMweb URL (no credentials)")
    backend: str = Field(description="local | dicomweb")
    images: list[DatastoreImage]


class OpenRequest(BaseModel):
    restore: bool = Field(True, description="start from the latest saved final label (its objects as initial masks)")


class DatastoreSession(SessionInfo):
    image_id: str
    version: int | None = Field(description="the final label version the session started from (null: none)")
    objects: int


class SaveRequest(BaseModel):
    kind: str = Field("final", pattern="^(final|original)$", description="final (a person's) or original (model's)")
    force: bool = Field(False, description="save even when someone saved a newer version since (kept, not replaced)")


class SaveResult(BaseModel):
    image_id: str
    kind: str
    version: int
    pushed: bool = Field(description="DICOMweb: the DICOM-SEG reached the PACS; local: false")
    remote: dict[str, str] = Field(description="DICOMweb: seg_series_instance_uid, seg_sop_instance_uid, url")


class SessionBinding(BaseModel):
    image_id: str
    version: int | None = Field(description="the final version this session's next save builds on")
    latest: dict[str, int] = Field(description="latest saved version per kind now")
