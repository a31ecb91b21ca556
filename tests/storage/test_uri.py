"""URI string helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uae_ray.storage import uri as U


def test_is_s3_and_parse() -> None:
    assert U.is_s3("s3://b/k") and U.is_s3("S3://b/k") and not U.is_s3("/tmp/s3://x")
    assert U.parse_s3("s3://bkt/a/b.nii.gz") == ("bkt", "a/b.nii.gz")
    assert U.parse_s3("s3://bkt") == ("bkt", "")
    with pytest.raises(ValueError):
        U.parse_s3("s3:///key")
    with pytest.raises(ValueError):
        U.parse_s3("/local/path")


def test_join() -> None:
    assert U.join("s3://b/out/", "scan", "/e.parquet") == "s3://b/out/scan/e.parquet"
    assert U.join("s3://b", "x") == "s3://b/x"
    assert U.join("/tmp/a", "b", "c") == os.path.join("/tmp/a", "b", "c")
    assert U.join(Path("/tmp/a"), "b") == "/tmp/a/b"


def test_basename_parent() -> None:
    assert U.basename("s3://b/a/c.nii.gz") == "c.nii.gz"
    assert U.basename("s3://b/a/series/") == "series"
    assert U.parent("s3://b/a/c.nii.gz") == "s3://b/a"
    assert U.parent("/x/y/z") == "/x/y"


def test_relative_to(tmp_path: Path) -> None:
    assert U.relative_to("s3://b/arch/c1/x.nii", "s3://b/arch/") == "c1/x.nii"
    assert U.relative_to("s3://b/arch", "s3://b/arch") == ""
    with pytest.raises(ValueError):
        U.relative_to("s3://b/archive2/x", "s3://b/arch")
    with pytest.raises(ValueError):
        U.relative_to("s3://other/arch/x", "s3://b/arch")
    assert U.relative_to(str(tmp_path / "c" / "d.nii"), str(tmp_path) + "/") == "c/d.nii"
    with pytest.raises(ValueError):
        U.relative_to("/a/b", "/a/bc")
    with pytest.raises(ValueError):
        U.relative_to("s3://b/a", "/a")


def test_temp_names_and_hash() -> None:
    assert U.is_temp_name("s3://b/x.parquet.tmp-" + "0" * 32)
    assert U.is_temp_name(".x.parquet.tmp-" + "ab" * 16)
    assert not U.is_temp_name("x.tmp-notahex")
    assert U.uri_hash("case1/image.nii.gz") == U.uri_hash("case1/image.nii.gz")
    assert len(U.uri_hash("a")) == 16 and U.uri_hash("a") != U.uri_hash("b")


def test_file_scheme_and_home() -> None:
    assert U.as_str("file:///tmp/x") == "/tmp/x"
    assert U.as_str("~/x") == os.path.expanduser("~/x")
