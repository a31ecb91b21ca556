"""Annotated support scans for few-shot tasks (localization, segmentation).

A support is given on the command line as ``IMAGE:LABELS``; organ names come from, in this
order (DESIGN.md): a ``--label-names FILE`` (JSON ``{"1": "liver", ...}``), a sidecar
``<LABELS minus .nii.gz>.json``, or a ``meta.json`` beside the label file with a ``labels``
map (as in ``../shared/data``).

Geometry: world points are ITK/SimpleITK physical points (LPS, mm), arrays (N, 3) in x, y, z
order. The six extreme points of an organ are ordered ``xmin, xmax, ymin, ymax, zmin, zmax``
(:data:`EXTREME_NAMES`); a box is ``(xmin, ymin, zmin, xmax, ymax, zmax)`` as in the boxes CSV.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from uae_ray.tasks.label_names import LabelNamesError, parse_label_names, sidecar_paths
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)

#: Order of the six extreme points of an organ.
EXTREME_NAMES = ("xmin", "xmax", "ymin", "ymax", "zmin", "zmax")
#: Columns of a box, as in the boxes CSV contract.
BOX_COLUMNS = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
#: Label-file suffixes stripped to find the sidecar JSON (longest first).


class SupportError(ValueError):
    """A support argument or file that cannot be used; one line, naming the file and the cause."""


# -- IMAGE:LABELS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportSpec:
    """One ``--support IMAGE:LABELS`` argument (each a local path or an s3:// URI)."""

    image: str
    labels: str

    def __str__(self) -> str:
        return f"{self.image}:{self.labels}"


def _split_points(text: str) -> list[int]:
    """Indices of the ``:`` that may separate IMAGE from LABELS: not the ``:`` of a ``scheme://``
    and not a Windows drive letter (``C:\\``)."""
    out = []
    for i, ch in enumerate(text):
        if ch != ":":
            continue
        if text[i + 1 : i + 3] == "//":  # s3://, file://
            continue
        if i == 1 and text[0].isalpha() and text[2:3] in ("\\", "/"):  # C:\ or C:/ at the start
            continue
        out.append(i)
    return out


def _exists(uri: str) -> bool:
    if uri[:5].lower() == "s3://":
        return True  # checked when read; listing here would need credentials
    return Path(os.path.expanduser(uri.removeprefix("file://"))).exists()


def parse_support(text: str) -> SupportSpec:
    """Parses ``IMAGE:LABELS``.

    ``s3://`` (and ``file://``) URIs keep their ``://``. When a path itself contains a ``:``,
    the split where both sides exist is taken.

    Raises:
        SupportError: no separator, an empty side, or an ambiguous split.
    """
    text = text.strip()
    cuts = [i for i in _split_points(text) if 0 < i < len(text) - 1]
    if not cuts:
        raise SupportError(f"{text}: expected IMAGE:LABELS (an image and its label map joined by ':')")
    if len(cuts) > 1:
        existing = [i for i in cuts if _exists(text[:i]) and _exists(text[i + 1 :])]
        if len(existing) != 1:
            raise SupportError(
                f"{text}: ambiguous IMAGE:LABELS ({len(cuts)} ':' separators and "
                f"{len(existing)} splits into two existing paths)"
            )
        cuts = existing
    image, labels = text[: cuts[0]], text[cuts[0] + 1 :]
    return SupportSpec(image, labels)


# -- organ names --------------------------------------------------------------------------------


def read_local_text(path: str) -> str | None:
    """Text of a local file (``file://`` and ``~`` allowed), None when it does not exist."""
    p = Path(os.path.expanduser(path.removeprefix("file://")))
    return p.read_text(encoding="utf-8") if p.is_file() else None


def _names(text: str, source: str) -> dict[int, str]:
    try:
        return parse_label_names(text, source)
    except LabelNamesError as e:
        raise SupportError(str(e)) from None


def read_label_names(labels: str, label_names: str | None = None,
                     read_text: Callable[[str], str | None] = read_local_text) -> tuple[dict[int, str], str]:
    """Organ names of a label file: ``{label id: name}`` and where they came from.

    Args:
        labels: The label file.
        label_names: An explicit JSON file (``--label-names``; any form of
            :func:`~uae_ray.tasks.label_names.parse_label_names`, nnU-Net's included); wins.
        read_text: ``uri -> text or None`` (default: local files; the API layer passes one that
            also reads ``s3://``).

    Raises:
        SupportError: none of the three sources exists, or the one found is malformed.
    """
    if label_names:
        text = read_text(label_names)
        if text is None:
            raise SupportError(f"{label_names}: label-names file not found")
        return _names(text, label_names), label_names
    sidecar, meta = sidecar_paths(labels)
    text = read_text(sidecar)
    if text is not None:
        return _names(text, sidecar), sidecar
    text = read_text(meta)
    if text is not None:
        if '"labels"' not in text:
            raise SupportError(f"{meta}: has no 'labels' map of label ids to organ names")
        return _names(text, meta), meta
    raise SupportError(
        f"{labels}: no organ names: pass --label-names FILE, or put {Path(sidecar).name} "
        "(or a meta.json with a 'labels' map) beside the label file"
    )


def label_of(names: dict[int, str], organ: str) -> int | None:
    """The label id named ``organ`` (exact, then case-insensitive), or None."""
    for label, name in names.items():
        if name == organ:
            return label
    low = organ.lower()
    for label, name in names.items():
        if name.lower() == low:
            return label
    return None


# -- geometry of an organ -----------------------------------------------------------------------


def organ_voxels(labels: sitk.Image, label: int) -> np.ndarray:
    """World positions (N, 3, LPS mm) of the voxel centres labelled ``label`` (may be empty)."""
    arr = sitk.GetArrayViewFromImage(labels)  # z, y, x
    zyx = np.argwhere(arr == label)
    if len(zyx) == 0:
        return np.zeros((0, 3))
    return Grid.from_image(labels).index_to_world(zyx[:, ::-1].astype(np.float64))


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def organ_volume_ml(labels: sitk.Image, label: int) -> float:
    """Volume of the organ in millilitres (voxel count x voxel volume)."""
    arr = sitk.GetArrayViewFromImage(labels)
    return float(np.count_nonzero(arr == label)) * voxel_volume_ml(labels)


def extreme_points(world: np.ndarray, slab_mm: float | np.ndarray = 3.0) -> np.ndarray:
    """The six extreme points of a point set (an organ's voxel centres).

    For each world axis and side, the extreme coordinate is the min (max) over the points; the
    other two coordinates are the centroid of the *slab* of points within ``slab_mm`` of it
    (more robust than a single voxel). So the per-axis min/max of the six points is exactly the
    bounding box of the voxel centres.

    Args:
        world: (N, 3) world points, N >= 1.
        slab_mm: Slab thickness (mm), one value or one per axis (x, y, z).

    Returns:
        (6, 3) points in :data:`EXTREME_NAMES` order.
    """
    world = np.asarray(world, dtype=np.float64)
    if world.ndim != 2 or world.shape[1] != 3 or len(world) == 0:
        raise ValueError(f"extreme_points needs (N>=1, 3) points; got shape {world.shape}")
    slab = np.broadcast_to(np.asarray(slab_mm, dtype=np.float64), (3,))
    out = np.zeros((6, 3))
    for axis in range(3):
        c = world[:, axis]
        for side, ext in enumerate((c.min(), c.max())):
            sel = np.abs(c - ext) <= slab[axis] + 1e-6
            p = world[sel].mean(axis=0)
            p[axis] = ext
            out[2 * axis + side] = p
    return out


def box_of_points(points: np.ndarray) -> np.ndarray:
    """(6,) box ``xmin, ymin, zmin, xmax, ymax, zmax`` of points (N, 3)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.concatenate([p.min(axis=0), p.max(axis=0)])


def slab_thickness(image: sitk.Image, minimum_mm: float = 2.0) -> np.ndarray:
    """Per world axis: the larger of ``minimum_mm`` and one voxel step along that axis."""
    m = Grid.from_image(image).index_to_world_matrix
    return np.maximum(minimum_mm, np.abs(m).max(axis=1) * 1.01)


def image_box(image: sitk.Image) -> np.ndarray:
    """World box (6,) of the image's voxel centres (its field of view)."""
    return box_of_points(Grid.from_image(image).corners_world())


# -- a loaded support ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OrganGeometry:
    """One organ of a support scan.

    Attributes:
        name: organ name.
        label: its label id.
        extremes: (6, 3) extreme points (:data:`EXTREME_NAMES` order), LPS mm.
        box: (6,) bounding box of the voxel centres.
        centroid: (3,) mean voxel centre.
        volume_ml: organ volume.
        n_voxels: labelled voxels.
        cut: (6,) bool: the organ touches the image border on that side (``EXTREME_NAMES``
            order), so the extreme point there is the field of view's, not the organ's.
    """

    name: str
    label: int
    extremes: np.ndarray
    box: np.ndarray
    centroid: np.ndarray
    volume_ml: float
    n_voxels: int
    cut: np.ndarray


@dataclass
class Support:
    """An annotated support scan: the image, its label map and the organ names.

    Attributes:
        spec: where it came from.
        image: the image.
        labels: the label map (world geometry of its own; usually the image's grid).
        names: ``{label id: organ name}``.
        names_source: the file the names came from.
        modality: "CT" or "MR".
    """

    spec: SupportSpec
    image: sitk.Image
    labels: sitk.Image
    names: dict[int, str]
    names_source: str
    modality: str
    _organs: dict[str, OrganGeometry | None] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.spec)

    def has(self, organ: str) -> bool:
        """True when the names map has ``organ`` and the label map holds at least one voxel of it."""
        return self.organ(organ) is not None

    def organ(self, organ: str) -> OrganGeometry | None:
        """Geometry of ``organ`` (cached), None when its name or voxels are missing."""
        if organ not in self._organs:
            self._organs[organ] = self._compute(organ)
        return self._organs[organ]

    def missing_reason(self, organ: str) -> str:
        """Why :meth:`organ` is None (one line naming the label file)."""
        label = label_of(self.names, organ)
        if label is None:
            return f"{self.spec.labels}: no label named {organ!r}{did_you_mean(organ, self.names.values())} " \
                   f"(names from {self.names_source})"
        return f"{self.spec.labels}: label {label} ({organ}) has no voxels"

    def organ_points(self, organ: str) -> np.ndarray:
        """World positions of the organ's voxel centres (N, 3)."""
        label = label_of(self.names, organ)
        return organ_voxels(self.labels, label) if label is not None else np.zeros((0, 3))

    def _compute(self, organ: str) -> OrganGeometry | None:
        label = label_of(self.names, organ)
        if label is None:
            return None
        arr = sitk.GetArrayViewFromImage(self.labels)
        zyx = np.argwhere(arr == label)
        if len(zyx) == 0:
            return None
        grid = Grid.from_image(self.labels)
        world = grid.index_to_world(zyx[:, ::-1].astype(np.float64))
        ext = extreme_points(world, slab_thickness(self.labels))
        return OrganGeometry(
            name=organ,
            label=label,
            extremes=ext,
            box=box_of_points(ext),
            centroid=world.mean(axis=0),
            volume_ml=len(zyx) * voxel_volume_ml(self.labels),
            n_voxels=len(zyx),
            cut=_cut_sides(zyx, arr.shape, grid),
        )


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'liver'?)`` for the closest of ``choices`` (case-insensitive), else ``""``."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def probable_typos(supports: list[Support] | tuple[Support, ...], organs: list[str] | tuple[str, ...]) -> list[str]:
    """One line per organ that no support names but one names something close to (``livr``:
    did you mean ``liver``?). An organ with no close name (absent from these supports) is not a
    typo: the verbs mark its row and go on."""
    named = sorted({n for s in supports for n in s.names.values()})
    lines = []
    for o in organs:
        hint = did_you_mean(o, named)
        if hint and all(label_of(s.names, o) is None for s in supports):
            lines.append(f"{o}: no support names this organ{hint}; the supports name: {', '.join(named)}")
    return lines


