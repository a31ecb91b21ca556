"""Box-prompted organ segmentation (MedLSAM): 3D boxes -> per-slice 2D boxes -> segment-anything.

Pipeline for one target scan:

1. The target is reoriented to LPS (``sitk.DICOMOrient``; a permutation/flip of the axes, no
   resampling), so that every slice is an axial slice seen the same way (rows anterior ->
   posterior, columns right -> left) whatever the stored orientation.
2. Each organ gets per-slice 2D boxes (``{z: (x0, y0, x1, y1)}`` in voxel indices of the
   oriented image, inclusive) from a 3D box:

   * **WPL** (whole-patient localization, :func:`wpl_slice_boxes`): the same 2D box, the
     box's x-y extent, on every slice of its z range;
   * **SPL** (sub-patient localization, :func:`spl_slice_boxes`): the organ is split along z
     into up to 6 parts (:func:`split_parts`), each localized with its own extreme points; a
     slice takes the box of the part(s) covering it (their union), a slice in a gap between
     parts the nearer part's box;
   * ground truth: :func:`mask_slice_boxes` (each slice's own tight box; the prompt's upper
     bound) or :func:`wpl_slice_boxes` of the true 3D box.

3. Slices are windowed to [0, 255] (CT: the model's HU window, default [-160, 240] = MedSAM's
   abdomen window W400/L40; MR: the 0.5 / 99.5 percentiles of the volume), resized and
   normalised as the model's published pipeline does (:func:`uae_ray.models.sam2d.prepare_slices`).
   The image embedding of a slice is computed once and reused for every organ box on it.
4. Masks (logits upsampled to the slice) are assembled into a 3D label map: label k = the k-th
   organ; where two organs claim a voxel the higher logit wins. The map is put back into the
   target's own orientation and geometry (origin, spacing, direction exactly the target's).

A :class:`SliceSegmenter` runs the network: :class:`LocalSliceSegmenter` (in-process torch) or
:class:`~uae_ray.serving.sam_triton.TritonSliceSegmenter` (``model_repo/sam_image_encoder`` +
``sam_mask_decoder``). The core has no Triton, Ray or S3 imports.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import SimpleITK as sitk

from uae_ray.models.sam2d import Sam2DConfig, logits_to_slice, prepare_slices, scale_boxes

logger = logging.getLogger(__name__)

#: Box modes of ``uae-ray segment --boxes``.
BOX_MODES = ("wpl", "spl")
DEFAULT_BOX_MODE = "spl"
#: Most parts an organ is split into along z for SPL (MedLSAM).
SPL_MAX_PARTS = 6
#: SPL parts are at least this thick (mm) in the support.
SPL_MIN_PART_MM = 25.0
#: Orientation every target is segmented in.
ORIENTATION = "LPS"

SliceBoxes = dict[int, np.ndarray]  # z -> (4,) x0, y0, x1, y1 (inclusive voxel indices)


# -- the network behind one interface -------------------------------------------------------------


@runtime_checkable
class SliceSegmenter(Protocol):
    """Runs a 2D segment-anything model.

    Attributes:
        config: the model's :class:`~uae_ray.models.sam2d.Sam2DConfig` (its preprocessing).
        version: the model's version string.
    """

    config: Sam2DConfig
    version: str

    def encode(self, images: np.ndarray) -> np.ndarray:
        """``(S, 3, L, L)`` prepared images -> ``(S, C, h, w)`` float32 image embeddings."""

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C, h, w)`` embeddings (one per box), ``(N, 4)`` boxes in model-input pixels ->
        ``(logits (N, 1, m, m), iou (N,))`` float32."""


