"""Reading inputs from local paths or ``s3://`` URIs: images, label maps, label-name files,
supports (``IMAGE:LABELS``), organ lists.

The core (:mod:`uae_ray.tasks`) takes SimpleITK images and text; this module is where URIs become
them. Errors are one line naming the file and the cause (:class:`~uae_ray.volume.VolumeError`,
:class:`~uae_ray.tasks.support.SupportError`).
"""

from __future__ import annotations

import logging
import os

import SimpleITK as sitk

from uae_ray.storage.images import read_image_uri, read_labels_uri
from uae_ray.tasks.points_io import LesionPoints, NamedPoints, parse_lesions_csv, parse_points
from uae_ray.tasks.support import Support, SupportSpec, make_support, parse_support, read_label_names, read_local_text
from uae_ray.volume import detect_modality
from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)

def read_image(image: sitk.Image | str | os.PathLike[str]) -> sitk.Image:
    """A SimpleITK image as is, or the 3D image at a local path / ``s3://`` URI (file or DICOM
    series folder); raises :class:`~uae_ray.volume.VolumeError` naming the URI."""
    return image if isinstance(image, sitk.Image) else read_image_uri(image)


def read_labels(labels: sitk.Image | str | os.PathLike[str]) -> sitk.Image:
    """An integer label map (SimpleITK image, local path or ``s3://`` URI)."""
    return labels if isinstance(labels, sitk.Image) else read_labels_uri(labels)


def read_text(uri: str) -> str | None:
    """Text of a local file or ``s3://`` object; ``None`` when it does not exist."""
    if uri[:5].lower() == "s3://":
        from uae_ray.storage.objects import exists, read_bytes

        return read_bytes(uri).decode("utf-8") if exists(uri) else None
    return read_local_text(uri)


def _text_of(uri: str, kind: str) -> str:
    from uae_ray.tasks.points_io import PointsFileError

    try:
        text = read_text(str(uri))
    except UnicodeDecodeError:
        raise PointsFileError(f"{uri}: {kind} file is not text (UTF-8)") from None
    except OSError as e:
        raise PointsFileError(f"{uri}: cannot read {kind} file ({e.strerror or e})") from None
    if text is None:
        raise PointsFileError(f"{uri}: cannot read {kind} file (no such file)")
    return text


def read_points(uri: str | os.PathLike[str]) -> NamedPoints:
    """Named LPS points from a ``name,x,y,z`` CSV or a Slicer ``.mrk.json``, local or ``s3://``."""
    return parse_points(_text_of(str(uri), "points"), str(uri))


def read_lesions(uri: str | os.PathLike[str]) -> LesionPoints:
    """Lesions from a ``name,x,y,z[,radius_mm]`` CSV or a Slicer ``.mrk.json``, local or ``s3://``."""
    return parse_lesions_csv(_text_of(str(uri), "lesions"), str(uri))


def read_lesion_mask(uri: str) -> LesionPoints:
    """Lesions of a label map (local or ``s3://``): one per label value, named by a sidecar
    ``<stem>.json`` or ``meta.json`` where there is one (else ``lesion_<id>``)."""
    from uae_ray.tasks.label_names import parse_label_names, sidecar_paths
    from uae_ray.tasks.track import lesions_from_mask

    names: dict[int, str] = {}
    for candidate in sidecar_paths(uri):
        text = read_text(candidate)
        if text is not None:
            names = parse_label_names(text, candidate)
            break
    return lesions_from_mask(read_labels_uri(uri), names, source=uri)


def read_image_and_modality(uri: sitk.Image | str, modality: str | None = None, name: str | None = None
                            ) -> tuple[sitk.Image, str]:
    """The image and its modality (``modality`` given, else detected from the image and its name)."""
    image = read_image(uri)
    return image, detect_modality(image, name or (uri if isinstance(uri, str) else "image"), modality)


def load_support(spec: SupportSpec | str, label_names: str | None = None, modality: str | None = None) -> Support:
    """Reads a support's image and label map (local or ``s3://``) and finds its organ names
    (``label_names`` file, ``<labels stem>.json`` or ``meta.json`` beside the labels).

    Raises:
        SupportError / VolumeError: a one-line message naming the file and the cause.
    """
    if isinstance(spec, str):
        spec = parse_support(spec)
    image = read_image_uri(spec.image)
    labels = read_labels_uri(spec.labels)
    names, source = read_label_names(spec.labels, label_names, read_text)
    return make_support(spec, image, labels, names, source, modality)


def load_supports(supports: list[str], label_names: str | None, modality: str | None) -> tuple[list[Support], int]:
    """Loads every ``IMAGE:LABELS`` support; one that cannot be used is logged (one line naming
    the file) and counted, and the others go on.

    Returns:
        ``(loaded supports, number that failed)``.
    """
    loaded, failed = [], 0
    for text in supports:
        try:
            loaded.append(load_support(text, label_names, modality))
        except Exception as e:  # one bad support is reported; the others still run
            logger.error("%s", one_line(e))
            failed += 1
    return loaded, failed


def parse_organs(text: str | list[str]) -> list[str]:
    """Organ names from ``"liver,spleen"`` (or a list), stripped, in order, without repeats."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    seen: list[str] = []
    for part in parts:
        name = part.strip()
        if name and name not in seen:
            seen.append(name)
    return seen


__all__ = ["load_support", "load_supports", "parse_organs", "read_image", "read_image_and_modality", "read_image_uri",
           "read_labels", "read_text"]
