"""The UAE semantic head's loss terms for one batch: organ prototypes of one view against the
voxels of the other (:func:`~uae_ray.train.losses.prototype_loss`), both directions, for every
item whose scans have organ label maps."""

from __future__ import annotations

from typing import Callable

import torch

from uae_ray.train.config import TrainConfig
from uae_ray.train.items import ViewPair, view_body_mask
from uae_ray.train.losses import BACKGROUND, IGNORE, class_prototypes, prototype_loss


def semantic_labels(pair: ViewPair, v: int, shape: tuple[int, ...], stride: tuple[int, int, int]) -> torch.Tensor:
    """(N,) long labels of view ``v`` on the semantic map grid (``shape``, (z, y, x) ``stride``):
    organ id, background (0: unlabelled body voxel) or IGNORE (outside the field of view or the body).

    Raises:
        ValueError: the item's label map does not have the semantic map's shape.
    """
    lab = pair.labels[v].clone()  # type: ignore[index]
    if tuple(lab.shape) != tuple(shape):
        raise ValueError(f"label map {tuple(lab.shape)} does not match the semantic map {tuple(shape)}")
    raw = pair.raw[v]
    valid = raw[1, :: stride[0], :: stride[1], :: stride[2]] > 0.99
    body = view_body_mask(raw, stride, pair.body_levels[v])
    lab[~valid] = IGNORE
    lab[(lab == BACKGROUND) & ~body] = IGNORE
    return lab.reshape(-1)


def _names_differ(lookup: torch.Tensor, extra_codes: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``ok(ids) -> (N, M) bool``: anchor label ``ids`` (N,) have another organ name than each of
    the M cross-scan prototypes (name codes ``extra_codes``; ``lookup``: label id -> name code)."""
    return lambda ids: extra_codes[None, :] != lookup[ids][:, None]


def semantic_terms(
    batch: list[ViewPair],
    per_view: list[dict[str, torch.Tensor]],
    cfg: TrainConfig,
    stride: tuple[int, int, int],
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Prototype-loss terms (both directions) of every labelled item of a batch.

    Args:
        batch: The batch items; item ``k``'s views are ``per_view[2k]`` and ``per_view[2k + 1]``.
        per_view: Network outputs per view; ``"semantic"`` is (C, d, h, w) on the semantic grid.
        cfg: Hyper-parameters (``semantic_temperature``, ``semantic_points``, ``semantic_min_voxels``).
        stride: (z, y, x) voxel stride of the semantic map.
        generator: Torch generator of the point sampling.

    Negatives: the other organs (and the background) of the same item, plus the organ
    prototypes of the other items of the batch whose organ name differs from the anchor's
    (aligned by name: a liver of another scan is never a negative for a liver voxel).
    """
    items = []
    for k, pair in enumerate(batch):
        if pair.labels is None:
            continue
        embs, labs = [], []
        for v in (0, 1):
            e = per_view[2 * k + v]["semantic"]
            embs.append(e.reshape(e.shape[0], -1).T)
            labs.append(semantic_labels(pair, v, tuple(e.shape[1:]), stride).to(e.device))
        items.append((embs, labs, pair.label_names))
    if not items:
        return []
    codes: dict[str, int] = {}

    def code(names: dict[int, str], i: int) -> int:
        return codes.setdefault(names.get(i, f"label_{i}"), len(codes))

    protos = []  # per item: organ prototypes of view A and their name codes (cross-scan negatives)
    for embs, labs, names in items:
        ids, counts = torch.unique(labs[0][labs[0] > BACKGROUND], return_counts=True)
        ids = ids[counts >= cfg.semantic_min_voxels]
        vec = class_prototypes(embs[0], labs[0], ids)
        protos.append((vec, torch.tensor([code(names, i) for i in ids.tolist()], dtype=torch.long, device=vec.device)))
    terms = []
    for j, (embs, labs, names) in enumerate(items):
        others = [protos[i] for i in range(len(items)) if i != j and len(protos[i][1])]
        extra, extra_ok = None, None
        if others:
            extra = torch.cat([o[0] for o in others])
            extra_codes = torch.cat([o[1] for o in others])
            top = max(int(max(lab.max() for lab in labs)), 0)
            lookup = torch.tensor([code(names, i) if i > 0 else -1 for i in range(top + 1)], dtype=torch.long,
                                  device=extra.device)
            extra_ok = _names_differ(lookup, extra_codes)

        for a, b in ((0, 1), (1, 0)):
            t = prototype_loss(embs[a], labs[a], embs[b], labs[b], cfg.semantic_temperature, cfg.semantic_points,
                               cfg.semantic_min_voxels, True, extra, extra_ok, generator)
            if t is not None:
                terms.append(t)
    return terms
