"""Request and response bodies of the REST API (:mod:`volsam.serve.app`), as pydantic models."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "BoxRequest",
    "ClickRequest",
    "LassoRequest",
    "ObjectEntry",
    "ObjectList",
    "PaintRequest",
    "PathRequest",
    "PromptResult",
    "ScribbleRequest",
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
