"""Training data of the small segment-anything model: prepared slices, pseudo-objects, batches.

Preparation (:func:`prepare_training_slices`, needs SimpleITK) reads the cases of a data folder
once and keeps every axial slice prepared exactly as at inference (the scan reoriented to LPS,
:class:`~uae_ray.tasks.segment.TargetSlices` window, longest side resized to the model size,
zero-padded). It keeps

* every slice within ``margin`` slices of a label, with the label map (organ names -> global ids);
* every ``context_every``-th slice of every case, labelled or not (the other anatomy: heads,
  lungs, limbs, unlabelled scans, MR);
* for every kept slice, **pseudo-objects**: class-agnostic regions from the slice's own intensity
  classes (:func:`pseudo_objects`), as SAM's data engine fed its model automatic masks. They
  teach "the homogeneous region this box frames" on anatomy no label covers.

A :class:`SliceSet` saves to one compressed ``.npz`` (:meth:`SliceSet.save`), so training can
run where SimpleITK is not installed (a GPU machine): :func:`sample_batch` needs only torch and
works on the set's device, augmentation included.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.models.sam2d import Sam2DConfig, preprocess_shape

logger = logging.getLogger(__name__)

#: Label names not trained on: planning volumes are margins drawn around a target, not image content.
EXCLUDED_LABELS = frozenset({"ptv"})


@dataclass
class SliceSet:
    """Prepared training slices at model resolution.

    Attributes:
        images: (S, L, L) uint8, windowed [0, 255], resized, zero-padded.
        labels: (S, L, L) int16 organ ids (global over the set; 0 = none).
        pseudo: (S, L, L) int16 pseudo-object ids (per slice; 0 = none).
        sizes: (S, 2) the resized slice size ``(h', w')`` inside the padding.
        case: (S,) case index; z: (S,) slice index in the oriented case.
        organ_boxes: {(case, organ id): (x0, y0, x1, y1, z0, z1)} 3D extent at model resolution.
        organ_names: {organ id: name}.
        cases: case ids.
    """

    images: torch.Tensor
    labels: torch.Tensor
    pseudo: torch.Tensor
    sizes: np.ndarray
    case: np.ndarray
    z: np.ndarray
    organ_boxes: dict[tuple[int, int], np.ndarray]
    organ_names: dict[int, str]
    cases: list[str]

    def __len__(self) -> int:
        return len(self.z)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device) -> "SliceSet":
        return SliceSet(self.images.to(device), self.labels.to(device), self.pseudo.to(device), self.sizes,
                        self.case, self.z, self.organ_boxes, self.organ_names, self.cases)

    def subset(self, case_ids: Sequence[str], keep: bool = True) -> "SliceSet":
        """The slices of ``case_ids`` (``keep``) or of every other case."""
        chosen = np.isin(np.asarray(self.cases)[self.case], list(case_ids)) == keep
        idx = torch.as_tensor(np.flatnonzero(chosen), device=self.device)
        return SliceSet(self.images[idx], self.labels[idx], self.pseudo[idx], self.sizes[chosen], self.case[chosen],
                        self.z[chosen], self.organ_boxes, self.organ_names, self.cases)

    def save(self, path: str | Path) -> None:
        meta = {"organ_names": {str(k): v for k, v in self.organ_names.items()}, "cases": self.cases,
                "organ_boxes": [[c, o, *map(float, b)] for (c, o), b in sorted(self.organ_boxes.items())]}
        np.savez_compressed(path, images=self.images.cpu().numpy(), labels=self.labels.cpu().numpy(),
                            pseudo=self.pseudo.cpu().numpy(), sizes=self.sizes, case=self.case, z=self.z,
                            meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> "SliceSet":
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            return cls(torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]), torch.from_numpy(f["pseudo"]),
                       f["sizes"], f["case"], f["z"],
                       {(int(r[0]), int(r[1])): np.asarray(r[2:], dtype=np.float32) for r in meta["organ_boxes"]},
                       {int(k): v for k, v in meta["organ_names"].items()}, list(meta["cases"]))


# -- pseudo-objects --------------------------------------------------------------------------------


def pseudo_objects(image: np.ndarray, size: tuple[int, int], classes: int = 5, min_pixels: int = 40,
                   max_fraction: float = 0.25) -> np.ndarray:
    """Class-agnostic objects of one windowed slice: connected regions of its intensity classes.

    The slice (inside ``size``) is smoothed (Gaussian, sigma 1 px), its intensities split into
    ``classes`` classes by 1D k-means, each class opened (3x3) to cut thin bridges, and every
    4-connected region of ``min_pixels`` up to ``max_fraction`` of the slice becomes an object
    (the air around the body and the body itself are too large and are left out).

    Returns:
        ``image.shape`` int16 map of object ids 1..n (0 = none).
    """
    import SimpleITK as sitk

    h, w = size
    img = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(image[:h, :w].astype(np.float32)), 1.0))
    vals = img.ravel()
    centers = np.quantile(vals, (np.arange(classes) + 0.5) / classes)
    for _ in range(10):
        assign = np.abs(vals[:, None] - centers[None]).argmin(1)
        centers = np.array([vals[assign == k].mean() if np.any(assign == k) else centers[k] for k in range(classes)])
    cls = np.abs(img[..., None] - centers).argmin(-1)
    out = np.zeros(image.shape, dtype=np.int16)
    view = out[:h, :w]
    next_id = 1
    for k in range(classes):
        opened = sitk.BinaryMorphologicalOpening(sitk.GetImageFromArray((cls == k).astype(np.uint8)), [1, 1])
        comp = sitk.GetArrayFromImage(sitk.ConnectedComponent(opened, False))
        area = np.bincount(comp.ravel())
        keep = (area >= min_pixels) & (area <= max_fraction * h * w)
        keep[0] = False
        ids = np.zeros(len(area), dtype=np.int16)
        ids[keep] = np.arange(next_id, next_id + int(keep.sum()))
        next_id += int(keep.sum())
        view[keep[comp]] = ids[comp][keep[comp]]
    return out


# -- preparation (SimpleITK) -----------------------------------------------------------------------


def prepare_training_slices(cases: Sequence[Any], config: Sam2DConfig, margin: int = 3,
                            context_every: int = 0) -> SliceSet:
    """Prepares the slices of ``cases`` (``uae_ray.data.cases.Case``; labelled or not), see module docstring."""
    import SimpleITK as sitk

    from uae_ray.tasks.segment import TargetSlices, orient
    from uae_ray.volume import read_image, read_labels

    L = config.image_size
    images, labels, pseudo, sizes, case_idx, zs = [], [], [], [], [], []
    organ_boxes: dict[tuple[int, int], np.ndarray] = {}
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    for ci, case in enumerate(cases):
        target = TargetSlices(read_image(case.image_path), case.modality, config)
        nz, ny, nx = target.shape
        if case.labels_path is not None:
            lab = sitk.GetArrayFromImage(orient(read_labels(case.labels_path)))
            remap = np.zeros(int(lab.max()) + 1, dtype=np.int16)
            for k, v in ((int(k), v) for k, v in case.meta.get("labels", {}).items()):
                if k < len(remap) and v not in EXCLUDED_LABELS:
                    remap[k] = ids.setdefault(v, len(ids) + 1)
                    names[int(remap[k])] = v
            lab = remap[lab]
        else:
            lab = np.zeros((nz, ny, nx), dtype=np.int16)
        any_z = np.flatnonzero(lab.reshape(nz, -1).any(axis=1))
        keep = set()
        if len(any_z):
            keep |= set(range(max(int(any_z.min()) - margin, 0), min(int(any_z.max()) + margin, nz - 1) + 1))
        if context_every > 0:
            keep |= set(range(context_every // 2, nz, context_every))
        if not keep:
            continue
        keep_z = np.array(sorted(keep))
        nh, nw = preprocess_shape(ny, nx, config)
        win = torch.from_numpy(target.windowed(keep_z).astype(np.float32))[:, None]
        win = F.interpolate(win, (nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 255)
        lt = F.interpolate(torch.from_numpy(lab[keep_z].astype(np.float32))[:, None], (nh, nw), mode="nearest")
        img = np.zeros((len(keep_z), L, L), dtype=np.uint8)
        img[:, :nh, :nw] = win[:, 0].round().numpy().astype(np.uint8)
        lb = np.zeros((len(keep_z), L, L), dtype=np.int16)
        lb[:, :nh, :nw] = lt[:, 0].numpy().astype(np.int16)
        images.append(img)
        labels.append(lb)
        pseudo.append(np.stack([pseudo_objects(s, (nh, nw)) for s in img]))
        sizes.append(np.tile([nh, nw], (len(keep_z), 1)))
        case_idx.append(np.full(len(keep_z), ci))
        zs.append(keep_z)
        for organ in np.unique(lb):
            if organ == 0:
                continue
            zyx = np.argwhere(lb == organ)
            organ_boxes[(ci, int(organ))] = np.array(
                [zyx[:, 2].min(), zyx[:, 1].min(), zyx[:, 2].max(), zyx[:, 1].max(),
                 keep_z[zyx[:, 0].min()], keep_z[zyx[:, 0].max()]], dtype=np.float32)
        logger.info("%s (%s): %d slices (%d labelled; %dx%d -> %dx%d)", case.case_id, case.modality, len(keep_z),
                    int(lb.reshape(len(keep_z), -1).any(1).sum()), ny, nx, nh, nw)
    return SliceSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                    torch.from_numpy(np.concatenate(pseudo)), np.concatenate(sizes), np.concatenate(case_idx),
                    np.concatenate(zs), organ_boxes, names, [c.case_id for c in cases])


# -- batches ---------------------------------------------------------------------------------------


def _jitter(boxes: np.ndarray, rng: np.random.Generator, lo: float, hi: float, px: float) -> np.ndarray:
    """Moves each side of ``boxes`` (N, 4) outward by U(lo, hi) x the box size plus U(0, px) pixels."""
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    d = rng.uniform(lo, hi, (len(boxes), 4)) * np.stack([w, h, w, h], 1) + rng.uniform(0, px, (len(boxes), 4))
    return boxes + d * np.array([-1, -1, 1, 1])


def _warp_matrix(rng: np.random.Generator, size: np.ndarray, cfg: Any) -> np.ndarray:
    """A random forward pixel map (3x3) of one slice: flip, zoom (anchored top-left, as the
    padding is), rotation about the content centre, and a shift when zoomed in."""
    nh, nw = float(size[0]), float(size[1])
    m = np.eye(3)
    if rng.random() < cfg.flip_prob:
        m = np.array([[-1.0, 0, nw - 1], [0, 1, 0], [0, 0, 1]]) @ m
    s = rng.uniform(cfg.zoom_min, cfg.zoom_max) if rng.random() < cfg.zoom_prob else 1.0
    m = np.diag([s, s, 1.0]) @ m
    if cfg.rotate_deg > 0:
        a = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        cx, cy = s * (nw - 1) / 2, s * (nh - 1) / 2
        rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        m = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]]) @ rot @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]]) @ m
    if s > 1:
        m = np.array([[1, 0, rng.uniform(-(s - 1) * nw, 0)], [0, 1, rng.uniform(-(s - 1) * nh, 0)], [0, 0, 1]]) @ m
    return m


def _map_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds of boxes (N, 4) after the pixel map ``m`` (one per box, (N, 3, 3))."""
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([x0, y0]), np.stack([x1, y0]), np.stack([x0, y1]), np.stack([x1, y1])], 0)  # 4,2,N
    pts = np.einsum("nij,knj->kni", m[:, :2, :2], corners.transpose(0, 2, 1)) + m[None, :, :2, 2]  # 4,N,2
    return np.concatenate([pts.min(0), pts.max(0)], axis=1)


