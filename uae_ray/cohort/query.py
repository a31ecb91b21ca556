"""``uae-ray cohort query``: a template's points found in every stored scan of an archive's
embeddings, without embedding anything but the template (once per model: its maps are kept
under ``<out>/references/``).

Two passes per scan:

1. **coarse** (always): only the ``global`` level of the scan's file is fetched (a Parquet row
   filter: ~0.5 MB of a compact file) and each point goes to the valid global voxel of highest
   cosine with the template's global vector (16 mm voxels);
2. **refine** (unless ``--coarse-only``): the whole file is read and the fixed-point matcher
   runs in a window of :data:`REFINE_WINDOW_MM` around the coarse answer, which gives the
   point to the local grid's precision and the calibrated ``found`` flag of ``cohort landmarks``.

The scans are those of the embed manifest under ``--embeddings`` that are ``ok`` for the
template's model. One table is written, ``<out>/query/points.parquet`` (schema
:data:`~uae_ray.storage.schemas.QUERY`); a scan
whose file cannot be read is one error line in the log and the summary, and the others go on.
The summary reports the seconds per 1,000 scans of each pass.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from uae_ray.cohort.embed import EMBED_MANIFEST
from uae_ray.cohort.landmarks import template_maps
from uae_ray.cohort.maps_io import embeddings_uri, read_coarse, read_maps
from uae_ray.cohort.runner import Progress, one_line
from uae_ray.serving import get_embedder
from uae_ray.storage import Manifest, join, write_table_atomic
from uae_ray.storage.schemas import QUERY
from uae_ray.api.inputs import read_points

logger = logging.getLogger(__name__)

#: Half-size (mm) of the refinement window around the coarse answer (3 global voxels).
REFINE_WINDOW_MM = 48.0


class QueryInputError(ValueError):
    """Nothing to query (no stored embeddings of the template's model); one line."""


def stored_scan_ids(embeddings: str, model_version: str) -> list[str]:
    """Scan ids with stored embeddings of ``model_version`` under ``embeddings`` (sorted).

    Raises:
        QueryInputError: there are none (the message says what was found instead).
    """
    manifest = Manifest(join(embeddings, EMBED_MANIFEST))
    ids = sorted(manifest.done_ids(model_version))
    if not ids:
        others = sorted({r.model_version for r in manifest.records() if r.status == "ok" and r.model_version})
        why = f"stored models: {', '.join(others)}" if others else "no embed manifest with ok scans"
        raise QueryInputError(f"{embeddings}: no stored embeddings of model {model_version} ({why}); "
                              "run `uae-ray cohort embed` with the same model first")
    return ids


def _rows(scan_id: str, names: tuple[str, ...], coarse: np.ndarray, coarse_score: np.ndarray,
          fine: Any | None, model_version: str) -> dict[str, list[Any]]:
    n = len(names)
    xyz = coarse if fine is None else fine.points
    return {
        "scan_id": [scan_id] * n, "name": list(names),
        "coarse_x": coarse[:, 0].tolist(), "coarse_y": coarse[:, 1].tolist(), "coarse_z": coarse[:, 2].tolist(),
        "coarse_score": np.asarray(coarse_score, np.float32).tolist(),
        "x": xyz[:, 0].tolist(), "y": xyz[:, 1].tolist(), "z": xyz[:, 2].tolist(),
        "score": (np.asarray(coarse_score if fine is None else fine.scores, np.float32)).tolist(),
        "found": [None] * n if fine is None else np.asarray(fine.found, bool).tolist(),
        "refined": [fine is not None] * n, "model_version": [model_version] * n,
    }


def run_cohort_query(
    template: str,
    points_csv: str,
    embeddings: str,
    out: str,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    refine: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Finds the template's points in every stored scan; writes one table,
    ``<out>/query/points.parquet``.

    Returns:
        A summary: scans, points, rows, failed (+ the first errors), and seconds per 1,000
        scans for the coarse and refine passes (``coarse_s_per_1000_scans``, also per point).
    """
    from uae_ray.matching import coarse_points, find_points, sample_embeddings

    points = read_points(points_csv)
    embedder = get_embedder(triton_url, checkpoint=checkpoint)
    ids = stored_scan_ids(embeddings, embedder.version)[:limit]
    query_maps, _ = template_maps(template, points, embedder, out)
    _, query_global = sample_embeddings(query_maps, points.xyz)
    logger.info("cohort query: %d points in %d stored scans (model %s)%s", len(points), len(ids),
                embedder.version, "" if refine else ", coarse only")

    columns: dict[str, list[Any]] = {f.name: [] for f in QUERY}
    errors: list[str] = []
    coarse_s = refine_s = 0.0
    progress = Progress(len(ids), "cohort query")
    for scan_id in ids:
        uri = embeddings_uri(embeddings, scan_id)
        try:
            t0 = time.perf_counter()
            glob, grid, valid, version = read_coarse(uri)
            if version != embedder.version:
                raise ValueError(f"stored embeddings are of model {version}, the template's of {embedder.version}")
            coarse, coarse_score = coarse_points(query_global, glob, grid, valid)
            t1 = time.perf_counter()
            coarse_s += t1 - t0
            fine = None
            if refine:
                fine = find_points(query_maps, points.xyz, read_maps(uri), "fixed-point", guess=coarse,
                                   window_mm=REFINE_WINDOW_MM)
                refine_s += time.perf_counter() - t1
            for key, values in _rows(scan_id, points.names, coarse, coarse_score, fine, embedder.version).items():
                columns[key].extend(values)
            progress.update(True)
        except Exception as e:  # one line per scan; the others go on
            errors.append(f"{uri}: {one_line(e)}")
            logger.error("cohort query: %s", errors[-1])
            progress.update(False)
    table = pa.Table.from_pydict(columns, schema=QUERY)
    table_uri = join(out, "query", "points.parquet")
    write_table_atomic(table, table_uri)
    n_ok = len(ids) - len(errors)
    per_1000 = lambda s: 1000.0 * s / max(n_ok, 1)  # noqa: E731
    summary: dict[str, Any] = {
        "scans": len(ids), "points": len(points), "rows": table.num_rows, "failed": len(errors),
        "errors": errors[:10], "table_uri": table_uri, "model_version": embedder.version, "refined": refine,
        "coarse_s_per_1000_scans": per_1000(coarse_s),
        "coarse_s_per_1000_scans_per_point": per_1000(coarse_s) / max(len(points), 1),
    }
    if refine:
        summary["refine_s_per_1000_scans"] = per_1000(refine_s)
    return summary

