"""Object API over local paths and s3:// URIs (the S3 half runs against the s3_env server)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from uae_ray.storage import objects, s3_objects
from uae_ray.storage.uri import is_s3, is_temp_name, join, parse_s3


def raw_names(root: str) -> list[str]:
    """Every name under root, temp files and dotfiles included (bypasses list_uris)."""
    if is_s3(root):
        loc = parse_s3(root)
        client = s3_objects.minio_client(root)
        return sorted(o.object_name for o in client.list_objects(loc.bucket, prefix=loc.key,
                                                                 recursive=True))
    out = []
    for base, _, files in os.walk(root):
        out += [os.path.join(base, f) for f in files]
    return sorted(out)


def test_bytes_round_trip(root: str) -> None:
    uri = join(root, "a", "b.bin")
    assert not objects.exists(uri)
    assert objects.write_bytes_atomic(uri, b"hello world") == 11
    assert objects.exists(uri) and objects.read_bytes(uri) == b"hello world"
    assert objects.size(uri) == 11
    assert objects.read_bytes(uri, offset=6, length=5) == b"world"
    assert objects.read_bytes(uri, offset=100, length=4) == b""  # past the end, like a file
    objects.write_bytes_atomic(uri, memoryview(bytearray(b"new")))  # overwrite, buffer input
    assert objects.read_bytes(uri) == b"new"
    assert objects.is_dir(join(root, "a")) and not objects.is_dir(uri)
    assert objects.exists(join(root, "a"))  # a non-empty prefix exists
    assert not any(is_temp_name(n) for n in raw_names(root))


def test_large_multipart_round_trip(root: str) -> None:
    data = os.urandom(6 * 1024 * 1024 + 7)  # above the 5 MiB part size: multipart upload
    uri = join(root, "big.bin")
    objects.write_bytes_atomic(uri, data)
    assert objects.read_bytes(uri) == data
    assert not any(is_temp_name(n) for n in raw_names(root))


def test_missing_raises_file_not_found(root: str) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        objects.read_bytes(join(root, "nope"))
    with pytest.raises(FileNotFoundError):
        objects.size(join(root, "nope"))
    assert objects.list_uris(join(root, "nothing-here")) == []


def test_list_uris(root: str) -> None:
    for rel in ("a/x.nii.gz", "a/y.NII.GZ", "a/sub/z.nii.gz", "a/notes.txt", "ab/other.nii.gz"):
        objects.write_bytes_atomic(join(root, *rel.split("/")), b"1")
    listed = objects.list_uris(join(root, "a"), suffixes=[".nii.gz"])
    assert sorted(u.rsplit("/", 1)[-1] for u in listed) == ["x.nii.gz", "y.NII.GZ", "z.nii.gz"]
    assert listed == sorted(listed)
    assert all("/ab/" not in u for u in objects.list_uris(join(root, "a")))  # prefix is a folder
    flat = objects.list_uris(join(root, "a"), recursive=False)
    assert sorted(u.rsplit("/", 1)[-1] for u in flat) == ["notes.txt", "x.nii.gz", "y.NII.GZ"]
    assert len(objects.list_uris(root)) == 5


def test_list_hides_temp_names(root: str) -> None:
    objects.write_bytes_atomic(join(root, "keep.bin"), b"1")
    stray = join(root, "keep.bin.tmp-" + "f" * 32)  # what a crash mid-write leaves behind
    if is_s3(root):
        loc = parse_s3(stray)
        import io

        s3_objects.minio_client(root).put_object(loc.bucket, loc.key, io.BytesIO(b"x"), 1)
    else:
        Path(stray).write_bytes(b"x")
    assert [u.rsplit("/", 1)[-1] for u in objects.list_uris(root)] == ["keep.bin"]
    objects.delete(root, recursive=True)
    assert raw_names(root) == []


def test_failure_before_publish_leaves_no_final_object(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = join(root, "out", "result.bin")
    if is_s3(root):
        def boom(client, bucket, key, reader, length):
            reader.read(3)  # the upload has started
            raise RuntimeError("simulated crash mid-upload")

        monkeypatch.setattr(s3_objects, "put_stream", boom)
    else:
        def boom_replace(src, dst):
            raise RuntimeError("simulated crash before rename")

        monkeypatch.setattr(objects.os, "replace", boom_replace)
    with pytest.raises(RuntimeError, match="simulated"):
        objects.write_bytes_atomic(uri, b"partial?")
    assert not objects.exists(uri)
    assert raw_names(root) == []  # temp cleaned up too


def test_failed_overwrite_keeps_old_content(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = join(root, "result.bin")
    objects.write_bytes_atomic(uri, b"old")

    def fail(*args):
        raise OSError("simulated failure")

    with monkeypatch.context() as patch:
        if is_s3(root):
            patch.setattr(s3_objects, "put_stream", fail)
        else:
            patch.setattr(objects.os, "replace", fail)
        with pytest.raises(OSError, match="simulated"):
            objects.write_bytes_atomic(uri, b"new content")
    assert objects.read_bytes(uri) == b"old"
    assert [n.rsplit("/", 1)[-1] for n in raw_names(root)] == ["result.bin"]


def test_upload_download(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    uri = join(root, "up", "src.bin")
    assert objects.upload_file(str(src), uri) == 7000
    dest = tmp_path / "dl" / "copy.bin"
    assert objects.download(uri, dest) == str(dest)
    assert dest.read_bytes() == src.read_bytes()
    assert not any(is_temp_name(n) for n in raw_names(root))


def test_download_prefix(root: str, tmp_path: Path) -> None:
    for rel in ("series/IM1", "series/IM2", "series/sub/IM3", "series2/IM9"):
        objects.write_bytes_atomic(join(root, *rel.split("/")), rel.encode())
    out = tmp_path / "local"
    written = objects.download_prefix(join(root, "series"), out)
    assert [os.path.relpath(p, out) for p in written] == ["IM1", "IM2", os.path.join("sub", "IM3")]
    assert (out / "sub" / "IM3").read_bytes() == b"series/sub/IM3"


def test_delete(root: str) -> None:
    objects.write_bytes_atomic(join(root, "d", "1"), b"1")
    objects.write_bytes_atomic(join(root, "d", "2"), b"2")
    objects.delete(join(root, "d", "1"))
    objects.delete(join(root, "d", "1"))  # absent: no error
    assert [u.rsplit("/", 1)[-1] for u in objects.list_uris(root)] == ["2"]
    objects.delete(join(root, "d"), recursive=True)
    assert objects.list_uris(root) == [] and not objects.is_dir(join(root, "d"))


def test_local_delete_folder_needs_recursive(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    with pytest.raises(IsADirectoryError):
        objects.delete(str(tmp_path / "f"))


def test_ensure_bucket_idempotent(s3_bucket: str) -> None:
    objects.ensure_bucket(s3_bucket)
    objects.ensure_bucket(s3_bucket + "/any/key")
    assert objects.exists(s3_bucket)


def test_missing_bucket(s3_bucket: str) -> None:
    absent = f"s3://uae-absent-{uuid.uuid4().hex[:12]}/x"
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        objects.read_bytes(absent)
    # (no write case: SeaweedFS creates a missing bucket on PUT for admin identities)


def test_filesystem_for(root: str) -> None:
    uri = join(root, "fs", "f.bin")
    objects.write_bytes_atomic(uri, b"via arrow")
    fs, path = objects.filesystem_for(uri)
    with fs.open_input_file(path) as fh:
        assert fh.read() == b"via arrow"
    if is_s3(root):
        assert type(fs).__name__ == "S3FileSystem" and path == uri[len("s3://"):]
    else:
        assert os.path.isabs(path)


KILLED_WRITER = """
import os, signal, sys, threading
from uae_ray.storage import objects, s3_objects

