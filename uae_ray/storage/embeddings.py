"""Embedding maps <-> Arrow tables (schema :data:`~uae_ray.storage.schemas.EMBEDDINGS`).

Generic on purpose (storage does not import the model code): a map set is a dict
``level -> (array, grid)`` where ``array`` is (C, Z, Y, X) (or (Z, Y, X), kept as such on the
way back) and ``grid`` a JSON-able dict (``origin``, ``spacing``, ``direction``, ``size``, all in
x, y, z order, e.g. ``dataclasses.asdict(uae_ray.volume.Grid)``).

Levels written by the cohort jobs (:mod:`uae_ray.cohort.maps_io`): ``local``, ``global``,
``valid`` and, for models with a UAE semantic head, ``semantic`` (on the local grid). Readers
must treat ``semantic`` as optional: files of models without the head, and files written before
it existed, do not have it (the format version is unchanged, as the level list was always open).

Storage dtypes: floating arrays are stored as float16 (exact for float16 input; float32 input
is rounded to float16 once, and values beyond the float16 range are refused); bool arrays (the
valid mask, by convention level ``"valid"``) as packed bits. Reading returns float16 / bool
arrays bit-for-bit equal to what was stored.

Schema metadata ``uae_ray.embeddings`` (JSON)::

    {"format": 1, "scan_id": ..., "model_version": ..., "source_uri_hash": ...,
     "levels": {"local": {"grid": {...}, "shape": [C, Z, Y, X], "ndim": 4, "dtype": "float16"},
                ...},
     "extra": {...any other JSON-able keys of meta...}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from uae_ray.storage.schemas import (
    DTYPE_BOOL,
    DTYPE_FLOAT16,
    EMBEDDINGS,
    EMBEDDINGS_META_KEY,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_F16 = np.dtype("<f2")
_F16_MAX = float(np.finfo(np.float16).max)
_RESERVED = {"scan_id", "model_version", "source_uri_hash"}

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


def _storage_array(level: str, array: np.ndarray) -> tuple[np.ndarray, str]:
    if array.dtype == np.bool_:
        return array, DTYPE_BOOL
    if np.issubdtype(array.dtype, np.floating):
        if array.dtype != np.float16:
            finite = np.isfinite(array)
            if np.any(np.abs(array[finite]) > _F16_MAX):
                raise ValueError(f"level {level!r}: values exceed the float16 range")
        return np.ascontiguousarray(array, dtype=_F16), DTYPE_FLOAT16
    raise ValueError(f"level {level!r}: dtype {array.dtype} not storable (float or bool only)")


def _check_grid(level: str, grid: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    grid = json.loads(json.dumps(dict(grid)))  # JSON-able copy (tuples -> lists)
    size = grid.get("size")
    if size is not None and list(size) != [shape[3], shape[2], shape[1]]:
        raise ValueError(
            f"level {level!r}: grid size {list(size)} (x, y, z) does not match array "
            f"(C, Z, Y, X) {list(shape)}"
        )
    return grid


def embeddings_to_table(maps: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]],
                        meta: Mapping[str, Any]) -> pa.Table:
    """Encode a set of maps as an EMBEDDINGS table (one row per level and z slice).

    Args:
        maps: ``level -> (array, grid)``; array (C, Z, Y, X) or (Z, Y, X), float or bool;
            grid a JSON-able dict whose ``size`` (x, y, z), when given, must match the array.
        meta: Must hold ``scan_id`` and ``model_version``; ``source_uri_hash`` is optional;
            other JSON-able keys are kept under ``extra``.

    Returns:
        Table with the EMBEDDINGS schema and the ``uae_ray.embeddings`` schema metadata.

    Raises:
        ValueError: Bad shapes, dtypes, grid sizes or missing meta keys.
    """
    for key in ("scan_id", "model_version"):
        if not meta.get(key):
            raise ValueError(f"embeddings meta needs {key!r}")
    scan_id = str(meta["scan_id"])
    columns: dict[str, list[Any]] = {f.name: [] for f in EMBEDDINGS}
    levels: dict[str, Any] = {}
    for level, (array, grid) in maps.items():
        arr4, ndim = _as_4d(level, array)
        stored, dtype = _storage_array(level, arr4)
        c, nz, ny, nx = stored.shape
        levels[level] = {"grid": _check_grid(level, grid, stored.shape), "shape": [c, nz, ny, nx],
                         "ndim": ndim, "dtype": dtype}
        for z in range(nz):
            sl = np.ascontiguousarray(stored[:, z])
            data = np.packbits(sl, axis=None).tobytes() if dtype == DTYPE_BOOL else sl.tobytes()
            for name, value in (("scan_id", scan_id), ("level", level), ("z", z), ("channels", c),
                                ("ny", ny), ("nx", nx), ("dtype", dtype), ("data", data)):
                columns[name].append(value)
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
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported embeddings format {doc.get('format')!r}")
    return doc


def _decode_level(level: str, info: Mapping[str, Any], rows: pa.Table) -> np.ndarray:
    c, nz, ny, nx = info["shape"]
    dtype = info["dtype"]
    zs = rows.column("z").to_numpy()
    if sorted(zs.tolist()) != list(range(nz)):
        raise ValueError(f"level {level!r}: expected z slices 0..{nz - 1}, got {len(zs)} rows")
    out = np.empty((c, nz, ny, nx), dtype=np.bool_ if dtype == DTYPE_BOOL else _F16)
    n = c * ny * nx
    for z, data in zip(zs, rows.column("data").to_pylist(), strict=True):
        if dtype == DTYPE_BOOL:
            flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).astype(np.bool_)
        else:
            flat = np.frombuffer(data, dtype=_F16, count=n)
        out[:, z] = flat.reshape(c, ny, nx)
    if np.dtype(out.dtype) == _F16:
        out = out.astype(np.float16, copy=False)  # native byte order view for callers
    return out[0] if info.get("ndim", 4) == 3 else out


def table_to_embeddings(table: pa.Table) -> tuple[MapSet, dict[str, Any]]:
    """Decode an EMBEDDINGS table of one scan back into arrays.

    Args:
        table: As written by :func:`embeddings_to_table` (possibly column-projected rows of a
            level subset: levels without rows are skipped).

    Returns:
        ``(maps, meta)``: ``maps`` is ``level -> (array, grid)`` with float16 / bool arrays in
        the stored shape; ``meta`` holds ``scan_id``, ``model_version``, ``source_uri_hash`` and
        the extra keys given when writing.

    Raises:
        ValueError: Missing metadata, or a level with missing / duplicate z slices.
    """
    doc = embeddings_meta(table)
    levels_col = table.column("level").to_numpy(zero_copy_only=False)
    maps: MapSet = {}
    for level, info in doc["levels"].items():
        mask = levels_col == level
        if not mask.any() and info["shape"][1] > 0:
            continue
        rows = table.filter(pa.array(mask))
        maps[level] = (_decode_level(level, info, rows), info["grid"])
    meta = {"scan_id": doc["scan_id"], "model_version": doc["model_version"],
            "source_uri_hash": doc.get("source_uri_hash"), **doc.get("extra", {})}
    return maps, meta