def partial_supports(
    supports: list[Support] | tuple[Support, ...], organs: list[str] | tuple[str, ...]
) -> list[tuple[Support, str]]:
    """``(support, one line)`` per support that lacks some of ``organs`` that another support has
    (organs that no support has are left to the caller); the line names its label file, the
    organs and why. For logging once per job rather than once per (support, organ).
    """
    somewhere = [o for o in organs if any(s.has(o) for s in supports)]
    lines = []
    for s in supports:
        lacking = [o for o in somewhere if not s.has(o)]
        if not lacking:
            continue
        unnamed = [o for o in lacking if label_of(s.names, o) is None]
        empty = [o for o in lacking if o not in unnamed]
        why = []
        if unnamed:
            why.append(f"no label named {', '.join(repr(o) for o in unnamed)} (names from {s.names_source})")
        if empty:
            why.append(f"no voxels labelled {', '.join(empty)}")
        lines.append((s, f"{s.spec.labels}: {'; '.join(why)}; support {s.spec.image} is not used for {', '.join(lacking)}"))
    return lines


def _cut_sides(zyx: np.ndarray, shape_zyx: tuple[int, ...], grid: Grid) -> np.ndarray:
    """(6,) bool in EXTREME_NAMES order: the organ reaches the image's first/last slice along the
    image axis that runs closest to that world axis."""
    cut = np.zeros(6, dtype=bool)
    d = grid.direction_matrix
    idx_xyz = zyx[:, ::-1]
    size_xyz = np.asarray(shape_zyx[::-1])
    for world_axis in range(3):
        img_axis = int(np.argmax(np.abs(d[world_axis])))
        sign = np.sign(d[world_axis, img_axis]) or 1.0
        at_lo = bool((idx_xyz[:, img_axis] == 0).any())
        at_hi = bool((idx_xyz[:, img_axis] == size_xyz[img_axis] - 1).any())
        lo, hi = (at_lo, at_hi) if sign > 0 else (at_hi, at_lo)
        cut[2 * world_axis], cut[2 * world_axis + 1] = lo, hi
    return cut


def make_support(spec: SupportSpec, image: sitk.Image, labels: sitk.Image, names: dict[int, str], source: str,
                 modality: str | None = None) -> Support:
    """A :class:`Support` from an image and label map already read (``modality``: the
    ``--modality`` flag or ``None`` to detect it); warns when the two grids differ."""
    from uae_ray.volume import detect_modality

    if labels.GetSize() != image.GetSize() or not np.allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-2):
        logger.warning("%s: label map is on a different grid than %s (extreme points use its own geometry)",
                       spec.labels, spec.image)
    return Support(spec, image, labels, names, source, detect_modality(image, spec.image, modality))


__all__ = [
    "BOX_COLUMNS",
    "EXTREME_NAMES",
    "OrganGeometry",
    "Support",
    "SupportError",
    "SupportSpec",
    "box_of_points",
    "extreme_points",
    "image_box",
    "label_of",
    "make_support",
    "organ_volume_ml",
    "organ_voxels",
    "parse_support",
    "partial_supports",
    "read_label_names",
    "read_local_text",
    "sidecar_paths",
    "probable_typos",
    "did_you_mean",
    "slab_thickness",
]
