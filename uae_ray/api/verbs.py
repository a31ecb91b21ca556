"""One call per verb, on SimpleITK images or paths / ``s3://`` URIs, returning typed results.

These are what the ``uae-ray`` commands run, without the argument parsing and exit codes.
World coordinates everywhere are x, y, z in the images' physical frame (LPS, mm). Errors are
raised, one line naming the input and the cause: :class:`~uae_ray.volume.VolumeError` (an image
that cannot be read or used), :class:`~uae_ray.tasks.points_io.PointsFileError`,
:class:`~uae_ray.tasks.support.SupportError`, :class:`~uae_ray.tasks.register.RegistrationError`,
``ValueError`` (e.g. a template point outside the template).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from uae_ray.api.inputs import load_support, parse_organs, read_image_and_modality, read_lesions, read_points
from uae_ray.api.models import get_embedder, make_localizer, make_localizer_factory, make_segmenter
from uae_ray.api.predictor import ImageInput
from uae_ray.matching import DEFAULT_METHOD, Embedder
from uae_ray.tasks.landmarks import LandmarkDetector
from uae_ray.tasks.localize import OrganBox
from uae_ray.tasks.points_io import Detection, LesionPoints, NamedPoints, Track
from uae_ray.tasks.register import Registrar, RegistrationResult
from uae_ray.tasks.segment import DEFAULT_BOX_MODE, SegmentationResult, TargetSlices, localize_prompts, segment_prompts
from uae_ray.tasks.segment.status import default_calibration
from uae_ray.tasks.support import Support
from uae_ray.tasks.track import LesionTracker


def _points(points: NamedPoints | str | dict[str, Sequence[float]]) -> NamedPoints:
    if isinstance(points, NamedPoints):
        return points
    if isinstance(points, dict):
        return NamedPoints(tuple(points), np.asarray(list(points.values()), dtype=np.float64).reshape(-1, 3))
    return read_points(points)


def landmarks(template: ImageInput, points: NamedPoints | str | dict[str, Sequence[float]],
              targets: Sequence[ImageInput], method: str = DEFAULT_METHOD, embedder: Embedder | None = None,
              checkpoint: str | None = None, modality: str | None = None) -> list[Detection]:
    """Finds a template's named points in every target (the template is embedded once).

    Args:
        points: ``{name: (x, y, z)}`` (LPS mm), a :class:`NamedPoints`, or a ``name,x,y,z`` CSV.
        targets: Images or paths / URIs; a detection's ``target`` is the path, or ``"target<i>"``.

    Returns:
        One :class:`~uae_ray.tasks.points_io.Detection` per (target, point): ``x, y, z`` LPS mm,
        ``score`` (cosine), ``found`` (False: abstained, the position is the best estimate).
    """
    embedder = embedder or get_embedder(checkpoint=checkpoint)
    image, mod = read_image_and_modality(template, modality)
    detector = LandmarkDetector(embedder, image, _points(points), mod, method)
    out: list[Detection] = []
    for i, target in enumerate(targets):
        name = str(target) if not hasattr(target, "GetSize") else f"target{i}"
        t_image, t_mod = read_image_and_modality(target, modality, name)
        out += detector.detect(t_image, name, t_mod)
    return out


def track(baseline: ImageInput, followup: ImageInput, lesions: LesionPoints | str,
          method: str = DEFAULT_METHOD, embedder: Embedder | None = None, checkpoint: str | None = None,
          modality: str | None = None) -> list[Track]:
    """Tracks baseline lesions (``name,x,y,z[,radius_mm]`` CSV or :class:`LesionPoints`) into a
    follow-up scan; one :class:`~uae_ray.tasks.points_io.Track` per lesion (LPS mm, score, status)."""
    embedder = embedder or get_embedder(checkpoint=checkpoint)
    b_image, b_mod = read_image_and_modality(baseline, modality)
    f_image, f_mod = read_image_and_modality(followup, modality)
    tracker = LesionTracker(embedder, b_image, lesions if isinstance(lesions, LesionPoints) else read_lesions(lesions),
                            b_mod, method)
    return tracker.track(f_image, f_mod)


def register(fixed: ImageInput, moving: ImageInput, transform: str = "rigid", refine: bool = False,
             embedder: Embedder | None = None, checkpoint: str | None = None, fixed_modality: str | None = None,
             moving_modality: str | None = None) -> RegistrationResult:
    """A ``rigid`` or ``affine`` transform fixed -> moving (SimpleITK convention: it maps fixed
    physical points to moving ones) from embedding correspondences, with its quality figures.

    Raises:
        RegistrationError: too few consistent correspondences (nothing to trust).
    """
    embedder = embedder or get_embedder(checkpoint=checkpoint)
    f_image, f_mod = read_image_and_modality(fixed, fixed_modality)
    m_image, m_mod = read_image_and_modality(moving, moving_modality)
    return Registrar(embedder, f_image, f_mod, fixed_name=str(fixed) if isinstance(fixed, str) else "<fixed>").register(
        m_image, transform, m_mod, refine, moving_name=str(moving) if isinstance(moving, str) else "<moving>")


def _supports(supports: Sequence[Support | str], label_names: str | None, modality: str | None) -> list[Support]:
    return [s if isinstance(s, Support) else load_support(s, label_names, modality) for s in supports]


def localize(supports: Sequence[Support | str], target: ImageInput, organs: str | Sequence[str],
             method: str = "embedding", label_names: str | None = None, checkpoint: str | None = None,
             modality: str | None = None) -> list[OrganBox]:
    """Boxes of ``organs`` in the target from k annotated supports (``"IMAGE:LABELS"`` strings
    or loaded :class:`Support`); one :class:`~uae_ray.tasks.localize.OrganBox` per organ
    (world box LPS mm, status)."""
    loaded = _supports(supports, label_names, modality)
    image, mod = read_image_and_modality(target, modality)
    return make_localizer(method, loaded, checkpoint=checkpoint).localize(image, parse_organs(organs), mod)


def segment(supports: Sequence[Support | str], target: ImageInput, organs: str | Sequence[str],
            boxes: str = DEFAULT_BOX_MODE, method: str = "embedding", label_names: str | None = None,
            checkpoint: str | None = None, sam_checkpoint: str | None = None,
            modality: str | None = None) -> SegmentationResult:
    """Label map of ``organs`` in the target (label k = the k-th organ) from k supports: the
    organs are localized, their boxes prompt the 2D segmenter slice by slice (MedLSAM)."""
    loaded = _supports(supports, label_names, modality)
    image, mod = read_image_and_modality(target, modality)
    segmenter = make_segmenter(None, sam_checkpoint)
    prepared = TargetSlices(image, mod, segmenter.config)
    factory = make_localizer_factory(method, None, checkpoint, None, None)
    prompts = localize_prompts(factory, loaded, image, prepared, parse_organs(organs), boxes, mod)
    return segment_prompts(segmenter, prepared, prompts, calibration=default_calibration())


__all__ = ["landmarks", "localize", "register", "segment", "track"]
