"""Organ prompts, slice-batched segmentation and assembly of the 3D label map."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from uae_ray.models.sam2d import logits_to_slice, prepare_slices, Sam2DConfig, scale_boxes
from uae_ray.tasks.segment.boxes import world_box_to_index
from uae_ray.tasks.segment.segmenter import SliceBoxes, SliceSegmenter
from uae_ray.tasks.segment.slices import orient, restore_orientation, window_range, window_slices


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
        evidence: the whole-organ localization's quality figures (``verified``, ``agreement``,
            ``fov_fraction``, ``score``; see :class:`~uae_ray.tasks.localize.OrganBox`).
        expected_ml: the median volume of the organ in the supports (NaN when unknown).
    """

    name: str
    boxes: SliceBoxes
    status: str = "ok"
    message: str = ""
    box_world: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    localize_seconds: float = 0.0
    evidence: dict[str, float] = field(default_factory=dict)
    expected_ml: float = float("nan")


@dataclass
class OrganSegmentation:
    """What happened to one organ (``label`` = its 1-based position in ``--organs``).

    ``status`` is the localizer's or the segmentation's until :meth:`~uae_ray.tasks.segment.status.StatusCalibration.grade`
    grades the mask (``ok | low_confidence | not_found | outside_view``); ``quality`` is then the
    calibrated probability that the mask's Dice is at least 0.5, and ``evidence`` the figures it
    was computed from."""

    name: str
    label: int
    status: str
    message: str
    n_slices: int
    n_voxels: int
    volume_ml: float
    seconds: float
    localize_seconds: float = 0.0
    quality: float = float("nan")
    evidence: dict[str, float] = field(default_factory=dict)


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
    calibration=None,
) -> SegmentationResult:
    """Segments every organ's slice boxes and assembles the 3D label map.

    Slices are processed in batches of ``slice_batch``: each slice's embedding is computed once
    and every box on it is decoded from it. Label k = ``prompts[k - 1]``. With a
    :class:`~uae_ray.tasks.segment.status.StatusCalibration`, every mask is graded
    (``ok | low_confidence | not_found | outside_view``, with its quality figure).
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
                                        float(organ_time[k]), p.localize_seconds,
                                        evidence={**p.evidence, "expected_ml": p.expected_ml}))
    result = SegmentationResult(
        labels=image,
        names={k: p.name for k, p in enumerate(prompts, start=1)},
        organs=organs,
        model_version=segmenter.version,
        seconds=time.perf_counter() - t0,
        encode_seconds=enc_s,
        decode_seconds=dec_s,
        n_slices_encoded=len(zs_all),
    )
    if calibration is not None:
        calibration.grade(result)
    return result
