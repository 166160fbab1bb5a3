"""Reading and writing image files; the only package of volsam that touches image files.

Arrays and affines follow the coordinate convention of :mod:`volsam.transforms`: arrays in file voxel
order (X, Y, Z), affines voxel -> world mm RAS+. Supported inputs: NIfTI (``.nii``, ``.nii.gz``) via
nibabel; NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) via SimpleITK; a DICOM series
as a directory (or one of its files) via SimpleITK's ``ImageSeriesReader``. Masks are written as label
maps on exactly the reference grid in the format named by the output extension, or as DICOM-SEG
(``.dcm``, via highdicom) for a DICOM reference. ITK/DICOM world coordinates are LPS; they are converted
to and from RAS+ here.

One module per format (:mod:`~volsam.io.nifti`, :mod:`~volsam.io.itk`, :mod:`~volsam.io.dicom`,
:mod:`~volsam.io.seg`), the checks made on a header before any voxel is read (:mod:`~volsam.io.guards`),
and the entry points (:mod:`~volsam.io.read`, :mod:`~volsam.io.write`) over a shared
:mod:`~volsam.io.volume`. Import the public names from here.
"""

from volsam.io.guards import DEFAULT_MAX_VOXELS, MAX_HEADER_BYTES, MAX_META_DIMS, DataFilePolicy
from volsam.io.nifti import nifti_bytes
from volsam.io.read import image_info, read_header, read_image
from volsam.io.volume import FORMATS, DetachedDataError, ImageHeader, ImageReadError, Volume, volume_from_array
from volsam.io.write import check_output_path, default_output_path, write_image, write_mask

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "FORMATS",
    "MAX_HEADER_BYTES",
    "MAX_META_DIMS",
    "DataFilePolicy",
    "DetachedDataError",
    "ImageHeader",
    "ImageReadError",
    "Volume",
    "check_output_path",
    "default_output_path",
    "image_info",
    "nifti_bytes",
    "read_header",
    "read_image",
    "volume_from_array",
    "write_image",
    "write_mask",
]
