"""Arrow schemas of the Parquet files the cohort jobs write.

Every field carries a ``doc`` entry in its metadata; every schema carries
``uae_ray.schema = "<name>/<version>"`` in its schema metadata.

EMBEDDINGS (one file per scan, ``<out>/embeddings/<scan_id>.parquet``)
    One row per (level, z slice) of each map. ``data`` holds the C-order bytes of that
    slice's (B, n) array (n voxels: the whole ny * nx slice, or the ones inside the level's
    mask), little endian, in the level's codec ``dtype``:

    * ``"float16"`` (B = channels), ``"int8"`` (B = channels, per-channel scales in the
      metadata) or ``"rpq"`` (B = channels / 4 bytes of two 4-bit residual product-quantiser
      codes, codebook in the metadata) for embedding levels (``"local"``, ``"global"``, ...);
    * ``"bool"`` for masks (the valid mask ``"valid"``, the body mask ``"body"``; channels = 1,
      bits packed with ``numpy.packbits`` over the C-order (1, ny, nx) slice, big bit order).

    Keeping the mask as rows (not in the footer) keeps the footer small and lets readers skip
    it with a filter on ``level``. Per-file facts live in the schema metadata key
    ``uae_ray.embeddings`` (JSON, see :mod:`uae_ray.storage.embeddings`): format version,
    scan_id, model_version, source_uri_hash, and for each level its grid (origin, spacing,
    direction, size in x, y, z order), array shape (C, Z, Y, X), original ndim, codec (``dtype``),
    its mask level and the codec parameters (int8 scales, rpq codebook).

DETECTIONS (landmark / lesion detections, one file per job shard or per scan)
    scan_id, name, x, y, z (world LPS mm), score, found (False: the matcher abstained),
    method, model_version.

TRACKS (lesion tracks of ``cohort track``, one part per pair plus one table)
    pair_id, baseline_id, followup_id (hashed ids only), name, baseline_x/y/z, radius_mm,
    x, y, z (world LPS mm), score, found, consistency, error, method, model_version.

TRANSFORMS (rigid / affine transforms of ``cohort register``, one part per pair plus one table)
    pair_id, fixed_id, moving_id (hashed ids only), type (rigid/affine), parameters and
    fixed_parameters (ITK's, as in the .tfm file), n_correspondences, n_inliers,
    inlier_fraction, residual_mm, overlap_fraction, refined, tfm_uri, model_version, seconds.
    The transform maps fixed-space points to moving-space points (ITK convention).

PRELABEL (organ pre-labels of ``cohort prelabel``, one part per scan plus ``index.parquet``)
    One row per (scan, organ): scan_id (hashed), organ, label (its value in the label map),
    status (see :data:`PRELABEL_STATUSES`), message, the localized box xmin, ymin, zmin, xmax,
    ymax, zmax (world LPS mm, NaN when none), voxels, volume_ml, n_slices, mask_uri (the scan's
    label map), localizer, boxes, localizer_version, sam_version, seconds.

QUERY (``cohort query``, one table per run)
    scan_id, name, coarse_x/y/z and coarse_score (global level only), x, y, z, score, found
    (refined answer; found is null for coarse-only answers), refined, model_version.

MANIFEST (``<out>/manifest.parquet``, see :mod:`uae_ray.storage.manifest`)
    One row per scan: scan_id, uri, status, error, model_version, output_uri, n_bytes, seconds,
    updated_at.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_KEY = b"uae_ray.schema"
EMBEDDINGS_META_KEY = b"uae_ray.embeddings"

LEVEL_VALID = "valid"
DTYPE_FLOAT16 = "float16"
DTYPE_BOOL = "bool"
DTYPE_INT8 = "int8"
DTYPE_RPQ = "rpq"
STATUS_OK, STATUS_ERROR, STATUS_PENDING = "ok", "error", "pending"
STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_PENDING)


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={SCHEMA_KEY: name.encode()})


EMBEDDINGS = _schema(
    "embeddings/1",
    [
        _f("scan_id", pa.string(), "16-hex scan id (sha256 of the path in the archive)"),
        _f("level", pa.string(), 'map name: "local", "global", ... or "valid" (mask)'),
        _f("z", pa.int32(), "slice index along z of this level's grid (0-based)"),
        _f("channels", pa.int32(), "C: channels in this slice's array (1 for the mask)"),
        _f("ny", pa.int32(), "rows (y) of the slice"),
        _f("nx", pa.int32(), "columns (x) of the slice"),
        _f("dtype", pa.string(), 'codec: "float16", "int8", "rpq" or "bool" (np.packbits, big bits)'),
        _f("data", pa.binary(), "C-order bytes of slice z: (B, n voxels) values, or packed bits"),
    ],
)

DETECTIONS = _schema(
    "detections/2",
    [
        _f("scan_id", pa.string(), "16-hex scan id of the target scan"),
        _f("name", pa.string(), "landmark / lesion name"),
        _f("x", pa.float64(), "world x, ITK/SimpleITK physical space (LPS, mm)"),
        _f("y", pa.float64(), "world y (LPS, mm)"),
        _f("z", pa.float64(), "world z (LPS, mm)"),
        _f("score", pa.float32(), "matching similarity (higher is better)"),
        _f("found", pa.bool_(), "False where the matcher abstained (x, y, z: its best estimate)"),
        _f("method", pa.string(), "matching method: nn or fixed-point"),
        _f("model_version", pa.string(), "embedding model version that produced the detection"),
    ],
)

QUERY = _schema(
    "query/1",
    [
        _f("scan_id", pa.string(), "16-hex scan id of the stored scan"),
        _f("name", pa.string(), "template point name"),
        _f("coarse_x", pa.float64(), "coarse answer (global-level voxel centre), world x (LPS, mm)"),
        _f("coarse_y", pa.float64(), "coarse answer, world y (LPS, mm)"),
        _f("coarse_z", pa.float64(), "coarse answer, world z (LPS, mm)"),
        _f("coarse_score", pa.float32(), "global cosine of the coarse answer"),
        _f("x", pa.float64(), "answer (refined when refined, else the coarse one), world x (LPS, mm)"),
        _f("y", pa.float64(), "answer, world y (LPS, mm)"),
        _f("z", pa.float64(), "answer, world z (LPS, mm)"),
        _f("score", pa.float32(), "matching similarity of the answer"),
        _f("found", pa.bool_(), "fixed-point found flag (null for coarse-only answers)", nullable=True),
        _f("refined", pa.bool_(), "whether the fine level refined the coarse answer"),
        _f("model_version", pa.string(), "embedding model version"),
    ],
)

MANIFEST = _schema(
    "manifest/1",
    [
        _f("scan_id", pa.string(), "16-hex scan id"),
        _f("uri", pa.string(), "input scan URI (file or DICOM folder)"),
        _f("status", pa.string(), '"ok", "error" or "pending"'),
        _f("error", pa.string(), "one-line error message when status is error", nullable=True),
        _f("model_version", pa.string(), "model version used for the scan", nullable=True),
        _f("output_uri", pa.string(), "URI of the result written for this scan", nullable=True),
        _f("n_bytes", pa.int64(), "bytes written for this scan", nullable=True),
        _f("seconds", pa.float64(), "wall time spent on this scan", nullable=True),
        _f("updated_at", pa.timestamp("us", tz="UTC"), "when this record was written (UTC)"),
    ],
)

TRACKS = _schema(
    "tracks/1",
    [
        _f("pair_id", pa.string(), "16-hex pair id (hash of the two scan ids)"),
        _f("baseline_id", pa.string(), "16-hex scan id of the baseline"),
        _f("followup_id", pa.string(), "16-hex scan id of the follow-up"),
        _f("name", pa.string(), "lesion name (from the lesions CSV or mask)"),
        _f("baseline_x", pa.float64(), "lesion centre on the baseline, world x (LPS, mm)"),
        _f("baseline_y", pa.float64(), "lesion centre on the baseline, world y (LPS, mm)"),
        _f("baseline_z", pa.float64(), "lesion centre on the baseline, world z (LPS, mm)"),
        _f("radius_mm", pa.float64(), "lesion radius given with it (mm)", nullable=True),
        _f("x", pa.float64(), "tracked centre in the follow-up, world x (LPS, mm); NaN on error"),
        _f("y", pa.float64(), "tracked centre, world y (LPS, mm)"),
        _f("z", pa.float64(), "tracked centre, world z (LPS, mm)"),
        _f("score", pa.float32(), "matching similarity (higher is better); NaN on error"),
        _f("found", pa.bool_(), "False where the matcher abstained (x, y, z: its best estimate) or on error"),
        _f("consistency", pa.float32(), "share of consistent fixed-point cube points / agreeing votes",
           nullable=True),
        _f("error", pa.string(), "why the lesion could not be tracked (e.g. outside the baseline)", nullable=True),
        _f("method", pa.string(), "matching method: nn or fixed-point (+extent when the lesion's extent voted)"),
        _f("model_version", pa.string(), "embedding model version that produced the track"),
    ],
)

TRANSFORMS = _schema(
    "transforms/1",
    [
        _f("pair_id", pa.string(), "16-hex pair id (hash of the two scan ids)"),
        _f("fixed_id", pa.string(), "16-hex scan id of the fixed scan"),
        _f("moving_id", pa.string(), "16-hex scan id of the moving scan"),
        _f("type", pa.string(), "rigid (ITK Euler3DTransform) or affine (ITK AffineTransform)"),
        _f("parameters", pa.list_(pa.float64()), "ITK transform parameters (GetParameters())"),
        _f("fixed_parameters", pa.list_(pa.float64()), "ITK fixed parameters: the centre (GetFixedParameters())"),
        _f("n_correspondences", pa.int32(), "round-trip consistent matches of the fixed body grid"),
        _f("n_inliers", pa.int32(), "correspondences that agree with the fitted transform"),
        _f("inlier_fraction", pa.float64(), "n_inliers / n_correspondences"),
        _f("residual_mm", pa.float64(), "median residual of the inliers (mm)"),
        _f("overlap_fraction", pa.float64(), "share of the fixed body grid mapped into the moving field of view"),
        _f("refined", pa.bool_(), "True when the MI refinement ran (the transform is its result)"),
        _f("tfm_uri", pa.string(), "URI of the ITK .tfm file (fixed -> moving, sitk.ReadTransform)"),
        _f("model_version", pa.string(), "embedding model version of the correspondences"),
        _f("seconds", pa.float64(), "wall time of the pair (s)"),
    ],
)

#: Row statuses of PRELABEL (:mod:`uae_ray.tasks.segment.status`): a mask whose calibrated
#: quality passed the threshold; a mask below it; no mask (not localized, or segment-anything
#: found nothing in the boxes); the box lies mostly outside the target's field of view; no support
#: scan has the organ; the scan failed (every organ of that scan).
PRELABEL_STATUSES = ("ok", "low_confidence", "not_found", "outside_view", "missing_in_supports", "error")

PRELABEL = _schema(
    "prelabel/3",
    [
        _f("scan_id", pa.string(), "16-hex scan id of the target scan"),
        _f("organ", pa.string(), "organ name (as given to --organs)"),
        _f("label", pa.int32(), "the organ's value in the label map (k = the k-th organ of --organs)"),
        _f("status", pa.string(), "ok, low_confidence, not_found, outside_view, missing_in_supports or error"),
        _f("quality", pa.float64(), "calibrated probability that the mask's Dice is >= 0.5 (NaN without a mask)"),
        _f("message", pa.string(), "one line explaining a status other than ok", nullable=True),
        _f("xmin", pa.float64(), "localized box, world x min (LPS, mm; NaN when none)"),
        _f("ymin", pa.float64(), "localized box, world y min (LPS, mm)"),
        _f("zmin", pa.float64(), "localized box, world z min (LPS, mm)"),
        _f("xmax", pa.float64(), "localized box, world x max (LPS, mm)"),
        _f("ymax", pa.float64(), "localized box, world y max (LPS, mm)"),
        _f("zmax", pa.float64(), "localized box, world z max (LPS, mm)"),
        _f("voxels", pa.int64(), "voxels of the organ in the label map"),
        _f("volume_ml", pa.float64(), "organ volume (ml)"),
        _f("n_slices", pa.int32(), "axial slices prompted with a box"),
        _f("mask_uri", pa.string(), "URI of the scan's label map (NIfTI; sidecar <stem>.json)", nullable=True),
        _f("dicom_seg_uri", pa.string(), "URI of the scan's DICOM SEG holding the organ (--dicom-seg, DICOM series "
           "scans only)", nullable=True),
        _f("localizer", pa.string(), "localizer: embedding or medlam"),
        _f("boxes", pa.string(), "slice prompts: spl or wpl"),
        _f("localizer_version", pa.string(), "model version of the localizer (embedding or MedLAM)"),
        _f("sam_version", pa.string(), "segment-anything model version"),
        _f("seconds", pa.float64(), "wall time of the organ: its localization plus its share of segmentation (s)"),
    ],
)

ALL_SCHEMAS = {"embeddings": EMBEDDINGS, "detections": DETECTIONS, "manifest": MANIFEST, "tracks": TRACKS,
               "transforms": TRANSFORMS, "prelabel": PRELABEL}


def field_docs(schema: pa.Schema) -> dict[str, str]:
    """``{field name: doc}`` of a schema (for reports and ``--help`` texts)."""
    return {f.name: (f.metadata or {}).get(b"doc", b"").decode() for f in schema}
