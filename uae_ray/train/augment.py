"""Random affine views and intensity augmentation for self-supervised training.

Geometry convention: a view is a crop of shape (D, H, W) (z, y, x) resampled from a prepared
volume (Z, Y, X) on the 2 mm model grid. Voxel coordinates are continuous indices in x, y, z
order. A view voxel ``u`` maps to the volume voxel ``p = centre + M @ (u - c_view)`` where
``c_view = (size - 1) / 2``; because the model grid is isotropic, ``p * spacing`` differences
are millimetres, so the correspondence between two views of the same volume is known
analytically: ``u_b = view_b.from_volume(view_a.to_volume(u_a))``.

Every geometric augmentation (crop position and offset between the views, per-axis scale,
rotation; there are no flips) is part of the view's :class:`ViewGeometry`, so a label map
follows the image exactly through :func:`extract_labels`; the intensity transforms below change
no geometry.

Modality augmentation (UAE): :class:`RandomModalityShift` inverts and/or monotonically remaps the
body intensities of a view so that CT views look MR-like; air and padding stay at -1.

Randomness: each transform owns an ``np.random.Generator`` (``self.R``), seeded via
``set_random_state`` (MONAI style); no global RNG state is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from uae_ray.volume.rotation import rotation_matrix


class Randomizable:
    """Base class that owns a per-instance random generator ``self.R``."""

    def __init__(self, seed: int | None = None) -> None:
        self.R = np.random.default_rng(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.Generator | None = None) -> "Randomizable":
        """Reseed (``seed``) or replace (``state``) the generator; returns ``self``."""
        self.R = state if state is not None else np.random.default_rng(seed)
        return self


@dataclass(frozen=True)
class ViewGeometry:
    """Affine map between a view's voxels and its source volume's voxels.

    Attributes:
        matrix: (3, 3) map of view-voxel offsets to volume-voxel offsets (x, y, z).
        centre: (3,) volume voxel (x, y, z, continuous) at the view's centre.
        size: View size (D, H, W) = (z, y, x).
    """

    matrix: np.ndarray
    centre: np.ndarray
    size: tuple[int, int, int]

    @property
    def view_centre(self) -> np.ndarray:
        """Continuous index (x, y, z) of the view's centre voxel."""
        return (np.array(self.size[::-1], dtype=np.float64) - 1.0) / 2.0

    def to_volume(self, u: np.ndarray) -> np.ndarray:
        """View voxels (N, 3) xyz -> volume voxels (N, 3) xyz."""
        return (np.asarray(u, dtype=np.float64) - self.view_centre) @ self.matrix.T + self.centre

    def from_volume(self, p: np.ndarray) -> np.ndarray:
        """Volume voxels (N, 3) xyz -> view voxels (N, 3) xyz."""
        return (np.asarray(p, dtype=np.float64) - self.centre) @ np.linalg.inv(self.matrix).T + self.view_centre

    def translated(self, offset_vox: np.ndarray) -> "ViewGeometry":
        """The same view expressed in a volume frame shifted by ``offset_vox``.

        If voxel ``p`` of this view's volume is voxel ``p + offset_vox`` of another volume with
        the same axes and spacing (e.g. two identity-direction 2 mm model grids whose origins
        differ), the returned geometry samples the *same world points* from that other volume.
        """
        return ViewGeometry(self.matrix, self.centre + np.asarray(offset_vox, dtype=np.float64), self.size)

    def to_volume_torch(self, u: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`to_volume` for a float tensor (..., 3)."""
        m = torch.as_tensor(self.matrix, dtype=u.dtype)
        vc = torch.as_tensor(self.view_centre, dtype=u.dtype)
        c = torch.as_tensor(self.centre, dtype=u.dtype)
        return (u - vc) @ m.T + c

    def from_volume_torch(self, p: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`from_volume` for a float tensor (..., 3)."""
        minv = torch.as_tensor(np.linalg.inv(self.matrix), dtype=p.dtype)
        vc = torch.as_tensor(self.view_centre, dtype=p.dtype)
        c = torch.as_tensor(self.centre, dtype=p.dtype)
        return (p - c) @ minv.T + vc


def voxel_grid(size: tuple[int, int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Continuous indices of every voxel of a (D, H, W) block, shape (D, H, W, 3) in x, y, z order."""
    z, y, x = (torch.arange(n, dtype=dtype) for n in size)
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def sample_at(volume: torch.Tensor, points_xyz: torch.Tensor, pad_value: float = 0.0, mode: str = "bilinear") -> torch.Tensor:
    """Interpolate a (C, Z, Y, X) tensor at continuous voxel positions.

    Args:
        volume: Tensor (C, Z, Y, X).
        points_xyz: Tensor (..., 3) of continuous indices in x, y, z order.
        pad_value: Value outside the volume.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.

    Returns:
        Tensor (C, ...) of interpolated values.
    """
    c = volume.shape[0]
    lead = points_xyz.shape[:-1]
    # Only the block the points touch (their floor/ceil neighbours) is interpolated: a view of a
    # large volume does not copy the whole volume. Positions shift with the block's corner.
    flat = points_xyz.reshape(-1, 3)
    full = torch.tensor(volume.shape[1:][::-1], device=points_xyz.device)  # X, Y, Z
    if flat.numel():
        lo = torch.clamp(torch.floor(flat.min(dim=0).values).long(), min=0)
        hi = torch.minimum(torch.ceil(flat.max(dim=0).values).long() + 1, full)
        lo = torch.minimum(lo, (hi - 1).clamp(min=0))
    else:
        lo, hi = torch.zeros(3, dtype=torch.long), full
    (x0, y0, z0), (x1, y1, z1) = lo.tolist(), hi.tolist()
    block = volume[:, z0:z1, y0:y1, x0:x1]
    sizes = torch.tensor(block.shape[1:][::-1], dtype=points_xyz.dtype, device=points_xyz.device)
    norm = 2.0 * (flat - lo.to(flat.dtype)) / (sizes - 1).clamp(min=1) - 1.0
    grid = norm.reshape(1, 1, 1, -1, 3).to(volume.dtype)
    out = F.grid_sample((block - pad_value)[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(c, *lead) + pad_value


class RandomAffineView(Randomizable):
    """Draw pairs of overlapping random affine views of a volume.

    Args:
        size: View size (D, H, W) (z, y, x) in voxels of the source grid.
        max_rotation_deg: Per-view rotation about each axis, uniform in +-this.
        scale_range: Per-view, per-axis scale (view voxel size / source voxel size).
        max_offset_vox: The second view's centre is the first's plus a uniform offset in
            +-this (voxels, per axis).
        seed: RNG seed.
    """

    def __init__(
        self,
        size: tuple[int, int, int] = (64, 64, 64),
        max_rotation_deg: float = 12.0,
        scale_range: tuple[float, float] = (0.85, 1.15),
        max_offset_vox: float = 16.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.size = tuple(int(s) for s in size)
        self.max_rotation_deg = max_rotation_deg
        self.scale_range = scale_range
        self.max_offset_vox = max_offset_vox

    def _matrix(self) -> np.ndarray:
        angles = np.deg2rad(self.R.uniform(-self.max_rotation_deg, self.max_rotation_deg, 3))
        scales = self.R.uniform(*self.scale_range, 3)
        return rotation_matrix(angles) @ np.diag(scales)

    def __call__(self, centre_xyz: np.ndarray) -> tuple[ViewGeometry, ViewGeometry]:
        """Two views around ``centre_xyz`` (volume voxel, x, y, z)."""
        c = np.asarray(centre_xyz, dtype=np.float64)
        a = ViewGeometry(self._matrix(), c, self.size)
        off = self.R.uniform(-self.max_offset_vox, self.max_offset_vox, 3)
        b = ViewGeometry(self._matrix(), c + off, self.size)
        return a, b


def extract_view(volume: torch.Tensor, view: ViewGeometry, pad_value: float = -1.0) -> torch.Tensor:
    """Resample a view from a volume (trilinear).

    Args:
        volume: Tensor (C, Z, Y, X) (e.g. intensity and validity channels).
        view: The view geometry.
        pad_value: Value outside the volume (-1 = air for normalised intensities).

    Returns:
        Tensor (C, D, H, W).
    """
    pts = view.to_volume_torch(voxel_grid(view.size, torch.float32))
    return sample_at(volume, pts, pad_value=pad_value)


def extract_labels(labels: torch.Tensor, view: ViewGeometry, stride: tuple[int, int, int] = (1, 1, 1)) -> torch.Tensor:
    """Resample a label map with a view's geometry (nearest neighbour), optionally strided.

    The same spatial transform as :func:`extract_view` (every geometric augmentation of a view
    lives in its :class:`ViewGeometry`: crop centre and offset, per-axis scale, rotation), so
    view voxel ``u`` gets the label of the volume voxel nearest to ``view.to_volume(u)``.

    Args:
        labels: (Z, Y, X) integer label map on the volume's grid.
        view: The view geometry.
        stride: (z, y, x) subsampling: output voxel ``i`` is view voxel ``stride * i`` (e.g.
            the local map's stride, so the labels sit on the map's grid).

    Returns:
        (ceil(D/sz), ceil(H/sy), ceil(W/sx)) tensor of ``labels.dtype``; 0 outside the volume.
    """
    shape = tuple(-(-n // s) for n, s in zip(view.size, stride))
    step = torch.tensor(stride[::-1], dtype=torch.float64)
    pts = view.to_volume_torch(step * voxel_grid(shape, torch.float64))  # type: ignore[arg-type]
    idx = torch.round(pts).long()  # (..., 3) x, y, z
    size = torch.tensor(labels.shape[::-1])
    inside = ((idx >= 0) & (idx < size)).all(dim=-1)
    out = torch.zeros(shape, dtype=labels.dtype)
    sel = idx[inside]
    out[inside] = labels[sel[:, 2], sel[:, 1], sel[:, 0]]
    return out


class RandomIntensity(Randomizable):
    """Random intensity change of a normalised view (air stays at -1 before noise).

    ``x' = -1 + a * (x + 1) + b`` with ``a`` in ``scale_range``, ``b`` in ``+-max_shift``; then a
    Gaussian blur (probability ``blur_prob``, sigma uniform in ``(0, max_blur_vox)``) and
    additive Gaussian noise (sigma uniform in ``(0, max_noise)``). Units: normalised intensity
    (1 unit ~ 2048 HU for CT).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.9, 1.1),
        max_shift: float = 0.03,
        max_noise: float = 0.015,
        blur_prob: float = 0.3,
        max_blur_vox: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.scale_range = scale_range
        self.max_shift = max_shift
        self.max_noise = max_noise
        self.blur_prob = blur_prob
        self.max_blur_vox = max_blur_vox

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a (1, D, H, W) or (D, H, W) tensor; returns the same shape."""
        a = self.R.uniform(*self.scale_range)
        b = self.R.uniform(-self.max_shift, self.max_shift)
        y = -1.0 + a * (x + 1.0) + b
        if self.R.random() < self.blur_prob:
            y = gaussian_blur(y, float(self.R.uniform(0.3, self.max_blur_vox)))
        sigma = self.R.uniform(0.0, self.max_noise)
        gen = torch.Generator().manual_seed(int(self.R.integers(2**62)))
        return y + sigma * torch.randn(y.shape, generator=gen, dtype=y.dtype)


def gaussian_blur(x: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of a (D, H, W) or (C, D, H, W) tensor (replicate padding)."""
    r = max(1, int(np.ceil(3 * sigma_vox)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    k = k / k.sum()
    squeeze = x.ndim == 3
    y = x[None, None] if squeeze else x[:, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = r
        pad[2 * (2 - dim) + 1] = r
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.reshape(shape))
    return y[0, 0] if squeeze else y[:, 0]


def piecewise_linear(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Evaluate the piecewise-linear map through ``(knots_x, knots_y)`` (clamped outside).

    Args:
        x: Tensor of any shape.
        knots_x: (K,) strictly increasing abscissae.
        knots_y: (K,) ordinates.

    Returns:
        Tensor like ``x``.
    """
    kx, ky = knots_x.to(x.dtype), knots_y.to(x.dtype)
    xc = x.clamp(float(kx[0]), float(kx[-1]))
    i = torch.bucketize(xc, kx[1:-1])  # segment index 0 .. K-2
    x0, x1, y0, y1 = kx[i], kx[i + 1], ky[i], ky[i + 1]
    return y0 + (xc - x0) * (y1 - y0) / (x1 - x0)


class RandomModalityShift(Randomizable):
    """UAE-style modality augmentation of a normalised view (makes CT views look MR-like).

    With probability ``prob`` the body voxels ``x`` (normalised scale, [-1, 1]) are

    1. remapped by a random monotone (increasing) piecewise-linear histogram shift ``h`` of
       [-1, 1] onto itself: ``segments`` equal-width input segments whose output lengths are
       proportional to ``U(1 - strength, 1 + strength)`` draws (``strength`` in [0, 1); 0 gives
       the identity), endpoints fixed (``h(-1) = -1``, ``h(1) = 1``);
    2. then inverted, ``x -> -x``, with probability ``invert_prob``.

    Voxels outside the body (air, background, padding outside the field of view) keep their
    value, so air / padding stay at -1 and the validity channel stays meaningful. Otherwise the
    input is returned unchanged. Units: normalised intensity.

    Args:
        prob: Probability that a call changes the view.
        invert_prob: Probability of the inversion, given that the view is changed.
        strength: Histogram-shift strength in [0, 1).
        segments: Number of linear pieces of the histogram shift.
        body_level: Default body threshold when no body mask is passed (CT: about -0.939).
        seed: RNG seed.
    """

    def __init__(
        self,
        prob: float = 0.5,
        invert_prob: float = 0.5,
        strength: float = 0.6,
        segments: int = 4,
        body_level: float = -0.9,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"strength must be in [0, 1); got {strength}")
        if segments < 1:
            raise ValueError(f"segments must be >= 1; got {segments}")
        self.prob = prob
        self.invert_prob = invert_prob
        self.strength = strength
        self.segments = segments
        self.body_level = body_level

    def random_curve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots (x, y), each (segments + 1,), of a random increasing map of [-1, 1] onto itself."""
        lengths = self.R.uniform(1.0 - self.strength, 1.0 + self.strength, self.segments)
        ys = -1.0 + 2.0 * np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum()
        ys[-1] = 1.0
        xs = np.linspace(-1.0, 1.0, self.segments + 1)
        return torch.from_numpy(xs), torch.from_numpy(ys)

    def __call__(self, x: torch.Tensor, body: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a (1, D, H, W) or (D, H, W) view.

        Args:
            x: Normalised intensities.
            body: Bool mask broadcastable to ``x`` of the voxels to change (in the body and in
                the field of view); default ``x > body_level``.

        Returns:
            A new tensor of the same shape (``x`` itself when the view is left unchanged).
        """
        if self.R.random() >= self.prob:
            return x
        knots_x, knots_y = self.random_curve()
        y = piecewise_linear(x, knots_x, knots_y)
        if self.R.random() < self.invert_prob:
            y = -y
        mask = (x > self.body_level) if body is None else body.to(torch.bool)
        return torch.where(mask, y, x)