class LocalSliceSegmenter:
    """:class:`SliceSegmenter` with the model in this process (torch).

    Args:
        model: a :class:`~uae_ray.models.sam2d.Sam2D`; default: ``load_sam2d(checkpoint, kind)``.
        checkpoint: see :func:`~uae_ray.models.sam2d.load_sam2d` (None: the shipped default).
        kind: official kind for ``.pth`` files (``vit_b``, ``vit_h``, ``medsam``, ...).
        batch_size: images per encoder call and ``16 x`` that boxes per decoder call.
        device: torch device (default: CUDA when available).
    """

    def __init__(self, model=None, checkpoint=None, kind: str | None = None, batch_size: int = 8,
                 device: str | None = None) -> None:
        import torch

        from uae_ray.models.sam2d import load_sam2d

        self.model = model if model is not None else load_sam2d(checkpoint, kind)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device).eval()
        self.config: Sam2DConfig = self.model.config
        self.version: str = self.model.version
        self.batch_size = max(int(batch_size), 1)

    def encode(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.as_tensor(np.ascontiguousarray(images[i : i + self.batch_size]), dtype=torch.float32)
                out.append(self.model.encode(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        logits, ious = [], []
        step = 16 * self.batch_size
        with torch.inference_mode():
            for i in range(0, len(boxes), step):
                e = torch.as_tensor(np.ascontiguousarray(embeddings[i : i + step]), dtype=torch.float32)
                b = torch.as_tensor(np.ascontiguousarray(boxes[i : i + step]), dtype=torch.float32)
                lo, iou = self.model.decode(e.to(self.device), b.to(self.device))
                logits.append(lo.float().cpu().numpy())
                ious.append(iou[:, 0].float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(ious)


# -- orientation and windowing --------------------------------------------------------------------


def orient(image: sitk.Image) -> sitk.Image:
    """The image reoriented to LPS (axes permuted / flipped; voxel values and centres unchanged)."""
    return sitk.DICOMOrient(image, ORIENTATION)


def restore_orientation(oriented: sitk.Image, target: sitk.Image) -> sitk.Image:
    """A map on the oriented grid put back on ``target``'s grid (exact: same voxel centres).

    Raises:
        ValueError: the grids do not hold the same voxels.
    """
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(target.GetDirection())
    back = sitk.DICOMOrient(oriented, code)
    if back.GetSize() != target.GetSize():
        raise ValueError(f"label map size {back.GetSize()} != target size {target.GetSize()} after reorienting")
    a = np.asarray(back.GetOrigin())
    b = np.asarray(target.GetOrigin())
    tol = 1e-3 * max(min(target.GetSpacing()), 1e-3)
    if np.abs(a - b).max() > max(tol, 1e-4):
        raise ValueError(f"label map origin {tuple(a)} != target origin {tuple(b)} after reorienting")
    back.CopyInformation(target)  # exactly the target's origin, spacing and direction
    return back


def window_range(array: np.ndarray, modality: str, config: Sam2DConfig) -> tuple[float, float]:
    """Intensity range mapped to [0, 255]: the model's CT window, or the MR percentiles of the
    volume (a subsample of up to 2 M voxels; NaN ignored)."""
    if str(modality).upper() == "CT":
        return float(config.ct_window[0]), float(config.ct_window[1])
    flat = np.asarray(array).reshape(-1)
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(flat, config.mr_percentiles)
    return float(lo), float(max(hi, lo + 1e-6))


def window_slices(slices: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensities clipped to ``[lo, hi]`` and mapped to [0, 255] (float32; NaN -> 0)."""
    x = (np.asarray(slices, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.clip(x, 0.0, 255.0), nan=0.0)


# -- boxes ----------------------------------------------------------------------------------------


def world_box_to_index(box: np.ndarray, image: sitk.Image) -> np.ndarray | None:
    """World box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` (of voxel centres) -> index box
    ``(x0, y0, z0, x1, y1, z1)`` (inclusive ints, clipped to ``image``); None when it is empty,
    not finite or outside."""
    from uae_ray.volume import Grid

    box = np.asarray(box, dtype=np.float64)
    if box.shape != (6,) or not np.all(np.isfinite(box)):
        return None
    lo, hi = box[:3], box[3:]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = Grid.from_image(image).world_to_index(corners)
    size = np.asarray(image.GetSize())
    i0 = np.maximum(np.ceil(idx.min(axis=0) - 0.5 - 1e-6), 0).astype(int)
    i1 = np.minimum(np.floor(idx.max(axis=0) + 0.5 + 1e-6), size - 1).astype(int)
    if np.any(i1 < i0):
        return None
    return np.concatenate([i0, i1])


def wpl_slice_boxes(index_box: np.ndarray | None) -> SliceBoxes:
    """WPL: the box's 2D extent on every slice of its z range."""
    if index_box is None:
        return {}
    x0, y0, z0, x1, y1, z1 = (int(v) for v in index_box)
    b = np.array([x0, y0, x1, y1], dtype=np.float32)
    return {z: b.copy() for z in range(z0, z1 + 1)}


def spl_slice_boxes(part_boxes: Sequence[np.ndarray | None]) -> SliceBoxes:
    """SPL: per slice, the union of the boxes of the parts covering it; a slice between parts
    (inside the overall z range) takes the box of the nearest part."""
    parts = [np.asarray(p, dtype=int) for p in part_boxes if p is not None]
    if not parts:
        return {}
    z_lo = min(int(p[2]) for p in parts)
    z_hi = max(int(p[5]) for p in parts)
    out: SliceBoxes = {}
    for z in range(z_lo, z_hi + 1):
        cover = [p for p in parts if p[2] <= z <= p[5]]
        if not cover:
            dist = [min(abs(z - p[2]), abs(z - p[5])) for p in parts]
            cover = [parts[int(np.argmin(dist))]]
        c = np.stack(cover)
        out[z] = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 3].max(), c[:, 4].max()], dtype=np.float32)
    return out


def mask_slice_boxes(mask_zyx: np.ndarray) -> SliceBoxes:
    """Each slice's own tight 2D box of a 3D mask (ground-truth slice prompts)."""
    out: SliceBoxes = {}
    for z in np.flatnonzero(mask_zyx.reshape(mask_zyx.shape[0], -1).any(axis=1)):
        ys, xs = np.nonzero(mask_zyx[z])
        out[int(z)] = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    return out


def mask_index_box(mask_zyx: np.ndarray) -> np.ndarray | None:
    """Index box ``(x0, y0, z0, x1, y1, z1)`` of a 3D mask (None when empty)."""
    zyx = np.argwhere(mask_zyx)
    if len(zyx) == 0:
        return None
    return np.concatenate([zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]]).astype(int)


def n_parts(extent_mm: float, max_parts: int = SPL_MAX_PARTS, min_part_mm: float = SPL_MIN_PART_MM) -> int:
    """Parts an organ of this z extent is split into for SPL (1 .. ``max_parts``)."""
    if not math.isfinite(extent_mm) or extent_mm <= 0:
        return 1
    return int(np.clip(math.floor(extent_mm / min_part_mm), 1, max_parts))


def split_parts(world: np.ndarray, parts: int) -> list[np.ndarray]:
    """Splits an organ's voxel positions (N, 3) along world z into ``parts`` slabs of equal
    thickness (inferior first); returns the boolean selection of each (may be empty)."""
    z = np.asarray(world, dtype=np.float64)[:, 2]
    lo, hi = float(z.min()), float(z.max())
    edges = np.linspace(lo, hi, parts + 1)
    which = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, parts - 1)
    return [which == i for i in range(parts)]


# -- segmentation of prompts ----------------------------------------------------------------------


@dataclass
class OrganPrompt:
    """One organ's prompts on the oriented target.

    Attributes:
        name: organ name.
        boxes: ``{z: (x0, y0, x1, y1)}`` slice boxes (empty: nothing to segment).
        status: ``ok``, or why there are no boxes (the localizer's status).
        message: one line for a status other than ok.
        box_world: the 3D world box the prompts came from (NaN when none).
        localize_seconds: time spent localizing this organ.
    """

    name: str
    boxes: SliceBoxes
    status: str = "ok"
    message: str = ""
    box_world: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    localize_seconds: float = 0.0


@dataclass
class OrganSegmentation:
    """What happened to one organ (``label`` = its 1-based position in ``--organs``)."""

    name: str
    label: int
    status: str
    message: str
    n_slices: int
    n_voxels: int
    volume_ml: float
    seconds: float
    localize_seconds: float = 0.0


@dataclass
class SegmentationResult:
    """A label map on the target's grid plus per-organ records.

    Attributes:
        labels: label map (``sitk.sitkUInt8`` / ``UInt16``) with the target's geometry.
        names: ``{k: organ}`` (label k = the k-th organ, 1-based).
        organs: one :class:`OrganSegmentation` per organ, in order.
        model_version: the segment-anything model's version.
        seconds: wall time of the segmentation (localization excluded).
        encode_seconds / decode_seconds: network time (the rest: preparation and assembly).
        n_slices_encoded: slices whose embedding was computed (once each).
    """

    labels: sitk.Image
    names: dict[int, str]
    organs: list[OrganSegmentation]
    model_version: str
    seconds: float
    encode_seconds: float
    decode_seconds: float
    n_slices_encoded: int

    def sidecar(self) -> dict[str, str]:
        """``{"1": "liver", ...}`` (the sidecar JSON of the contract)."""
        return {str(k): v for k, v in sorted(self.names.items())}


class TargetSlices:
    """A target prepared once: reoriented to LPS, its array and intensity window.

    Args:
        image: the target scan.
        modality: "CT" or "MR".
        config: the model's :class:`Sam2DConfig` (for the window).
    """

    def __init__(self, image: sitk.Image, modality: str, config: Sam2DConfig) -> None:
        self.image = image
        self.oriented = orient(image)
        self.array = sitk.GetArrayViewFromImage(self.oriented)  # z, y, x
        self.modality = str(modality).upper()
        self.lo, self.hi = window_range(self.array, self.modality, config)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    def windowed(self, zs: Sequence[int]) -> np.ndarray:
        """``(S, H, W)`` slices ``zs`` windowed to [0, 255]."""
        return window_slices(self.array[np.asarray(zs, dtype=int)], self.lo, self.hi)

    def index_box(self, box_world: np.ndarray) -> np.ndarray | None:
        """See :func:`world_box_to_index` (on the oriented grid)."""
        return world_box_to_index(box_world, self.oriented)

    def labels_to_target(self, labels_zyx: np.ndarray) -> sitk.Image:
        """A label array on the oriented grid -> label image on the target's grid."""
        out = sitk.GetImageFromArray(labels_zyx)
        out.CopyInformation(self.oriented)
        return restore_orientation(out, self.image)


def segment_prompts(
    segmenter: SliceSegmenter,
    target: TargetSlices,
    prompts: Sequence[OrganPrompt],
    slice_batch: int = 16,
) -> SegmentationResult:
    """Segments every organ's slice boxes and assembles the 3D label map.

    Slices are processed in batches of ``slice_batch``: each slice's embedding is computed once
    and every box on it is decoded from it. Label k = ``prompts[k - 1]``.
    """
    t0 = time.perf_counter()
    config = segmenter.config
    nz, ny, nx = target.shape
    dtype = np.uint8 if len(prompts) < 256 else np.uint16
    labels = np.zeros((nz, ny, nx), dtype=dtype)
    per_slice: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, p in enumerate(prompts, start=1):
        for z, b in p.boxes.items():
            if 0 <= z < nz:
                per_slice.setdefault(int(z), []).append((k, np.asarray(b, dtype=np.float32)))
    organ_time = np.zeros(len(prompts) + 1)
    enc_s = dec_s = 0.0
    zs_all = sorted(per_slice)
    for i in range(0, len(zs_all), slice_batch):
        zs = zs_all[i : i + slice_batch]
        tb = time.perf_counter()
        images = prepare_slices(target.windowed(zs), config).numpy()
        te = time.perf_counter()
        emb = segmenter.encode(images)
        enc_s += time.perf_counter() - te
        rows, ks, boxes = [], [], []
        for j, z in enumerate(zs):
            for k, b in per_slice[z]:
                rows.append(j)
                ks.append(k)
                boxes.append(b)
        scaled = scale_boxes(np.stack(boxes), (ny, nx), config)
        td = time.perf_counter()
        logits, _ = segmenter.decode(emb[np.asarray(rows)], scaled)
        dec_s += time.perf_counter() - td
        import torch

        rows_arr = np.asarray(rows)
        for j, z in enumerate(zs):
            sel = np.flatnonzero(rows_arr == j)
            full = logits_to_slice(torch.from_numpy(logits[sel]), (ny, nx), config).numpy()  # (n, H, W)
            best = np.zeros((ny, nx), dtype=np.float32)
            lab = np.zeros((ny, nx), dtype=dtype)
            for i, n in enumerate(sel):
                win = full[i] > best  # positive logit, higher than any other organ's so far
                lab[win] = ks[n]
                best[win] = full[i][win]
            labels[z] = lab
        # batch time shared over its boxes, by organ
        dt = time.perf_counter() - tb
        for k in ks:
            organ_time[k] += dt / len(ks)
    image = target.labels_to_target(labels)
    vox_ml = float(np.prod(target.oriented.GetSpacing())) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=len(prompts) + 1)
    organs = []
    for k, p in enumerate(prompts, start=1):
        n_slices = sum(1 for z in p.boxes if 0 <= z < nz)
        status, message = p.status, p.message
        if status == "ok" and n_slices == 0:
            status, message = "empty", f"{p.name}: no slice box inside the target"
        organs.append(OrganSegmentation(p.name, k, status, message, n_slices, int(counts[k]), counts[k] * vox_ml,
                                        float(organ_time[k]), p.localize_seconds))
    return SegmentationResult(
        labels=image,
        names={k: p.name for k, p in enumerate(prompts, start=1)},
        organs=organs,
        model_version=segmenter.version,
        seconds=time.perf_counter() - t0,
        encode_seconds=enc_s,
        decode_seconds=dec_s,
        n_slices_encoded=len(zs_all),
    )


# -- prompts from a localizer ---------------------------------------------------------------------


def part_name(organ: str, i: int, n: int) -> str:
    """Name of SPL part ``i`` (0-based, inferior first) of ``n``."""
    return f"{organ}#part{i + 1}of{n}"


def spl_supports(supports: Sequence, organs: Sequence[str], max_parts: int = SPL_MAX_PARTS,
                 min_part_mm: float = SPL_MIN_PART_MM) -> tuple[list, dict[str, int]]:
    """Support scans whose organs are split along z into parts (SPL).

    The number of parts of an organ comes from the median z extent over the supports that
    have it (:func:`n_parts`), so part i means the same slab of the organ in every support.
    Each derived support has the same image and a label map of the parts only, named
    :func:`part_name`.

    Returns:
        ``(derived supports (same order; one per input support), {organ: parts})``.
    """
    from uae_ray.tasks.support import Support, label_of

    counts: dict[str, int] = {}
    for organ in organs:
        extents = [float(g.box[5] - g.box[2]) for s in supports if (g := s.organ(organ)) is not None]
        counts[organ] = n_parts(float(np.median(extents)), max_parts, min_part_mm) if extents else 1
    derived = []
    for s in supports:
        arr = sitk.GetArrayViewFromImage(s.labels)
        out = np.zeros(arr.shape, dtype=np.uint16)
        names: dict[int, str] = {}
        next_label = 1
        from uae_ray.volume import Grid

        grid = Grid.from_image(s.labels)
        for organ in organs:
            label = label_of(s.names, organ)
            if label is None:
                continue
            zyx = np.argwhere(arr == label)
            if len(zyx) == 0:
                continue
            world = grid.index_to_world(zyx[:, ::-1].astype(np.float64))
            n = counts[organ]
            for i, sel in enumerate(split_parts(world, n)):
                if not sel.any():
                    continue
                idx = zyx[sel]
                out[idx[:, 0], idx[:, 1], idx[:, 2]] = next_label
                names[next_label] = part_name(organ, i, n)
                next_label += 1
        lab = sitk.GetImageFromArray(out)
        lab.CopyInformation(s.labels)
        derived.append(Support(s.spec, s.image, lab, names, f"{s.names_source} (SPL parts)", s.modality))
    return derived, counts


def prompts_from_boxes(target: TargetSlices, boxes: Sequence) -> list[OrganPrompt]:
    """WPL prompts from :class:`~uae_ray.tasks.localize.OrganBox` es (one per organ)."""
    out = []
    for b in boxes:
        usable = b.status in ("ok", "partial_fov") and bool(np.all(np.isfinite(b.box)))
        index_box = target.index_box(b.box) if usable else None
        if not usable:
            status, message = b.status, b.message or f"{b.name}: not localized ({b.status})"
        elif index_box is None:
            status, message = "outside_fov", f"{b.name}: the box lies outside the target"
        else:
            status, message = "ok", ""
        out.append(OrganPrompt(b.name, wpl_slice_boxes(index_box), status, message,
                               np.asarray(b.box, dtype=np.float64), float(getattr(b, "seconds", 0.0))))
    return out


def prompts_from_parts(target: TargetSlices, organs: Sequence[str], counts: dict[str, int],
                       part_boxes: dict[str, object], whole: Sequence | None = None) -> list[OrganPrompt]:
    """SPL prompts from the parts' boxes (``{part name: OrganBox}``).

    An organ none of whose parts was localized falls back to its whole-organ box (``whole``,
    WPL) when given.
    """
    out = []
    whole_by_name = {b.name: b for b in (whole or [])}
    for organ in organs:
        n = counts.get(organ, 1)
        boxes, seconds, world = [], 0.0, []
        statuses = []
        for i in range(n):
            b = part_boxes.get(part_name(organ, i, n))
            if b is None:
                continue
            seconds += float(getattr(b, "seconds", 0.0))
            statuses.append(b.status)
            if b.status in ("ok", "partial_fov") and np.all(np.isfinite(b.box)):
                boxes.append(target.index_box(b.box))
                world.append(np.asarray(b.box, dtype=np.float64))
        slice_boxes = spl_slice_boxes(boxes)
        if slice_boxes:
            w = np.stack(world)
            box_world = np.concatenate([w[:, :3].min(axis=0), w[:, 3:].max(axis=0)])
            out.append(OrganPrompt(organ, slice_boxes, "ok", "", box_world, seconds))
        elif organ in whole_by_name:
            p = prompts_from_boxes(target, [whole_by_name[organ]])[0]
            p.localize_seconds += seconds
            out.append(p)
        else:
            status = statuses[0] if statuses else "no_support"
            out.append(OrganPrompt(organ, {}, status, f"{organ}: no SPL part was localized ({status})",
                                   localize_seconds=seconds))
    return out


def localize_prompts(
    make_localizer: Callable[[Sequence], object],
    supports: Sequence,
    image: sitk.Image,
    target: TargetSlices,
    organs: Sequence[str],
    mode: str = DEFAULT_BOX_MODE,
    modality: str | None = None,
) -> list[OrganPrompt]:
    """Slice prompts of ``organs`` in the target from a few-shot localizer.

    Args:
        make_localizer: ``supports -> localizer`` (an object with ``localize(image, organs,
            modality) -> list[OrganBox]``, e.g. :class:`~uae_ray.tasks.localize.EmbeddingLocalizer`).
        supports: the loaded :class:`~uae_ray.tasks.support.Support` scans.
        image / target: the target scan and its :class:`TargetSlices`.
        organs: organ names.
        mode: ``"wpl"`` (one 3D box per organ) or ``"spl"`` (the organ in parts).
    """
    if mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {mode!r}; expected one of {BOX_MODES}")
    whole = make_localizer(supports).localize(image, list(organs), modality)
    if mode == "wpl":
        return prompts_from_boxes(target, whole)
    derived, counts = spl_supports(supports, organs)
    names = [part_name(o, i, counts[o]) for o in organs for i in range(counts[o])]
    part_boxes = {b.name: b for b in make_localizer(derived).localize(image, names, modality)}
    return prompts_from_parts(target, organs, counts, part_boxes, whole)


def localize_both(
    make_localizer: Callable[[Sequence], object],
    supports: Sequence,
    image: sitk.Image,
    target: TargetSlices,
    organs: Sequence[str],
    modality: str | None = None,
) -> tuple[list[OrganPrompt], list[OrganPrompt], float, float]:
    """WPL and SPL prompts from one localization of the whole organs (shared by both).

    Returns:
        ``(wpl prompts, spl prompts, seconds of the whole-organ localization, seconds of the
        parts' localization)``; SPL's cost is the sum of both.
    """
    t0 = time.perf_counter()
    whole = make_localizer(supports).localize(image, list(organs), modality)
    t1 = time.perf_counter()
    derived, counts = spl_supports(supports, organs)
    names = [part_name(o, i, counts[o]) for o in organs for i in range(counts[o])]
    part_boxes = {b.name: b for b in make_localizer(derived).localize(image, names, modality)}
    t2 = time.perf_counter()
    return (prompts_from_boxes(target, whole), prompts_from_parts(target, organs, counts, part_boxes, whole),
            t1 - t0, t2 - t1)


__all__ = [
    "BOX_MODES",
    "DEFAULT_BOX_MODE",
    "LocalSliceSegmenter",
    "OrganPrompt",
    "OrganSegmentation",
    "SegmentationResult",
    "SliceSegmenter",
    "TargetSlices",
    "localize_both",
    "localize_prompts",
    "mask_index_box",
    "mask_slice_boxes",
    "n_parts",
    "orient",
    "part_name",
    "prompts_from_boxes",
    "prompts_from_parts",
    "restore_orientation",
    "segment_prompts",
    "spl_slice_boxes",
    "spl_supports",
    "split_parts",
    "window_range",
    "window_slices",
    "wpl_slice_boxes",
    "world_box_to_index",
]
