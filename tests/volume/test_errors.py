"""Tests of uae_ray.volume.errors."""

from __future__ import annotations

from pathlib import Path

from uae_ray.volume import VolumeError


def test_volume_error_is_one_line_value_error():
    err = VolumeError(Path("/data/ct.nii.gz"), "cannot read\n  image:\tbad  header\n")
    assert isinstance(err, ValueError)
    assert str(err) == "/data/ct.nii.gz: cannot read image: bad header"
    assert err.source == "/data/ct.nii.gz" and err.cause == "cannot read image: bad header"
