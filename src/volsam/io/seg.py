"""DICOM-SEG output (highdicom) for a mask on a DICOM series reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volsam.io.volume import Volume


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("volsam")
    except PackageNotFoundError:
        return "unknown"


def _write_dicom_seg(data: np.ndarray, reference: Volume, tmp: Path) -> None:
    """DICOM-SEG with one BINARY segment per nonzero label; frame k is source file ``dicom_files[k]``."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = list(reference.meta["dicom_files"])
    if len(files) != reference.shape[2]:
        raise ValueError(f"DICOM reference lists {len(files)} files for {reference.shape[2]} slices; cannot map frames")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    frames = data.transpose(2, 1, 0)  # (slice k, row j, column i)
    labels = [int(v) for v in np.unique(frames) if v != 0]
    version = _software_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volsam", family=codes.cid7162.ArtificialIntelligence, version=version
    )

    def describe(number: int, label: str) -> hd.seg.SegmentDescription:
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )

    if labels:
        # Segment numbers must run 1..N; label value v becomes segment labels.index(v) + 1.
        lut = np.zeros(max(labels) + 1, dtype=np.uint16)
        lut[labels] = np.arange(1, len(labels) + 1)
        pixels = lut[frames]
        if len(labels) < 256:
            pixels = pixels.astype(np.uint8)
        descriptions = [describe(n, f"label {v}") for n, v in enumerate(labels, start=1)]
    else:
        pixels = np.zeros(frames.shape, dtype=np.bool_)
        descriptions = [describe(1, "label 1")]
    series_number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="volsam",
        manufacturer_model_name="volsam",
        software_versions=version,
        device_serial_number="0",
        content_label="VOLSAM",
        content_description="volsam promptable segmentation",
        omit_empty_frames=bool(labels),
    )
    seg.save_as(tmp)
