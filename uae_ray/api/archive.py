"""Putting a user's scans into an archive (the local stack's S3, or any S3 / folder) so that the
cohort jobs can run over it: ``uae-ray archive upload DIR s3://bucket/prefix``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from tqdm import tqdm

from uae_ray.storage import discover_scans, ensure_bucket, exists, join, size, upload_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadSummary:
    """Files uploaded and skipped (already there with the same size), bytes sent, scans found."""

    uploaded: int
    skipped: int
    n_bytes: int
    scans: int


def upload_archive(src: str, dest: str, progress: bool = True) -> UploadSummary:
    """Copies every file under the local folder ``src`` to ``dest`` (``s3://bucket/prefix`` or a
    folder), keeping relative paths; each object is written atomically, and a file already
    there with the same size is skipped, so an interrupted upload resumes. The bucket is
    created when missing.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
    """
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: not a folder")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(src) for f in names if not f.startswith("."))
    ensure_bucket(dest)
    uploaded = skipped = n_bytes = 0
    total = sum(os.path.getsize(f) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload to {dest}", disable=not progress) as bar:
        for path in files:
            target = join(dest, os.path.relpath(path, src).replace(os.sep, "/"))
            n = os.path.getsize(path)
            if exists(target) and size(target) == n:
                skipped += 1
            else:
                upload_file(path, target)
                uploaded += 1
                n_bytes += n
            bar.update(n)
    scans = len(discover_scans(dest))
    logger.info("%s -> %s: %d files uploaded (%.1f MB), %d already there; %d scans found there", src, dest,
                uploaded, n_bytes / 1e6, skipped, scans)
    return UploadSummary(uploaded, skipped, n_bytes, scans)
