"""An archive salted with 31 bad inputs through `cohort embed` on the real stack (Ray head,
Triton): each bad input is one error row whose one-line message names its file, the good scans
are `ok` exactly once and their embeddings read back, discovery neither hangs on a directory
symlink loop nor fails on a folder named like an image, and a re-run redoes only the failures."""

from __future__ import annotations

import numpy as np
import pytest

from uae_ray.cohort.embed import EMBED_MANIFEST, run_cohort_embed
from uae_ray.cohort.maps_io import embeddings_uri, read_maps
from uae_ray.storage import Manifest, join

from .salted import build_salted_archive

pytestmark = pytest.mark.stack
GOOD = ("ts_example_ct", "sts_001_ct")


def test_salted_archive_one_error_row_per_bad_input(services, shared_data, tmp_path):
    archive = tmp_path / "archive"
    bad = build_salted_archive(archive, [shared_data / "cases" / c / "image.nii.gz" for c in GOOD],
                               shared_data / "dicom" / "ts_upper_abdomen")
    assert len(bad) >= 30
    out = str(tmp_path / "out")
    summary = run_cohort_embed(str(archive), out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"])
    assert summary["scans"] == len(bad) + len(GOOD), summary
    assert summary["done"] == len(GOOD) and summary["failed"] == len(bad), summary

    records = Manifest(join(out, EMBED_MANIFEST)).records()
    assert len(records) == len(bad) + len(GOOD) and len({r.scan_id for r in records}) == len(records)
    by_name = {r.uri.rsplit("/", 1)[-1]: r for r in records}
    assert set(by_name) == set(bad) | {f"good_{i}.nii.gz" for i in range(len(GOOD))}
    for name, why in bad.items():
        rec = by_name[name]
        assert rec.status == "error", (name, why)
        assert rec.error and name in rec.error and "\n" not in rec.error and "Traceback" not in rec.error, (name, rec.error)
    for i in range(len(GOOD)):
        rec = by_name[f"good_{i}.nii.gz"]
        assert rec.status == "ok"
        maps = read_maps(embeddings_uri(out, rec.scan_id))
        assert maps.valid.any() and np.isfinite(maps.local).all()
    embedded = sorted((tmp_path / "out" / "embeddings").glob("*.parquet"))
    assert len(embedded) == len(GOOD)  # nothing written for a bad input

    again = run_cohort_embed(str(archive), out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"])
    assert again["skipped"] == len(GOOD) and again["failed"] == len(bad) and again["done"] == 0, again