def _warp(x: torch.Tensor, m: np.ndarray, L: int, mode: str) -> torch.Tensor:
    """Applies forward pixel maps ``m`` (B, 3, 3) to ``x`` (B, C, L, L) (zeros outside)."""
    p = np.array([[2.0 / L, 0, 1.0 / L - 1], [0, 2.0 / L, 1.0 / L - 1], [0, 0, 1]])
    theta = p @ np.linalg.inv(m) @ np.linalg.inv(p)
    grid = F.affine_grid(torch.as_tensor(theta[:, :2], dtype=torch.float32, device=x.device), list(x.shape),
                         align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def valid_area(sizes: np.ndarray, L: int, device: torch.device) -> torch.Tensor:
    """(B, L, L) 1.0 inside each slice's resized size ``(h', w')``, 0.0 in the padding."""
    valid = torch.zeros((len(sizes), L, L), device=device)
    for b, (nh, nw) in enumerate(sizes):
        valid[b, :nh, :nw] = 1.0
    return valid


def model_input(images: torch.Tensor, valid: torch.Tensor, config: Sam2DConfig) -> torch.Tensor:
    """(B, 3, L, L) model input from windowed slices (B, L, L) in [0, 255]: SAM's pixel mean /
    std, and zero (the mean) outside ``valid``, as :func:`~uae_ray.models.sam2d.prepare_slices` pads."""
    mean = torch.tensor(config.pixel_mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std, device=images.device).view(1, 3, 1, 1)
    return (images.float()[:, None].expand(-1, 3, -1, -1) - mean) / std * valid[:, None]


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``x0, y0, x1, y1`` boxes of non-empty masks (N, L, L)."""
    L = masks.shape[-1]
    rows, cols = masks.any(2), masks.any(1)
    y0, y1 = rows.float().argmax(1), L - 1 - rows.flip(1).float().argmax(1)
    x0, x1 = cols.float().argmax(1), L - 1 - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], 1)


def sample_batch(data: SliceSet, cfg: Any, model_cfg: Sam2DConfig, rng: np.random.Generator):
    """One augmented training batch on ``data``'s device (recipe: :mod:`uae_ray.train.sam2d`).

    Returns:
        ``(images (B, 3, L, L), boxes (N, 4), image_index (N,), targets (N, L, L))`` or None
        when no slice of the draw had an object.
    """
    L, dev, B = model_cfg.image_size, data.device, cfg.slices_per_step
    sel = rng.choice(len(data), size=B, replace=len(data) < B)
    idx = torch.as_tensor(sel, device=dev)
    img = data.images[idx].float()
    valid = valid_area(data.sizes[sel], L, dev)
    # intensity: gamma, gain, offset, noise (inside the slice)
    gamma = torch.as_tensor(np.exp(rng.uniform(-cfg.gamma, cfg.gamma, B)), dtype=torch.float32, device=dev)
    gain = torch.as_tensor(rng.uniform(0.9, 1.1, B), dtype=torch.float32, device=dev)
    shift = torch.as_tensor(rng.uniform(-10, 10, B), dtype=torch.float32, device=dev)
    img = 255.0 * (img / 255.0) ** gamma[:, None, None] * gain[:, None, None] + shift[:, None, None]
    if cfg.noise_std > 0:
        sd = torch.as_tensor(rng.uniform(0, cfg.noise_std, B), dtype=torch.float32, device=dev)
        img = img + torch.randn_like(img) * sd[:, None, None]
    img = img.clamp(0, 255) * valid
    # geometry: one forward pixel map per slice, applied to image, labels, pseudo-objects, valid area
    m = np.stack([_warp_matrix(rng, s, cfg) for s in data.sizes[sel]])
    img = _warp(img[:, None], m, L, "bilinear")[:, 0]
    maps = _warp(torch.stack([data.labels[idx].float(), data.pseudo[idx].float(), valid], 1), m, L, "nearest")
    lab, pse, valid = maps[:, 0].long(), maps[:, 1].long(), maps[:, 2]
    x = model_input(img, valid, model_cfg)
    # objects present after the warp (pixel counts per slice, one transfer)
    K = int(max(lab.max(), pse.max())) + 1
    offs = torch.arange(B, device=dev)[:, None] * K
    counts = torch.stack([torch.bincount((t.view(B, -1) + offs).view(-1), minlength=B * K).view(B, K)
                          for t in (lab, pse)]).cpu().numpy()
    counts[:, :, 0] = 0
    index, ids, from_pseudo, wpl, negatives = [], [], [], [], []
    for b in range(B):
        real = np.flatnonzero(counts[0, b] >= cfg.min_pixels)
        fake = np.flatnonzero(counts[1, b] >= cfg.min_pixels)
        use_pseudo = cfg.p_pseudo > 0 and len(fake) > 0 and (len(real) == 0 or rng.random() < cfg.p_pseudo)
        pool = fake if use_pseudo else real
        ci, z = int(data.case[sel[b]]), int(data.z[sel[b]])
        for o in rng.permutation(pool)[: cfg.prompts_per_slice]:
            index.append(b)
            ids.append(int(o))
            from_pseudo.append(use_pseudo)
            wpl.append(not use_pseudo and rng.random() < cfg.p_wpl)
        # a negative: the WPL box of an organ of this case absent here but within 3 slices
        case_organs = [o for (c, o) in data.organ_boxes if c == ci]
        if case_organs and rng.random() < cfg.p_negative * cfg.prompts_per_slice:
            o = int(rng.choice(case_organs))
            ob = data.organ_boxes[(ci, o)]
            if ((ob[4] - 3 <= z < ob[4]) or (ob[5] < z <= ob[5] + 3)) and (o >= K or counts[0, b, o] == 0):
                negatives.append((b, o))
    if not index and not negatives:
        return None
    ti = torch.as_tensor(index, dtype=torch.long, device=dev)
    tid = torch.as_tensor(ids, dtype=torch.long, device=dev)
    src = torch.where(torch.as_tensor(from_pseudo, device=dev)[:, None, None], pse[ti], lab[ti])
    targets = (src == tid[:, None, None]).float()
    boxes = np.zeros((len(index), 4))
    wpl_a = np.asarray(wpl, dtype=bool)
    if len(index):
        tight = tight_boxes(targets > 0).cpu().numpy().astype(np.float64)
        boxes = _jitter(tight, rng, cfg.box_jitter[0], cfg.box_jitter[1], 2.0)
    if wpl_a.any():
        extents = np.stack([data.organ_boxes[(int(data.case[sel[index[i]]]), ids[i])][:4] for i in np.flatnonzero(wpl_a)])
        boxes[wpl_a] = _jitter(_map_boxes(extents, m[np.asarray(index)[wpl_a]]), rng, -cfg.wpl_jitter, cfg.wpl_jitter, 1.0)
    if negatives:
        nb = np.array([b for b, _ in negatives])
        ext = np.stack([data.organ_boxes[(int(data.case[sel[b]]), o)][:4] for b, o in negatives])
        boxes = np.concatenate([boxes, _jitter(_map_boxes(ext, m[nb]), rng, -cfg.wpl_jitter, cfg.wpl_jitter, 1.0)])
        ti = torch.cat([ti, torch.as_tensor(nb, device=dev)])
        targets = torch.cat([targets, torch.zeros((len(nb), L, L), device=dev)])
    bx = torch.as_tensor(np.clip(boxes, 0, L - 1), dtype=torch.float32, device=dev)
    return x, bx, ti, targets
