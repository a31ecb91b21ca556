"""Embedding maps <-> Arrow tables (schema :data:`~uae_ray.storage.schemas.EMBEDDINGS`).

Generic on purpose (storage does not import the model code): a map set is a dict
``level -> (array, grid)`` where ``array`` is (C, Z, Y, X) (or (Z, Y, X), kept as such on the
way back) and ``grid`` a JSON-able dict (``origin``, ``spacing``, ``direction``, ``size``, all in
x, y, z order, e.g. ``dataclasses.asdict(uae_ray.volume.Grid)``).

Levels written by the cohort jobs (:mod:`uae_ray.cohort.maps_io`): ``local``, ``global``,
``valid``, ``body`` and, for models with a UAE semantic head, ``semantic`` (on the local grid).
Readers treat ``semantic`` and ``body`` as optional.

Each floating level is stored with a codec (see :mod:`uae_ray.storage.codecs`):

* ``float16`` (the default): exact for float16 input, float32 input rounded once, values beyond
  the float16 range refused; reads back bit for bit as float16;
* ``int8``: per-channel symmetric int8 (the scales in the level's metadata); reads as float32;
* ``rpq``: residual product quantisation: subspaces of 4 channels, each coded by N stages of
  4 bits (N = 2: one byte per 4 channels; the codebook in the level's metadata); reads as float32.

and optionally a ``mask``: the name of a bool level of the same (Z, Y, X) shape; the rows then
hold only the voxels where the mask is True (C order within a slice), and the others read back
as 0. Bool levels are stored as packed bits and read back as bool.

A row's ``data`` holds the slice's (B, n) array in C order: n voxels (all ``ny * nx`` of the
slice, or its masked ones) of B values: float16 B = C, int8 B = C, rpq B = ceil(m * N / 2)
bytes of two 4-bit codes (m = C / 4 subspaces, N stages).

Schema metadata ``uae_ray.embeddings`` (JSON)::

    {"format": 2, "scan_id": ..., "model_version": ..., "source_uri_hash": ...,
     "levels": {"local": {"grid": {...}, "shape": [C, Z, Y, X], "ndim": 4, "dtype": "rpq",
                          "mask": "body", "codebook": {"shape": [...], "data": "<base64 f4>"}},
                ...},
     "extra": {...any other JSON-able keys of meta...}}

Format 1 files (float16 and bool levels, no masks) are still read.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from uae_ray.storage import codecs
from uae_ray.storage.schemas import (
    DTYPE_BOOL,
    DTYPE_FLOAT16,
    DTYPE_INT8,
    DTYPE_RPQ,
    EMBEDDINGS,
    EMBEDDINGS_META_KEY,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CODECS = (DTYPE_FLOAT16, DTYPE_INT8, DTYPE_RPQ)
#: Channels per rpq subspace.
RPQ_SUBSPACE_CHANNELS = 4
_F16 = np.dtype("<f2")
_F16_MAX = float(np.finfo(np.float16).max)
_RESERVED = {"scan_id", "model_version", "source_uri_hash"}
_PAYLOAD_DTYPE = {DTYPE_FLOAT16: _F16, DTYPE_INT8: np.dtype(np.int8), DTYPE_RPQ: np.dtype(np.uint8)}

MapSet = dict[str, tuple[np.ndarray, dict[str, Any]]]


def _as_4d(level: str, array: np.ndarray) -> tuple[np.ndarray, int]:
    array = np.asarray(array)
    if array.ndim == 3:
        return array[None], 3
    if array.ndim == 4:
        return array, 4
    raise ValueError(
        f"level {level!r}: expected a (C, Z, Y, X) or (Z, Y, X) array, got {array.shape}"
    )


def _check_grid(level: str, grid: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    grid = json.loads(json.dumps(dict(grid)))  # JSON-able copy (tuples -> lists)
    size = grid.get("size")
    if size is not None and list(size) != [shape[3], shape[2], shape[1]]:
        raise ValueError(
            f"level {level!r}: grid size {list(size)} (x, y, z) does not match array "
            f"(C, Z, Y, X) {list(shape)}"
        )
    return grid


def _array_doc(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def _doc_array(doc: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(doc["data"]), dtype="<f4").reshape(doc["shape"]).astype(np.float32)


def _vectors(arr4: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(C, Z, Y, X) -> ``(vectors (N, C) in z, y, x order, voxels per z slice (Z,))``."""
    c, nz, ny, nx = arr4.shape
    if mask is None:
        return arr4.reshape(c, -1).T, np.full(nz, ny * nx)
    return arr4[:, mask].T, mask.reshape(nz, -1).sum(axis=1)


