"""Prompts from a few-shot localizer: whole-organ boxes (WPL) and SPL parts."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import SimpleITK as sitk
import numpy as np

from uae_ray.tasks.segment.assembly import OrganPrompt, TargetSlices
from uae_ray.tasks.segment.boxes import n_parts, spl_slice_boxes, split_parts, wpl_slice_boxes
from uae_ray.tasks.segment.segmenter import BOX_MODES, DEFAULT_BOX_MODE, SPL_MAX_PARTS, SPL_MIN_PART_MM


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
                               np.asarray(b.box, dtype=np.float64), float(getattr(b, "seconds", 0.0)),
                               evidence(b)))
    return out


def evidence(box) -> dict[str, float]:
    """The quality figures of a localized box (:class:`~uae_ray.tasks.localize.OrganBox`)."""
    return {k: float(getattr(box, k, float("nan"))) for k in ("verified", "agreement", "fov_fraction", "score")}


def expected_volumes(supports: Sequence, organs: Sequence[str]) -> dict[str, float]:
    """``{organ: median volume (ml) over the supports that have it}`` (NaN when none has it)."""
    out = {}
    for organ in organs:
        vols = [g.volume_ml for s in supports if (g := s.organ(organ)) is not None]
        out[organ] = float(np.median(vols)) if vols else float("nan")
    return out


def _with_volumes(prompts: list[OrganPrompt], supports: Sequence) -> list[OrganPrompt]:
    vols = expected_volumes(supports, [p.name for p in prompts])
    for p in prompts:
        p.expected_ml = vols[p.name]
    return prompts


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
            ev = evidence(whole_by_name[organ]) if organ in whole_by_name else {}
            out.append(OrganPrompt(organ, slice_boxes, "ok", "", box_world, seconds, ev))
        elif organ in whole_by_name:
            p = prompts_from_boxes(target, [whole_by_name[organ]])[0]
            p.localize_seconds += seconds
            out.append(p)
        else:
            status = statuses[0] if statuses else "no_support"
            out.append(OrganPrompt(organ, {}, status, f"{organ}: no SPL part was localized ({status})",
                                   localize_seconds=seconds))
    return out


def _localize_with(make_localizer: Callable[[Sequence], object], image: sitk.Image, modality: str | None):
    """``supports, names -> boxes`` that embeds the target once for every localizer it makes
    (an embedding localizer, which has ``localize_maps``; others localize from the image)."""
    target: dict[str, object] = {}

    def localize(supports: Sequence, names: list[str]) -> list:
        loc = make_localizer(supports)
        if not (hasattr(loc, "localize_maps") and hasattr(loc, "embedder")):
            return loc.localize(image, names, modality)
        if "maps" not in target:
            from uae_ray.matching import embed_image
            from uae_ray.tasks.support import image_box

            target["maps"], target["fov"] = embed_image(image, loc.embedder, modality), image_box(image)
        return loc.localize_maps(target["maps"], target["fov"], names)

    return localize


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
        mode: ``"wpl"`` (one 3D box per organ) or ``"spl"`` (the organ in parts); SPL's two
            localizations (organs, then parts) share one embedding of the target.
    """
    if mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {mode!r}; expected one of {BOX_MODES}")
    localize = _localize_with(make_localizer, image, modality)
    whole = localize(supports, list(organs))
    if mode == "wpl":
        return _with_volumes(prompts_from_boxes(target, whole), supports)
    derived, counts = spl_supports(supports, organs)
    names = [part_name(o, i, counts[o]) for o in organs for i in range(counts[o])]
    part_boxes = {b.name: b for b in localize(derived, names)}
    return _with_volumes(prompts_from_parts(target, organs, counts, part_boxes, whole), supports)


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
    localize = _localize_with(make_localizer, image, modality)
    whole = localize(supports, list(organs))
    t1 = time.perf_counter()
    derived, counts = spl_supports(supports, organs)
    names = [part_name(o, i, counts[o]) for o in organs for i in range(counts[o])]
    part_boxes = {b.name: b for b in localize(derived, names)}
    t2 = time.perf_counter()
    return (_with_volumes(prompts_from_boxes(target, whole), supports),
            _with_volumes(prompts_from_parts(target, organs, counts, part_boxes, whole), supports), t1 - t0, t2 - t1)