real = s3_objects.put_stream

def put_then_die(client, bucket, key, reader, length):
    class Reader:  # the writer is killed once a third of the object has been sent
        sent = 0
        def read(self, n=-1):
            chunk = reader.read(n)
            Reader.sent += len(chunk)
            if Reader.sent > length // 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return chunk
    real(client, bucket, key, Reader(), length)

s3_objects.put_stream = put_then_die
objects.upload_file(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("size_mb", [4, 40])  # one PUT; a multipart upload (parts of 16 MiB)
def test_a_writer_killed_mid_upload_leaves_the_old_object(s3_bucket: str, tmp_path: Path, size_mb: int) -> None:
    """kill -9 of a process in the middle of an upload: the key keeps its old content (and a
    new key does not appear); the data goes straight to the final key, no temporary copy."""
    import subprocess
    import sys

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(size_mb * 1024 * 1024))
    old, new = join(s3_bucket, "k", "old.bin"), join(s3_bucket, "k", "new.bin")
    objects.write_bytes_atomic(old, b"old content")
    env = {**os.environ}
    for target in (old, new):
        out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(big), target], env=env, timeout=300,
                             capture_output=True, text=True)
        assert out.returncode == -9, out.stderr[-2000:]
    assert objects.read_bytes(old) == b"old content" and not objects.exists(new)
    assert raw_names(s3_bucket) == ["k/old.bin"]  # no temporary key either
