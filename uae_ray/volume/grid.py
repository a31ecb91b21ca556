"""Image geometry (:class:`Grid`), the model grid and resampling onto a grid.

Conventions (see ``docs/architecture.md``):

* World points are ITK / SimpleITK physical points (LPS, mm), arrays of shape (N, 3) in x, y, z
  order.
* Voxel indices handled by :class:`Grid` are *continuous* indices in x, y, z order (ITK order);
  integer values are voxel centres.
* numpy volumes taken from SimpleITK are z, y, x.

The mapping between the two is ITK's::

    world = origin + D @ (spacing * index)          (D = 3x3 direction matrix, row-major)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _as_points(pts: np.ndarray | list | tuple) -> np.ndarray:
    """Return ``pts`` as a float64 array of shape (N, 3); a single point (3,) becomes (1, 3)."""
    arr = np.asarray(pts, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3) in x, y, z order; got {arr.shape}")
    return arr


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image (no pixel data).

    Attributes:
        origin: World position (mm, LPS) of the centre of voxel (0, 0, 0); x, y, z.
        spacing: Voxel size in mm along the image axes; x, y, z.
        direction: 9 values, row-major 3x3 direction matrix, exactly as ``GetDirection()``;
            column j is the world direction of image axis j.
        size: Number of voxels along x, y, z.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.origin) != 3 or len(self.spacing) != 3 or len(self.size) != 3:
            raise ValueError("Grid origin, spacing and size need 3 values (x, y, z)")
        if len(self.direction) != 9:
            raise ValueError(f"Grid direction needs 9 values; got {len(self.direction)}")
        if any(not (s > 0.0) for s in self.spacing):
            raise ValueError(f"Grid spacing must be positive; got {self.spacing}")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """Geometry of a 3D SimpleITK image.

        Args:
            image: A 3D ``sitk.Image``.

        Returns:
            Its :class:`Grid`.
        """
        if image.GetDimension() != 3:
            raise ValueError(f"Grid needs a 3D image; got {image.GetDimension()}D")
        return cls(
            origin=image.GetOrigin(),
            spacing=image.GetSpacing(),
            direction=image.GetDirection(),
            size=image.GetSize(),
        )

    # -- matrices -------------------------------------------------------------------------------

    @cached_property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix D (float64)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @cached_property
    def index_to_world_matrix(self) -> np.ndarray:
        """3x3 matrix M = D @ diag(spacing), so that ``world = origin + M @ index``."""
        return self.direction_matrix * np.asarray(self.spacing)[None, :]

    @cached_property
    def world_to_index_matrix(self) -> np.ndarray:
        """Inverse of :attr:`index_to_world_matrix` (works for any invertible direction)."""
        return np.linalg.inv(self.index_to_world_matrix)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of a numpy array holding this grid's voxels, (Z, Y, X)."""
        return (self.size[2], self.size[1], self.size[0])

    # -- mapping -------------------------------------------------------------------------------

    def index_to_world(self, idx: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices to world points.

        Args:
            idx: (N, 3) continuous indices in x, y, z order (a single (3,) index is accepted).

        Returns:
            (N, 3) float64 world points (LPS, mm), x, y, z.
        """
        ijk = _as_points(idx)
        return np.asarray(self.origin) + ijk @ self.index_to_world_matrix.T

    def world_to_index(self, pts: np.ndarray) -> np.ndarray:
        """Map world points to continuous voxel indices (exact inverse of :meth:`index_to_world`).

        Args:
            pts: (N, 3) world points (LPS, mm), x, y, z (a single (3,) point is accepted).

        Returns:
            (N, 3) float64 continuous indices in x, y, z order (not rounded, not clipped).
        """
        xyz = _as_points(pts)
        return (xyz - np.asarray(self.origin)) @ self.world_to_index_matrix.T

    def contains(self, pts: np.ndarray, margin_vox: float = 0.0) -> np.ndarray:
        """Which world points lie inside the image.

        The image occupies the continuous-index box ``[-0.5, size - 0.5]`` per axis (voxel faces,
        as ITK's ``IsInside``). ``margin_vox`` grows that box by this many voxels on every side;
        a negative margin shrinks it (e.g. ``-2.0``: at least 2 voxels away from the faces).

        Args:
            pts: (N, 3) world points (LPS, mm), x, y, z.
            margin_vox: Margin in voxels (may be negative).

        Returns:
            (N,) bool array.
        """
        idx = self.world_to_index(pts)
        lo = -0.5 - margin_vox
        hi = np.asarray(self.size, dtype=np.float64) - 0.5 + margin_vox
        return np.all((idx >= lo) & (idx <= hi), axis=1)

    def corners_world(self) -> np.ndarray:
        """World positions of the 8 corner voxel *centres*, (8, 3) x, y, z."""
        hi = np.asarray(self.size, dtype=np.float64) - 1.0
        corners = np.array(
            [[i, j, k] for i in (0.0, hi[0]) for j in (0.0, hi[1]) for k in (0.0, hi[2])]
        )
        return self.index_to_world(corners)

    # -- SimpleITK ------------------------------------------------------------------------------

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """A zero-filled SimpleITK image with this geometry (used as a resampling reference).

        Args:
            pixel_type: SimpleITK pixel id of the new image.

        Returns:
            ``sitk.Image`` of size ``self.size`` (x, y, z) with this origin/spacing/direction.
        """
        image = sitk.Image(list(self.size), pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this grid's origin, spacing and direction on ``image`` (in place; returned).

        Args:
            image: 3D image whose size (x, y, z) equals ``self.size``.
        """
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} != grid size {self.size}")
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array_zyx: np.ndarray) -> sitk.Image:
        """Wrap a (Z, Y, X) numpy array as a SimpleITK image on this grid.

        Args:
            array_zyx: Array of shape ``self.shape_zyx`` (z, y, x order).

        Returns:
            ``sitk.Image`` (x, y, z size = ``self.size``) with this geometry; pixel type from the
            array dtype.
        """
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise ValueError(
                f"array shape {array_zyx.shape} != grid shape (z,y,x) {self.shape_zyx}"
            )
        return self.apply_to(sitk.GetImageFromArray(array_zyx))


