"""Parquet I/O (local and S3) and the embeddings codec."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from uae_ray.storage import objects, parquet, s3_objects
from uae_ray.storage.embeddings import (
    embeddings_meta,
    embeddings_to_table,
    table_to_embeddings,
)
from uae_ray.storage.schemas import DETECTIONS, EMBEDDINGS, MANIFEST, field_docs
from uae_ray.storage.uri import is_s3, is_temp_name, join, parse_s3


def grid(shape_czyx, spacing=4.0):
    return {"origin": [-100.0, -120.5, 30.0], "spacing": [spacing] * 3,
            "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
            "size": [shape_czyx[-1], shape_czyx[-2], shape_czyx[-3]]}


def make_maps(seed: int = 0):
    rng = np.random.default_rng(seed)
    local = rng.normal(size=(8, 6, 5, 7)).astype(np.float16)
    local[0, 0, 0, 0] = np.float16(-0.0)  # signed zero, subnormal and nan survive bit-exactly
    local[0, 0, 0, 1] = np.float16(6e-8)
    local[0, 0, 0, 2] = np.float16("nan")
    glob = rng.normal(size=(4, 2, 2, 2)).astype(np.float16)
    valid = rng.random((6, 5, 7)) > 0.3
    maps = {"local": (local, grid(local.shape)), "global": (glob, grid(glob.shape, 16.0)),
            "valid": (valid, grid(valid.shape))}
    meta = {"scan_id": "0123456789abcdef", "model_version": "tiny-v0+abcdef12",
            "source_uri_hash": "f" * 16, "modality": "CT"}
    return maps, meta


def detections_table() -> pa.Table:
    rows = [{"scan_id": "a" * 16, "name": "liver_top", "x": 1.5, "y": -2.25, "z": 300.125,
             "score": 0.875, "found": True, "method": "nn", "model_version": "tiny-v0"},
            {"scan_id": "b" * 16, "name": "carina", "x": 0.0, "y": 0.0, "z": -1.0,
             "score": 0.5, "found": False, "method": "fixed-point", "model_version": "tiny-v0"}]
    return pa.Table.from_pylist(rows, schema=DETECTIONS)


def test_schemas_have_docs() -> None:
    for schema in (EMBEDDINGS, DETECTIONS, MANIFEST):
        assert all(field_docs(schema).values())
        assert b"uae_ray.schema" in schema.metadata


def test_table_round_trip(root: str) -> None:
    table = detections_table()
    uri = join(root, "det", "part-0.parquet")
    n = parquet.write_table_atomic(table, uri)
    assert n == objects.size(uri) > 0
    back = parquet.read_table(uri)
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    assert field_docs(back.schema) == field_docs(DETECTIONS)
    assert parquet.read_table(uri, columns=["name"]).column("name").to_pylist() == [
        "liver_top", "carina"]
    assert parquet.read_table(uri, filters=[("score", ">", 0.6)]).num_rows == 1


def test_read_missing(root: str) -> None:
    with pytest.raises(FileNotFoundError):
        parquet.read_table(join(root, "absent.parquet"))


def test_read_dataset_skips_temp_files(root: str) -> None:
    table = detections_table()
    parquet.write_table_atomic(table, join(root, "ds", "a.parquet"))
    parquet.write_table_atomic(table.slice(0, 1), join(root, "ds", "b.parquet"))
    junk = join(root, "ds", "c.parquet.tmp-" + "0" * 32)  # an interrupted write
    if is_s3(root):
        import io

        loc = parse_s3(junk)
        s3_objects.minio_client(root).put_object(loc.bucket, loc.key, io.BytesIO(b"junk"), 4)
    else:
        with open(junk, "wb") as fh:
            fh.write(b"junk")
    assert parquet.read_dataset(join(root, "ds")).num_rows == 3
    empty = parquet.read_dataset(join(root, "none"), schema=DETECTIONS)
    assert empty.num_rows == 0 and empty.schema.names == DETECTIONS.names


def test_parquet_failure_leaves_no_final_file(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args):
        raise OSError("simulated failure before publication")

    if is_s3(root):
        monkeypatch.setattr(s3_objects, "put_stream", fail)
    else:
        monkeypatch.setattr(objects.os, "replace", fail)
    uri = join(root, "t.parquet")
    with pytest.raises(OSError, match="simulated"):
        parquet.write_table_atomic(detections_table(), uri)
    assert not objects.exists(uri)
    assert not any(is_temp_name(u) for u in objects.list_uris(root))
    assert objects.list_uris(root) == []


def assert_maps_equal(a, b) -> None:
    assert set(a) == set(b)
    for level in a:
        xa, ga = a[level]
        xb, gb = b[level]
        assert xa.shape == xb.shape and xa.dtype == xb.dtype, level
        if xa.dtype == np.float16:
            assert np.array_equal(xa.view(np.uint16), xb.view(np.uint16)), level  # bit-exact
        else:
            assert np.array_equal(xa, xb), level
        assert ga == gb


def test_embeddings_codec_exact() -> None:
    maps, meta = make_maps()
    table = embeddings_to_table(maps, meta)
    assert table.schema.names == EMBEDDINGS.names
    assert table.num_rows == 6 + 2 + 6  # one row per (level, z)
    back, meta_back = table_to_embeddings(table)
    assert_maps_equal(maps, back)
    assert meta_back == meta
    info = embeddings_meta(table)["levels"]
    assert info["valid"]["dtype"] == "bool" and info["valid"]["ndim"] == 3
    assert info["local"]["shape"] == [8, 6, 5, 7]


def test_embeddings_round_trip_storage(root: str) -> None:
    maps, meta = make_maps(1)
    uri = join(root, "embeddings", meta["scan_id"] + ".parquet")
    n = parquet.write_embeddings(uri, maps, meta)
    assert n > 0
    back, meta_back = parquet.read_embeddings(uri)
    assert_maps_equal(maps, back)
    assert meta_back == meta
    only_global, _ = parquet.read_embeddings(uri, levels=["global"])
    assert list(only_global) == ["global"]
    assert np.array_equal(only_global["global"][0], maps["global"][0])


def test_float32_input_is_rounded_once() -> None:
    x = np.random.default_rng(2).normal(size=(3, 2, 4, 5)).astype(np.float32)
    back, _ = table_to_embeddings(embeddings_to_table({"local": (x, {})}, {"scan_id": "s",
                                                                         "model_version": "v"}))
    assert back["local"][0].dtype == np.float16
    assert np.array_equal(back["local"][0], x.astype(np.float16))


@pytest.mark.parametrize(
    "maps, message",
    [
        ({"local": (np.full((1, 1, 1, 1), 1e6, np.float32), {})}, "float16 range"),
        ({"local": (np.zeros((1, 1, 1, 1), np.int32), {})}, "not storable"),
        ({"local": (np.zeros((2, 2)), {})}, "expected a"),
        ({"local": (np.zeros((1, 2, 3, 4)), {"size": [4, 3, 3]})}, "does not match"),
    ],
)
def test_embeddings_rejects_bad_input(maps, message) -> None:
    with pytest.raises(ValueError, match=message):
        embeddings_to_table(maps, {"scan_id": "s", "model_version": "v"})


def test_embeddings_requires_meta_and_complete_slices() -> None:
    maps, meta = make_maps()
    with pytest.raises(ValueError, match="model_version"):
        embeddings_to_table(maps, {"scan_id": "s"})
    table = embeddings_to_table(maps, meta)
    with pytest.raises(ValueError, match="z slices"):
        table_to_embeddings(table.filter(pc.not_equal(table["z"], 3)))
    with pytest.raises(ValueError, match="metadata"):
        table_to_embeddings(table.replace_schema_metadata(None))