def _parse_codec(level: str, spec: str) -> tuple[str, int]:
    """``"float16" | "int8" | "rpq" | "rpqN"`` -> (stored codec, rpq stages; 2 for ``"rpq"``)."""
    if spec in (DTYPE_FLOAT16, DTYPE_INT8):
        return spec, 0
    if spec.startswith(DTYPE_RPQ) and (spec == DTYPE_RPQ or spec[3:] in ("1", "2", "3", "4")):
        return DTYPE_RPQ, int(spec[3:] or 2)
    raise ValueError(f"level {level!r}: unknown codec {spec!r}; known: float16, int8, rpq, rpq1..rpq4")


def _encode(level: str, vectors: np.ndarray, codec: str, seed: int, stages: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, C) vectors -> ``((N, B) payload, level metadata of the codec)``."""
    if codec == DTYPE_FLOAT16:
        if vectors.dtype != np.float16:
            finite = np.isfinite(vectors)
            if np.any(np.abs(vectors[finite]) > _F16_MAX):
                raise ValueError(f"level {level!r}: values exceed the float16 range")
        return vectors.astype(_F16), {}
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"level {level!r}: non-finite values cannot be stored as {codec}")
    if codec == DTYPE_INT8:
        codes, scales = codecs.int8_encode(vectors)
        return codes, {"scales": _array_doc(scales)}
    c = vectors.shape[1]
    if c % RPQ_SUBSPACE_CHANNELS:
        raise ValueError(f"level {level!r}: rpq needs channels in multiples of {RPQ_SUBSPACE_CHANNELS}, got {c}")
    codebook = codecs.rpq_train(vectors, c // RPQ_SUBSPACE_CHANNELS, stages=stages, seed=seed)
    return codecs.pack_nibbles(codecs.rpq_encode(vectors, codebook)), {"codebook": _array_doc(codebook)}


def _decode(payload: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    """(N, B) payload -> (N, C) vectors (float16 for the float16 codec, else float32)."""
    codec = info["dtype"]
    if codec == DTYPE_FLOAT16:
        return payload.astype(np.float16, copy=False)
    if codec == DTYPE_INT8:
        return codecs.int8_decode(payload, _doc_array(info["scales"]))
    book = _doc_array(info["codebook"])
    return codecs.rpq_decode(codecs.unpack_nibbles(payload, book.shape[1], book.shape[0]), book)


def embeddings_to_table(maps: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]],
                        meta: Mapping[str, Any],
                        codecs_by_level: Mapping[str, str] | None = None,
                        masks: Mapping[str, str] | None = None,
                        seed: int = 0) -> pa.Table:
    """Encode a set of maps as an EMBEDDINGS table (one row per level and z slice).

    Args:
        maps: ``level -> (array, grid)``; array (C, Z, Y, X) or (Z, Y, X), float or bool;
            grid a JSON-able dict whose ``size`` (x, y, z), when given, must match the array.
        meta: Must hold ``scan_id`` and ``model_version``; ``source_uri_hash`` is optional;
            other JSON-able keys are kept under ``extra``.
        codecs_by_level: ``level -> "float16" | "int8" | "rpq" | "rpqN"`` for floating levels
            (default float16; ``rpq`` is ``rpq2``, N the residual stages of 4 bits).
        masks: ``level -> name of a bool level`` of the same (Z, Y, X) shape: store only the
            voxels inside it.
        seed: Seed of the rpq codebook training (deterministic output for a given input).

    Returns:
        Table with the EMBEDDINGS schema and the ``uae_ray.embeddings`` schema metadata.

    Raises:
        ValueError: Bad shapes, dtypes, codecs, masks, grid sizes or missing meta keys.
    """
    for key in ("scan_id", "model_version"):
        if not meta.get(key):
            raise ValueError(f"embeddings meta needs {key!r}")
    codecs_by_level, masks = dict(codecs_by_level or {}), dict(masks or {})
    for level in [*codecs_by_level, *masks]:
        if level not in maps:
            raise ValueError(f"codec or mask given for level {level!r}, which is not in the maps")
    scan_id = str(meta["scan_id"])
    columns: dict[str, list[Any]] = {f.name: [] for f in EMBEDDINGS}
    levels: dict[str, Any] = {}

    def add_row(level: str, z: int, c: int, ny: int, nx: int, dtype: str, data: bytes) -> None:
        for name, value in (("scan_id", scan_id), ("level", level), ("z", z), ("channels", c),
                            ("ny", ny), ("nx", nx), ("dtype", dtype), ("data", data)):
            columns[name].append(value)

    for level, (array, grid) in maps.items():
        arr4, ndim = _as_4d(level, array)
        c, nz, ny, nx = arr4.shape
        info: dict[str, Any] = {"grid": _check_grid(level, grid, arr4.shape), "shape": [c, nz, ny, nx], "ndim": ndim}
        levels[level] = info
        if arr4.dtype == np.bool_:
            if level in masks or level in codecs_by_level:
                raise ValueError(f"level {level!r}: bool levels take neither a codec nor a mask")
            info["dtype"] = DTYPE_BOOL
            for z in range(nz):
                add_row(level, z, c, ny, nx, DTYPE_BOOL, np.packbits(arr4[:, z], axis=None).tobytes())
            continue
        if not np.issubdtype(arr4.dtype, np.floating):
            raise ValueError(f"level {level!r}: dtype {arr4.dtype} not storable (float or bool only)")
        codec, stages = _parse_codec(level, codecs_by_level.get(level, DTYPE_FLOAT16))
        mask = None
        if level in masks:
            mask_array = np.asarray(maps[masks[level]][0]) if masks[level] in maps else None
            if mask_array is None or mask_array.dtype != np.bool_ or mask_array.shape != (nz, ny, nx):
                raise ValueError(f"level {level!r}: mask {masks[level]!r} is not a bool level of shape {(nz, ny, nx)}")
            mask, info["mask"] = mask_array, masks[level]
        vectors, counts = _vectors(arr4, mask)
        payload, codec_info = _encode(level, vectors, codec, seed, stages)
        info.update(dtype=codec, **codec_info)
        start = 0
        for z, n in enumerate(counts.tolist()):
            add_row(level, z, c, ny, nx, codec, np.ascontiguousarray(payload[start:start + n].T).tobytes())
            start += n
    doc = {
        "format": FORMAT_VERSION,
        "scan_id": scan_id,
        "model_version": str(meta["model_version"]),
        "source_uri_hash": meta.get("source_uri_hash"),
        "levels": levels,
        "extra": {k: v for k, v in meta.items() if k not in _RESERVED},
    }
    schema = EMBEDDINGS.with_metadata(
        {**(EMBEDDINGS.metadata or {}), EMBEDDINGS_META_KEY: json.dumps(doc).encode()}
    )
    return pa.Table.from_pydict(columns, schema=schema)


def embeddings_meta(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any]:
    """The decoded ``uae_ray.embeddings`` metadata of a table or schema.

    Raises:
        ValueError: The metadata is missing (not an embeddings file, or read as a dataset).
    """
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(EMBEDDINGS_META_KEY)
    if raw is None:
        raise ValueError("table has no uae_ray.embeddings metadata (not an embeddings file?)")
    doc = json.loads(raw)
    if doc.get("format") not in READABLE_FORMATS:
        raise ValueError(f"unsupported embeddings format {doc.get('format')!r}")
    return doc


def _slices(level: str, info: Mapping[str, Any], rows: pa.Table) -> list[bytes]:
    """The level's row payloads in z order."""
    nz = info["shape"][1]
    zs = rows.column("z").to_numpy()
    if sorted(zs.tolist()) != list(range(nz)):
        raise ValueError(f"level {level!r}: expected z slices 0..{nz - 1}, got {len(zs)} rows")
    data = rows.column("data").to_pylist()
    out: list[bytes] = [b""] * nz
    for z, d in zip(zs.tolist(), data, strict=True):
        out[z] = d
    return out


