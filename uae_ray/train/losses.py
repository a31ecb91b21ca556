"""Contrastive losses: InfoNCE with mined negatives (SAM) and the prototype loss of the UAE
semantic head."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    candidates: torch.Tensor,
    neg_idx: torch.Tensor,
    neg_ok: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE loss of anchors against one positive and selected negatives each.

    Args:
        anchor: (n, C) unit vectors.
        positive: (n, C) unit vectors.
        candidates: (M, C) unit vectors (the negative pool).
        neg_idx: (n, k) long indices into ``candidates``.
        neg_ok: (n, k) bool; False entries are excluded from the denominator.
        temperature: Softmax temperature.

    Returns:
        Scalar mean loss over the anchors (0 when ``n == 0``).
    """
    if anchor.shape[0] == 0:
        return anchor.sum() * 0.0
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = torch.einsum("nc,nkc->nk", anchor, candidates[neg_idx])
    neg = neg.masked_fill(~neg_ok, float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device))


#: Label value of voxels that take no part in the prototype loss (outside the field of view or
#: the body, or an organ of one view that has no counterpart in the other).
IGNORE = -1
#: Label value of unlabelled body voxels (the background class).
BACKGROUND = 0


def class_prototypes(emb: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Normalised mean embedding of each class.

    Args:
        emb: (N, C) embeddings (unit vectors).
        labels: (N,) long class of each embedding.
        ids: (K,) long classes to average (each must occur in ``labels``).

    Returns:
        (K, C) unit prototypes, row k the normalised mean of ``emb[labels == ids[k]]``.
    """
    onehot = (labels[None, :] == ids[:, None]).to(emb.dtype)  # (K, N)
    sums = onehot @ emb
    return F.normalize(sums / onehot.sum(dim=1, keepdim=True).clamp(min=1.0), dim=1)


def balanced_sample(labels: torch.Tensor, ids: torch.Tensor, n_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of up to ``n_points`` voxels, about equally many of each class in ``ids``.

    Each class gets ``ceil(n_points / K)`` random voxels (all of them when it has fewer), so
    small organs are not drowned by large ones.

    Returns:
        (n,) long indices into ``labels``.
    """
    if len(ids) == 0:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    quota = max(1, -(-n_points // len(ids)))
    picks = []
    for i in ids.tolist():
        idx = torch.nonzero(labels == i).reshape(-1)
        if len(idx) > quota:
            perm = torch.randperm(len(idx), generator=generator)[:quota].to(idx.device)
            idx = idx[perm]
        picks.append(idx)
    return torch.cat(picks)


def prototype_loss(
    emb_a: torch.Tensor,
    labels_a: torch.Tensor,
    emb_b: torch.Tensor,
    labels_b: torch.Tensor,
    temperature: float = 0.1,
    n_points: int = 256,
    min_voxels: int = 4,
    background: bool = True,
    extra: torch.Tensor | None = None,
    extra_ok: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """UAE prototypical contrastive loss of view B's voxels against view A's organ prototypes.

    For every organ (label > 0) present in both views (at least ``min_voxels`` voxels in A and
    one in B), the prototype is the normalised mean embedding of its voxels in A; with
    ``background`` the unlabelled body voxels of A (label 0) give one more prototype, used only
    as a negative. Up to ``n_points`` organ voxels of B (balanced over organs,
    :func:`balanced_sample`) are anchors of an InfoNCE over the prototypes: the positive is the
    prototype of the anchor's own organ, the negatives the other organs' prototypes (and the
    background one), plus the rows of ``extra`` that ``extra_ok`` allows (e.g. organ prototypes
    of other scans with other names).

    Args:
        emb_a: (N_a, C) unit embeddings of view A's voxels.
        labels_a: (N_a,) long: organ id, :data:`BACKGROUND` (0) or :data:`IGNORE` (-1).
        emb_b: (N_b, C) unit embeddings of view B's voxels.
        labels_b: (N_b,) long, same id space as ``labels_a``.
        temperature: Softmax temperature (UAE: 0.1).
        n_points: Maximum number of anchors.
        min_voxels: Minimum voxels of an organ (and of the background) in A for a prototype.
        background: Add the background prototype as a negative.
        extra: (M, C) additional negative prototypes, or ``None``.
        extra_ok: Maps the anchors' organ ids (n,) to a (n, M) bool mask of the allowed
            ``extra`` rows; ``None``: all allowed.
        generator: Torch RNG of the anchor draw.

    Returns:
        The scalar mean loss over the anchors, or ``None`` when it is undefined (no organ shared
        by both views, or fewer than two classes to contrast).
    """
    ids_a, counts_a = torch.unique(labels_a[labels_a > BACKGROUND], return_counts=True)
    ids_a = ids_a[counts_a >= min_voxels]
    organs = ids_a[torch.isin(ids_a, labels_b)]
    if len(organs) == 0:
        return None
    classes = organs
    if background and int((labels_a == BACKGROUND).sum()) >= min_voxels:
        classes = torch.cat([organs, organs.new_tensor([BACKGROUND])])
    n_extra = 0 if extra is None else len(extra)
    if len(classes) + n_extra < 2:
        return None
    protos = class_prototypes(emb_a, labels_a, classes)  # (K, C)
    idx = balanced_sample(labels_b, organs, n_points, generator)
    anchors, anchor_ids = emb_b[idx], labels_b[idx]
    logits = anchors @ protos.T / temperature  # (n, K)
    target = (anchor_ids[:, None] == organs[None, :]).float().argmax(dim=1)
    if n_extra:
        neg = anchors @ extra.T / temperature  # type: ignore[union-attr]
        if extra_ok is not None:
            neg = neg.masked_fill(~extra_ok(anchor_ids), float("-inf"))
        logits = torch.cat([logits, neg], dim=1)
    return F.cross_entropy(logits, target)