def model_grid(image: sitk.Image | Grid, spacing_mm: float = 2.0, pad_multiple: int = 16) -> Grid:
    """The isotropic, LPS-aligned grid on which the network sees an image.

    The grid has identity direction, isotropic ``spacing_mm`` and its origin at the low corner of
    the world bounding box of the image's voxel-centre extent (all 8 corner voxel centres mapped
    through the direction matrix, so oblique / RAS-stored images are covered too). Along each axis
    the size is the smallest number of voxels whose centres span that box, rounded UP to a
    multiple of ``pad_multiple``; the extra voxels are added at the high end of the axis.

    Args:
        image: The image (or its :class:`Grid`).
        spacing_mm: Isotropic voxel size of the model grid, mm.
        pad_multiple: Each size (x, y, z) is a multiple of this (1 = no padding).

    Returns:
        The model :class:`Grid`.
    """
    if spacing_mm <= 0 or pad_multiple < 1:
        raise ValueError(
            f"need spacing_mm > 0 and pad_multiple >= 1; got {spacing_mm}, {pad_multiple}"
        )
    src = image if isinstance(image, Grid) else Grid.from_image(image)
    corners = src.corners_world()
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = []
    for extent in hi - lo:
        # tolerance so that an extent that is an exact multiple of the spacing is not rounded up
        n = int(math.ceil(extent / spacing_mm - 1e-6)) + 1
        size.append(int(math.ceil(n / pad_multiple)) * pad_multiple)
    return Grid(
        origin=tuple(lo), spacing=(spacing_mm,) * 3, direction=_IDENTITY_DIRECTION, size=tuple(size)
    )


_NEAREST_LIKE = {sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian}


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    output_pixel_type: int | None = None,
    transform: sitk.Transform | None = None,
) -> sitk.Image:
    """Resample an image onto ``grid`` (by default the identity transform: same world space).

    Args:
        image: 3D image.
        grid: Target geometry.
        interpolator: SimpleITK interpolator id (``sitk.sitkLinear``, ``sitk.sitkNearestNeighbor``
            for label maps, ...).
        default_value: Value of target voxels that fall outside the image (may be ``nan`` for a
            float output).
        output_pixel_type: SimpleITK pixel id of the result. Default: the input's pixel type for
            nearest-neighbour / label interpolators, ``sitk.sitkFloat32`` otherwise (so linear
            interpolation of an int16 CT is not truncated).
        transform: Maps ``grid`` points to ``image`` points (ITK's resampling convention).

    Returns:
        A new ``sitk.Image`` with ``grid``'s geometry.
    """
    if output_pixel_type is None:
        output_pixel_type = (
            image.GetPixelID() if interpolator in _NEAREST_LIKE else sitk.sitkFloat32
        )
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in grid.size])
    f.SetOutputOrigin(grid.origin)
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputDirection(grid.direction)
    f.SetTransform(transform if transform is not None else sitk.Transform())
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(output_pixel_type)
    return f.Execute(image)
