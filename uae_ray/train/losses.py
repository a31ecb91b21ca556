"""Contrastive losses (InfoNCE with mined negatives), SAM style."""

from __future__ import annotations

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
