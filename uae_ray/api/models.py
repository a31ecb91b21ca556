"""Model factories: the embedder, the localizers and the 2D segmenter, in-process or on Triton.

One place decides where a model runs: ``triton_url`` given, the Triton Inference Server's model;
otherwise the checkpoint in this process (``checkpoint=None``: the shipped default).
"""

from __future__ import annotations

import logging

from uae_ray.serving import get_embedder

logger = logging.getLogger(__name__)


def make_localizer(method: str, supports: list, triton_url: str | None = None, checkpoint: str | None = None,
                   medlam_checkpoint: str | None = None, embedding_mode: str | None = None, device: str | None = None):
    """The organ localizer over ``supports``: ``"embedding"`` (:class:`~uae_ray.tasks.localize.
    EmbeddingLocalizer`) or ``"medlam"`` (:class:`~uae_ray.tasks.localize.MedLAMLocalizer`).

    Raises:
        OSError / ValueError: the model cannot be loaded.
    """
    return make_localizer_factory(method, triton_url, checkpoint, medlam_checkpoint, embedding_mode,
                                  device=device)(supports)


def make_segmenter(triton_url: str | None = None, sam_checkpoint: str | None = None, sam_kind: str | None = None,
                   device: str | None = None):
    """The :class:`~uae_ray.tasks.segment.SliceSegmenter`: Triton's ``sam_image_encoder`` +
    ``sam_mask_decoder`` with ``triton_url``, else the model in-process."""
    if triton_url:
        from uae_ray.serving.sam_triton import TritonSliceSegmenter

        if sam_checkpoint is not None:
            logger.warning("--sam-checkpoint %s ignored: Triton at %s serves its own model", sam_checkpoint, triton_url)
        return TritonSliceSegmenter(triton_url)
    from uae_ray.models.inference import resolve_device
    from uae_ray.tasks.segment import LocalSliceSegmenter

    return LocalSliceSegmenter(checkpoint=sam_checkpoint, kind=sam_kind,
                               device=None if device in (None, "auto") else str(resolve_device(device)))


def make_localizer_factory(method: str, triton_url: str | None, checkpoint: str | None,
                           medlam_checkpoint: str | None, embedding_mode: str | None,
                           support_maps: dict | None = None, device: str | None = None,
                           window_mm: float | None = None):
    """``supports -> localizer`` for :func:`~uae_ray.tasks.segment.localize_prompts`.

    Args:
        support_maps: ``{support image URI: EmbeddingMaps}`` computed beforehand (embedding
            localizer only; e.g. once on a cohort job's driver); supports not in it are embedded
            on first use.
        window_mm: embedding localizer: half-size of the coarse-to-fine windows (0: whole-scan
            searches; None: the default, :class:`~uae_ray.tasks.localize.EmbeddingLocalizerConfig`).
    """
    if method == "medlam":
        from uae_ray.models.medlam import load_medlam
        from uae_ray.tasks.localize import MedLAMLocalizer

        model = load_medlam(medlam_checkpoint)
        return lambda supports: MedLAMLocalizer(model, supports)
    from uae_ray.matching.nn import MatcherCache
    from uae_ray.tasks.localize import DEFAULT_EMBEDDING_MODE, EmbeddingLocalizer, EmbeddingLocalizerConfig

    embedder = get_embedder(triton_url, checkpoint=checkpoint, device=device)
    config = EmbeddingLocalizerConfig(mode=embedding_mode or DEFAULT_EMBEDDING_MODE,
                                      **({} if window_mm is None else {"window_mm": window_mm}))
    cache: dict[tuple[str, ...], list] = {}
    known = dict(support_maps or {})
    matchers = MatcherCache()  # across the localizers it makes (SPL: organs, then parts)

    def factory(supports):
        # SPL's derived supports share the images of the originals: reuse their embeddings
        key = tuple(s.spec.image for s in supports)
        maps = cache.get(key)
        if maps is None and key and all(k in known for k in key):
            maps = [known[k] for k in key]
        loc = EmbeddingLocalizer(embedder, supports, config, support_maps=maps, matchers=matchers)
        cache.setdefault(key, loc.support_maps)
        return loc

    return factory


__all__ = ["get_embedder", "make_localizer", "make_localizer_factory", "make_segmenter"]
