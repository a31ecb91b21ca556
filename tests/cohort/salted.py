"""An archive salted with bad inputs (issue 18: each becomes one clear error row, the rest finish).

:func:`build_salted_archive` writes, under a folder, two good scans (small real CTs) and
:data:`N_BAD` bad ones, each named after what is wrong with it.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _image(array: np.ndarray, spacing=(2.0, 2.0, 2.0), direction=None, pixel=None) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        if direction is not None:
            img.SetDirection(direction)
    return img if pixel is None else sitk.Cast(img, pixel)


def _ct(rng: np.random.Generator, shape=(20, 24, 24)) -> np.ndarray:
    return rng.integers(-1000, 1500, size=shape).astype(np.int16)


def _nifti_header_claiming(dims: tuple[int, int, int]) -> bytes:
    """A 352-byte NIfTI-1 header for an int16 volume of ``dims`` (x, y, z), no voxel data."""
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", h, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)  # vox_offset
    h[344:348] = b"n+1\0"
    return bytes(h) + b"\0" * 4


def build_salted_archive(root: Path, good: list[Path], dicom_series: Path) -> dict[str, str]:
    """Writes the archive; returns ``{relative path: why it is bad}`` for the bad inputs."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(good):
        shutil.copyfile(src, root / f"good_{i}.nii.gz")
    bad: dict[str, str] = {}

    def write(name: str, why: str, image: sitk.Image | None = None, data: bytes | None = None) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if image is not None:
            sitk.WriteImage(image, str(path))
        elif data is not None:
            path.write_bytes(data)
        bad[name] = why
        return path

    good_bytes = good[0].read_bytes()
    write("truncated.nii.gz", "truncated gzip", data=good_bytes[: len(good_bytes) // 3])
    write("truncated_header.nii.gz", "gzip cut inside the header", data=good_bytes[:200])
    write("wrong_magic.nii.gz", "not gzip", data=b"PK\x03\x04" + rng.bytes(5000))
    write("wrong_magic.nii", "random bytes", data=rng.bytes(4000))
    write("text.nii", "a text file", data=b"this is not an image\n" * 50)
    write("gzipped_text.nii.gz", "gzip of text", data=gzip.compress(b"hello\n" * 100))
    write("zero_bytes.nii.gz", "zero-byte file", data=b"")
    write("zero_bytes.mha", "zero-byte file", data=b"")
    write("zero_bytes.nrrd", "zero-byte file", data=b"")
    write("flat_2d.nii.gz", "2D image", _image(_ct(rng, (24, 24))))
    write("single_slice.nii.gz", "one slice", _image(_ct(rng, (1, 24, 24))))
    write("single_voxel.nii.gz", "one voxel", _image(_ct(rng, (1, 1, 1))))
    img4 = sitk.JoinSeries([_image(_ct(rng)), _image(_ct(rng))])
    write("four_d.nii.gz", "4D image", img4)
    write("constant.nii.gz", "constant image", _image(np.full((20, 24, 24), -1000, np.int16)))
    write("constant_zero.mha", "constant image", _image(np.zeros((20, 24, 24), np.float32)))
    nan = _ct(rng).astype(np.float32)
    nan[5, 5, 5] = np.nan
    write("nan_voxels.mha", "NaN voxels", _image(nan))
    inf = _ct(rng).astype(np.float32)
    inf[3, 3, 3] = np.inf
    write("inf_voxels.mha", "inf voxels", _image(inf))
    all_nan = np.full((20, 24, 24), np.nan, np.float32)
    write("all_nan.nrrd", "all NaN", _image(all_nan))
    write("absurd_spacing_huge.nii.gz", "1e6 mm voxels", _image(_ct(rng), spacing=(1e6, 1e6, 1e6)))
    write("absurd_spacing_tiny.nii.gz", "1e-6 mm voxels", _image(_ct(rng), spacing=(1e-6, 1e-6, 1e-6)))
    write("non_orthonormal.nrrd", "sheared direction", _image(_ct(rng), direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1)))
    write("degenerate_direction.mha", "singular direction",
          data=b"ObjectType = Image\nNDims = 3\nTransformMatrix = 1 0 0 1 0 0 0 0 1\nDimSize = 24 24 20\n"
               b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + _ct(rng).tobytes())
    rgb = sitk.Compose(*[_image(_ct(rng)) for _ in range(3)])
    write("rgb_vector.mha", "3-component vector image", rgb)
    write("complex.mha", "complex voxels", sitk.RealAndImaginaryToComplex(_image(_ct(rng).astype(np.float32)),
                                                                          _image(_ct(rng).astype(np.float32))))
    write("huge_header_claim.nii", "header claims a 10 GB volume", data=_nifti_header_claiming((2048, 2048, 1200)))
    write("missing_raw.mhd", "header without its data file",
          data=b"ObjectType = Image\nNDims = 3\nDimSize = 20 24 24\nElementType = MET_SHORT\nElementDataFile = gone.raw\n")
    short = root / "short_raw.raw"
    short.write_bytes(b"\0" * 100)
    write("short_raw.mhd", "data file too short",
          data=b"ObjectType = Image\nNDims = 3\nDimSize = 20 24 24\nElementType = MET_SHORT\nElementDataFile = short_raw.raw\n")
    (root / "a_folder.nii.gz").mkdir()  # not a scan: discovery must skip it, not fail
    (root / "a_folder.nii.gz" / "readme.txt").write_text("a folder named like an image")
    loop = root / "loop"  # a directory symlink loop: discovery must not hang
    loop.mkdir()
    (loop / "self").symlink_to(loop, target_is_directory=True)
    (root / "cycle_a.nii.gz").symlink_to(root / "cycle_b.nii.gz")
    (root / "cycle_b.nii.gz").symlink_to(root / "cycle_a.nii.gz")
    bad["cycle_a.nii.gz"] = bad["cycle_b.nii.gz"] = "symlink loop"
    (root / "dangling.nii.gz").symlink_to(root / "nowhere.nii.gz")
    bad["dangling.nii.gz"] = "dangling symlink"
    files = sorted(dicom_series.iterdir())
    missing = root / "dicom_missing_slice"
    missing.mkdir()
    for i, f in enumerate(files):
        if i != len(files) // 2:
            shutil.copyfile(f, missing / f.name)
    bad["dicom_missing_slice"] = "DICOM series with a missing slice"
    zero_dicom = root / "dicom_zero_byte"
    zero_dicom.mkdir()
    (zero_dicom / "slice1.dcm").write_bytes(b"")
    (zero_dicom / "slice2.dcm").write_bytes(b"")
    bad["dicom_zero_byte"] = "DICOM folder of zero-byte files"
    return bad
