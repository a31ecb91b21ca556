"""``uae-ray bench speed``: seconds per scan for embedding and per landmark for matching.

The scan is a real chest CT (``itkelastix_chest``, 496x386x141 at 0.98x0.98x2 mm) placed on a
512x512x300 grid (air padding in-plane, 0.94 mm slices, linear interpolation): the size of a
typical clinical CT. Every figure is the median of ``repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import logging
import resource
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.common import format_table, machine_info, median_time, write_json
from uae_ray.data.cases import load_cases
from uae_ray.matching import METHODS, Embedder, embed_image, find_points
from uae_ray.volume import prepare_volume
from uae_ray.data.synthetic import body_points

logger = logging.getLogger(__name__)

SPEED_CASE = "itkelastix_chest"
SPEED_SIZE = (512, 512, 300)


def clinical_size_ct(data_dir: str | Path) -> sitk.Image:
    """The benchmark CT: :data:`SPEED_CASE` resampled onto a :data:`SPEED_SIZE` grid."""
    case = next(c for c in load_cases(data_dir, "CT") if c.case_id == SPEED_CASE)
    image = case.read()
    size = np.array(image.GetSize(), float)
    spacing = np.array(image.GetSpacing(), float)
    extent = size * spacing
    new_spacing = np.array([spacing[0], spacing[1], extent[2] / SPEED_SIZE[2]])
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2)))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = centre - direction @ ((np.array(SPEED_SIZE) - 1) / 2 * new_spacing)
    ref = sitk.Image(list(SPEED_SIZE), sitk.sitkInt16)
    ref.SetSpacing(tuple(new_spacing))
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(tuple(origin))
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def time_embedder(image: sitk.Image, embedder: Embedder, repeats: int) -> dict[str, Any]:
    """Median seconds per scan: preparation alone, and the whole embedding (prepare + network)."""
    embed_image(image, embedder, "CT")  # warm-up
    prep_s, _ = median_time(lambda: prepare_volume(image, "CT", embedder.config.input_spacing_mm), repeats)
    total_s, runs = median_time(lambda: embed_image(image, embedder, "CT"), repeats)
    return {"prepare_s": prep_s, "embed_s_per_scan": total_s, "runs_s": runs}


def storage_tiers(image: sitk.Image, embedder: Embedder, repeats: int) -> dict[str, Any]:
    """Per storage tier: bytes of the scan's Parquet file, and median seconds to write it
    (encode + local file) and to read it back (to float32 maps)."""
    from uae_ray.cohort.maps_io import TIERS, read_maps, write_maps

    maps = embed_image(image, embedder, "CT")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tier in TIERS:
            uri = str(Path(tmp) / f"{tier}.parquet")
            write_s, _ = median_time(lambda: write_maps(uri, "speed", maps, tier), repeats)
            read_s, _ = median_time(lambda: read_maps(uri), repeats)
            out[tier] = {"bytes": Path(uri).stat().st_size, "write_s": write_s, "read_s": read_s}
    return out


def time_matching(image: sitk.Image, embedder: Embedder, repeats: int, n_points: int = 20) -> dict[str, Any]:
    """Median seconds per landmark for every matching method: ``n_points`` template points
    matched in stored embeddings (the scan against itself)."""
    maps = embed_image(image, embedder, "CT")
    points = body_points(image, n_points, np.random.default_rng(0))
    out: dict[str, Any] = {"points": len(points)}
    for method in METHODS:
        median, runs = median_time(lambda: find_points(maps, points, maps, method), repeats)
        out[method] = {"match_s_per_landmark": median / len(points), "runs_s": runs}
    return out


def run_speed(
    data_dir: str | Path,
    local: Embedder,
    triton: Embedder | None,
    out: str | Path,
    repeats: int = 5,
    storage_only: bool = False,
) -> dict[str, Any]:
    """Times in-process and (when given) Triton embedding, and matching, then measures every
    storage tier (``storage_only``: the tiers only); writes JSON."""
    image = clinical_size_ct(data_dir)
    result: dict[str, Any] = {
        "benchmark": "speed",
        "model_version": local.version,
        "scan": {"case": SPEED_CASE, "size": list(image.GetSize()), "spacing": list(image.GetSpacing())},
        "repeats": repeats,
        "machine": machine_info(),
    }
    if not storage_only:
        logger.info("timing in-process embedding (%d runs)", repeats)
        result["in_process"] = time_embedder(image, local, repeats)
        if triton is not None:
            logger.info("timing Triton embedding (%d runs)", repeats)
            result["triton"] = time_embedder(image, triton, repeats)
        logger.info("timing matching")
        result["matching"] = time_matching(image, local, repeats)
    from uae_ray.cohort.maps_io import DEFAULT_TIER

    result["storage_tiers"] = storage_tiers(image, local, repeats)
    result["default_storage_tier"] = DEFAULT_TIER
    result["parquet_bytes_per_scan"] = result["storage_tiers"][DEFAULT_TIER]["bytes"]
    result["peak_rss_gb"] = _peak_rss_gb()
    write_json(out, result)
    return result


def speed_table(result: dict[str, Any]) -> str:
    """The headline figures as a text table."""
    rows = []
    if "in_process" in result:
        rows.append({"what": "embed, in-process (s/scan)", "median": result["in_process"]["embed_s_per_scan"]})
        rows.append({"what": "  of which prepare (s/scan)", "median": result["in_process"]["prepare_s"]})
    if "triton" in result:
        rows.append({"what": "embed, Triton (s/scan)", "median": result["triton"]["embed_s_per_scan"]})
    for method in METHODS:
        if method in result.get("matching", {}):
            ms = 1000 * result["matching"][method]["match_s_per_landmark"]
            rows.append({"what": f"match, {method} (ms/landmark)", "median": ms})
    for tier, figures in result.get("storage_tiers", {}).items():
        rows.append({"what": f"stored embeddings, {tier} (MB/scan)", "median": figures["bytes"] / 1e6})
        rows.append({"what": f"  write / read {tier} (s/scan)", "median": f"{figures['write_s']:.2f} / {figures['read_s']:.2f}"})
    if "storage_tiers" not in result:
        rows.append({"what": "stored embeddings (MB/scan)", "median": result["parquet_bytes_per_scan"] / 1e6})
    rows.append({"what": "peak RSS of this process (GB)", "median": result["peak_rss_gb"]})
    return format_table(rows, ["what", "median"])
