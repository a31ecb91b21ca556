"""Lossy codecs for embedding vectors (numpy only; the storage layer knows nothing of models).

Both work on a (N, C) float array of N vectors of C channels and return what
:mod:`uae_ray.storage.embeddings` stores (codes in the rows, parameters in the file's metadata).

* **int8**: symmetric per-channel quantisation, ``code = round(x / scale)`` with
  ``scale = max |x| / 127`` of that channel; 1 byte per channel.
* **rpq** (residual product quantisation): the C channels are cut into ``m`` subspaces of
  ``C / m``; each subspace is quantised in ``stages`` passes, each pass coding the residual
  of the previous ones with one of 16 k-means centroids (4 bits). With 2 stages a subspace
  takes one byte (two nibbles): 1 byte per ``C / m`` channels, e.g. 8 bytes for 32 channels
  with ``m = 8`` (4x smaller than int8, 8x smaller than float16); 3 stages take 1.5 bytes.

The bytes and the accuracy cost of the storage tiers built on these, measured on test patients,
are in ``docs/benchmarks.md`` (storage tiers).
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127
RPQ_CENTROIDS = 16  # 4-bit codes: two stages share a byte
_KMEANS_ITERS = 12
_KMEANS_SAMPLE = 16384


def int8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 quantisation.

    Args:
        x: (N, C) float vectors.

    Returns:
        ``(codes, scales)``: (N, C) int8 and (C,) float32 (``x ~= codes * scales``).
    """
    x = np.asarray(x, dtype=np.float32)
    scales = np.abs(x).max(axis=0) / INT8_MAX if len(x) else np.ones(x.shape[1], np.float32)
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def int8_decode(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(N, C) int8 codes and (C,) scales -> (N, C) float32."""
    return codes.astype(np.float32) * np.asarray(scales, np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, d) points, (k, d) centroids -> (N,) index of the nearest centroid (squared L2)."""
    d2 = (centroids * centroids).sum(1)[None, :] - 2.0 * (x @ centroids.T)
    return d2.argmin(axis=1)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means on a sample of ``x`` (N, d); returns (k, d) float32 centroids."""
    if len(x) > _KMEANS_SAMPLE:
        x = x[rng.choice(len(x), _KMEANS_SAMPLE, replace=False)]
    if len(x) == 0:
        return np.zeros((k, x.shape[1]), np.float32)
    centroids = x[rng.choice(len(x), k, replace=len(x) < k)].copy()
    for _ in range(_KMEANS_ITERS):
        idx = _nearest(x, centroids)
        for j in range(k):
            members = x[idx == j]
            if len(members):
                centroids[j] = members.mean(axis=0)
            else:  # re-seed an empty cluster on a random point
                centroids[j] = x[rng.integers(len(x))]
    return centroids.astype(np.float32)


def rpq_train(x: np.ndarray, subspaces: int, stages: int = 2, seed: int = 0) -> np.ndarray:
    """Learn a residual product quantiser on the vectors to be coded.

    Args:
        x: (N, C) float vectors; C must be a multiple of ``subspaces``.
        subspaces: m, the number of channel groups (each ``C / m`` channels).
        stages: Residual passes per subspace (2: one byte per subspace).
        seed: k-means seed (the codebook is stored with the codes, so decoding needs no seed).

    Returns:
        (stages, m, 16, C / m) float32 codebook.
    """
    x = np.asarray(x, dtype=np.float32)
    n, c = x.shape
    if c % subspaces:
        raise ValueError(f"{c} channels do not split into {subspaces} subspaces")
    d = c // subspaces
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, min(n, _KMEANS_SAMPLE), replace=False)] if n else x
    codebook = np.zeros((stages, subspaces, RPQ_CENTROIDS, d), np.float32)
    residual = sample.copy()
    for s in range(stages):
        for j in range(subspaces):
            part = residual[:, j * d:(j + 1) * d]
            codebook[s, j] = _kmeans(part, RPQ_CENTROIDS, rng)
            part -= codebook[s, j][_nearest(part, codebook[s, j])]
    return codebook


def rpq_encode(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Code vectors with a codebook of :func:`rpq_train`.

    Args:
        x: (N, C) float vectors.
        codebook: (stages, m, 16, C / m).

    Returns:
        (N, m, stages) uint8 centroid indices (0..15).
    """
    stages, m, _, d = codebook.shape
    residual = np.array(x, dtype=np.float32, copy=True)
    codes = np.empty((len(residual), m, stages), np.uint8)
    for s in range(stages):
        for j in range(m):
            part = residual[:, j * d:(j + 1) * d]
            idx = _nearest(part, codebook[s, j])
            codes[:, j, s] = idx
            part -= codebook[s, j][idx]
    return codes


def rpq_decode(codes: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(N, m, stages) codes and their codebook -> (N, C) float32 vectors."""
    stages, m, _, d = codebook.shape
    out = np.zeros((len(codes), m, d), np.float32)
    for s in range(stages):
        for j in range(m):
            out[:, j] += codebook[s, j][codes[:, j, s]]
    return out.reshape(len(codes), m * d)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(N, m, stages) 4-bit codes -> (N, ceil(m * stages / 2)) uint8, two codes per byte (the
    even one of the flattened (m, stages) codes in the low nibble)."""
    flat = codes.reshape(len(codes), -1).astype(np.uint8)
    if flat.shape[1] % 2:
        flat = np.concatenate([flat, np.zeros((len(flat), 1), np.uint8)], axis=1)
    return (flat[:, 0::2] | (flat[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, m: int, stages: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: (N, B) uint8 -> (N, m, stages)."""
    flat = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(len(packed), -1)
    return flat[:, : m * stages].reshape(len(packed), m, stages).astype(np.uint8)
