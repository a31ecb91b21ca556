"""The MedLAM localizer: relative-position regression and multi-scale refinement (MedLSAM)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from uae_ray.tasks.localize.boxes import DEFAULT_CUT_POLICY, OrganBox, STATUS_NO_SUPPORT, SupportEstimate
from uae_ray.tasks.localize.vote import vote
from uae_ray.tasks.support import image_box, partial_supports, Support

logger = logging.getLogger(__name__)


@dataclass
class MedLAMScan:
    """A scan prepared for MedLAM: 3 mm volume (identity direction) and its geometry.

    Attributes:
        volume: (1, Z, Y, X) float32 tensor, normalised, air = -1.
        valid: (1, Z, Y, X) float32 tensor, 1 inside the original field of view.
        grid: the 3 mm grid (``Grid``; identity direction).
        fov: (6,) the original image's box of voxel centres.
    """

    volume: "object"
    valid: "object"
    grid: "object"
    fov: np.ndarray

    @classmethod
    def prepare(cls, image: sitk.Image, modality: str, spacing_mm: float = 3.0) -> "MedLAMScan":
        import torch

        from uae_ray.volume import prepare_volume

        pv = prepare_volume(image, modality, spacing_mm=spacing_mm, pad_multiple=1)
        return cls(torch.from_numpy(pv.array)[None], torch.from_numpy(pv.valid.astype(np.float32))[None], pv.grid,
                   image_box(image))


@dataclass
class MedLAMSupportOrgan:
    """A support organ as MedLAM sees it: per extreme point the projection and the multi-scale
    features at the patch centre.

    Attributes:
        projections: (6, 3) ``p`` of the 64^3 patch centred on each extreme point.
        features: ``{stride: (6, C)}`` unit feature vectors at each patch centre.
        cut: (6,) bool, the support organ touches its own image border on that side.
    """

    projections: np.ndarray
    features: dict[int, np.ndarray]
    cut: np.ndarray


class MedLAMLocalizer:
    """Organ boxes with MedLAM (:mod:`uae_ray.models.medlam`).

    Per extreme point: the projections ``p`` of the k supports' patches at that point are
    averaged; one jump from the target's scan centre, ``x = c + scale * tanh(p_support - p_c)``;
    then one refinement: in the 64^3 crop (3 mm) around ``x``, the voxel of highest multi-scale
    similarity (cosine of the target's feature maps with the supports' features at the point,
    averaged over supports and the three scales, upsampled to 3 mm) within the field of view.
    Box = per-axis min/max of the six points, clipped to the field of view.

    Args:
        model: a :class:`~uae_ray.models.medlam.MedLAMNet` (eval mode).
        supports: the loaded support scans.
        cut_policy: see :func:`vote`.
    """

    method = "medlam"

    def __init__(self, model, supports: Sequence[Support], cut_policy: str = DEFAULT_CUT_POLICY) -> None:
        self.model = model.eval()
        self.supports = list(supports)
        self.cut_policy = cut_policy
        self._scans: dict[str, MedLAMScan] = {}
        self._organs: dict[tuple[str, str], MedLAMSupportOrgan] = {}

    @property
    def model_version(self) -> str:
        return str(getattr(self.model, "version", "medlam"))

    def _scan(self, support: Support) -> MedLAMScan:
        if support.name not in self._scans:
            self._scans[support.name] = MedLAMScan.prepare(support.image, support.modality,
                                                           self.model.config.input_spacing_mm)
        return self._scans[support.name]

    def _run(self, scan: MedLAMScan, world: np.ndarray, features: bool = True) -> dict:
        import torch

        from uae_ray.models.medlam import extract_patches

        idx = torch.from_numpy(scan.grid.world_to_index(np.asarray(world, dtype=np.float64).reshape(-1, 3)))
        x = extract_patches(scan.volume, idx, self.model.config.patch_size, pad_value=-1.0)
        with torch.inference_mode():
            out = self.model(x, features=features)
        out["valid"] = extract_patches(scan.valid, idx, self.model.config.patch_size, pad_value=0.0)[:, 0]
        out["centres"] = idx
        return out

    def support_organ(self, support: Support, organ: str) -> MedLAMSupportOrgan:
        """Projections and centre features of the support's six extreme points (cached)."""
        key = (support.name, organ)
        if key not in self._organs:
            import torch

            from uae_ray.models.medlam import patch_centre_index

            geo = support.organ(organ)
            if geo is None:
                raise KeyError(support.missing_reason(organ))
            out = self._run(self._scan(support), geo.extremes)
            c = patch_centre_index(self.model.config.patch_size)
            feats = {}
            for stride, f in out["features"].items():  # (6, C, m, m, m); centre at map position c / stride
                m = f.shape[-1]
                g = torch.full((f.shape[0], 1, 1, 1, 3), 2.0 * (c / int(stride)) / (m - 1) - 1.0, dtype=f.dtype)
                v = torch.nn.functional.grid_sample(f, g, mode="bilinear", align_corners=True).reshape(f.shape[0], -1)
                feats[int(stride)] = torch.nn.functional.normalize(v, dim=1).numpy()
            self._organs[key] = MedLAMSupportOrgan(out["projection"].numpy(), feats, geo.cut)
        return self._organs[key]

    def target_centre(self, scan: MedLAMScan) -> tuple[np.ndarray, np.ndarray]:
        """The scan centre (world) and its projection ``p_c``."""
        centre = 0.5 * (scan.fov[:3] + scan.fov[3:])
        return centre, self._run(scan, centre, features=False)["projection"].numpy()[0]

    def localize_organ(
        self, scan: MedLAMScan, organ: str, parts: Sequence[MedLAMSupportOrgan],
        centre: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> OrganBox:
        """One organ from the supports' :class:`MedLAMSupportOrgan` (at least one)."""
        import torch

        from uae_ray.models.ops import upsample_aligned

        t0 = time.perf_counter()
        c_world, p_c = centre if centre is not None else self.target_centre(scan)
        proj = np.stack([p.projections for p in parts])  # (k, 6, 3)
        cut = np.stack([p.cut for p in parts])  # (k, 6)
        use = ~cut
        use[:, ~use.any(axis=0)] = True  # every support is cut on that side: keep them all
        w = use[..., None].astype(np.float64)
        p_q = (proj * w).sum(axis=0) / w.sum(axis=0)  # (6, 3)
        scale = np.asarray(self.model.config.scale_mm, dtype=np.float64)
        jumped = c_world + scale * np.tanh(p_q - p_c)  # (6, 3)
        lo, hi = scan.fov[:3], scan.fov[3:]
        inside = np.all((jumped >= lo) & (jumped <= hi), axis=1)
        start = np.clip(jumped, lo, hi)
        out = self._run(scan, start)
        size = self.model.config.patch_size
        sim = torch.zeros((6, size, size, size))
        for stride, f in out["features"].items():  # (6, C, z, y, x)
            q = np.stack([p.features[int(stride)] for p in parts])  # (k, 6, C)
            q = (q * use[..., None]).sum(axis=0) / use.sum(axis=0)[:, None]
            s_map = torch.einsum("nczyx,nc->nzyx", f, torch.from_numpy(q).to(f.dtype))
            sim += upsample_aligned(s_map[:, None], int(stride), (size, size, size))[:, 0]
        sim /= len(out["features"])
        sim = sim.masked_fill(out["valid"] < 0.5, float("-inf"))
        best = sim.reshape(6, -1).argmax(dim=1)
        z, y, x = np.unravel_index(best.numpy(), (size, size, size))
        from uae_ray.models.medlam import patch_centre_index

        u = np.stack([x, y, z], axis=1).astype(np.float64) - patch_centre_index(size)
        refined_idx = out["centres"].numpy() + u
        refined = scan.grid.index_to_world(refined_idx)
        scores = sim.reshape(6, -1).max(dim=1).values.numpy().astype(np.float64)
        refined[~np.isfinite(scores)] = start[~np.isfinite(scores)]
        scores = np.nan_to_num(scores, neginf=0.0)
        est = SupportEstimate(f"{len(parts)} support(s)", refined, scores, inside, cut.all(axis=0))
        box = vote(organ, [est], scan.fov, self.method, self.cut_policy)
        box.n_supports = len(parts)
        box.seconds = time.perf_counter() - t0
        return box

    def localize(self, target: sitk.Image, organs: Sequence[str], modality: str | None = None) -> list[OrganBox]:
        """Boxes of ``organs`` in ``target`` (one :class:`OrganBox` per organ, in order)."""
        from uae_ray.volume import detect_modality

        scan = MedLAMScan.prepare(target, detect_modality(target, "<target>", modality),
                                  self.model.config.input_spacing_mm)
        centre = self.target_centre(scan)
        for _, line in partial_supports(self.supports, organs):
            logger.warning("%s", line)
        out = []
        for organ in organs:
            parts, missing = [], []
            for support in self.supports:
                if support.has(organ):
                    parts.append(self.support_organ(support, organ))
                else:
                    missing.append(support.missing_reason(organ))
            if not parts:
                out.append(OrganBox.empty(organ, STATUS_NO_SUPPORT,
                                          f"{organ}: no support scan has this organ ({'; '.join(missing)})", self.method))
                continue
            out.append(self.localize_organ(scan, organ, parts, centre))
        return out