def _decode_level(level: str, info: Mapping[str, Any], rows: pa.Table,
                  decoded: Mapping[str, np.ndarray]) -> np.ndarray:
    c, nz, ny, nx = info["shape"]
    codec = info["dtype"]
    slices = _slices(level, info, rows)
    if codec == DTYPE_BOOL:
        n = c * ny * nx
        out = np.empty((c, nz, ny, nx), dtype=np.bool_)
        for z, data in enumerate(slices):
            out[:, z] = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).astype(np.bool_).reshape(c, ny, nx)
        return out[0] if info.get("ndim", 4) == 3 else out
    if codec not in CODECS:
        raise ValueError(f"level {level!r}: unknown stored codec {codec!r}")
    mask = None
    if info.get("mask"):
        mask = decoded.get(info["mask"])
        if mask is None:
            raise ValueError(f"level {level!r} is stored inside mask {info['mask']!r}, which was not read")
    dtype = _PAYLOAD_DTYPE[codec]
    book = info.get("codebook", {}).get("shape")
    b = -(-book[0] * book[1] // 2) if codec == DTYPE_RPQ else c  # values per voxel
    payload = (np.concatenate([np.frombuffer(d, dtype=dtype).reshape(b, -1).T for d in slices]) if slices
               else np.empty((0, b), dtype))
    vectors = _decode(payload, info)
    out = np.zeros((c, nz, ny, nx), dtype=vectors.dtype)
    if mask is None:
        out[:] = vectors.T.reshape(c, nz, ny, nx)
    else:
        out[:, mask] = vectors.T
    return out[0] if info.get("ndim", 4) == 3 else out


def table_to_embeddings(table: pa.Table) -> tuple[MapSet, dict[str, Any]]:
    """Decode an EMBEDDINGS table of one scan back into arrays.

    Args:
        table: As written by :func:`embeddings_to_table` (possibly column-projected rows of a
            level subset: levels without rows are skipped).

    Returns:
        ``(maps, meta)``: ``maps`` is ``level -> (array, grid)`` in the stored shape (float16
        for float16 levels, float32 for int8 / rpq ones, bool for masks); ``meta`` holds
        ``scan_id``, ``model_version``, ``source_uri_hash`` and the extra keys given when writing.

    Raises:
        ValueError: Missing metadata, a level with missing / duplicate z slices, or a masked
            level whose mask was not read.
    """
    doc = embeddings_meta(table)
    levels_col = table.column("level").to_numpy(zero_copy_only=False)
    maps: MapSet = {}
    decoded: dict[str, np.ndarray] = {}
    order = sorted(doc["levels"].items(), key=lambda kv: kv[1]["dtype"] != DTYPE_BOOL)  # masks first
    for level, info in order:
        mask = levels_col == level
        if not mask.any() and info["shape"][1] > 0:
            continue
        array = _decode_level(level, info, table.filter(pa.array(mask)), decoded)
        decoded[level] = array
        maps[level] = (array, info["grid"])
    maps = {level: maps[level] for level in doc["levels"] if level in maps}  # stored order
    meta = {"scan_id": doc["scan_id"], "model_version": doc["model_version"],
            "source_uri_hash": doc.get("source_uri_hash"), **doc.get("extra", {})}
    return maps, meta
