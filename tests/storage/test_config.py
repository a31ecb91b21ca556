"""S3 configuration: environment, config file, masking, missing endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from uae_ray.storage import objects
from uae_ray.storage.config import S3Config, StorageConfigError, load_s3_config

SECRET = "s3cr3t-Value-xyz"


def write_config(path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(text)
    monkeypatch.setenv("UAE_CONFIG", str(path))


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UAE_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("UAE_S3_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("UAE_S3_SECRET_KEY", SECRET)
    cfg = load_s3_config()
    assert cfg == S3Config("127.0.0.1:9000", "AKIDEXAMPLE", SECRET, False, "us-east-1")
    monkeypatch.setenv("UAE_S3_SECURE", "true")
    assert load_s3_config().secure is True
    monkeypatch.setenv("UAE_S3_SECURE", "0")
    assert load_s3_config().secure is False


def test_endpoint_scheme_sets_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UAE_S3_ENDPOINT", "https://s3.example.org:443/")
    cfg = load_s3_config()
    assert (cfg.endpoint, cfg.secure, cfg.scheme) == ("s3.example.org:443", True, "https")
    monkeypatch.setenv("UAE_S3_ENDPOINT", "http://h:1")
    assert load_s3_config().secure is False


def test_bad_secure_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UAE_S3_SECURE", "maybe")
    with pytest.raises(StorageConfigError, match="UAE_S3_SECURE"):
        load_s3_config()


def test_from_file_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path / "config.yaml",
        "s3:\n  endpoint: filehost:8333\n  access_key: filekey\n"
        f"  secret_key: {SECRET}\n  secure: true\n  region: eu-1\nother: 1\n",
        monkeypatch,
    )
    cfg = load_s3_config()
    assert cfg == S3Config("filehost:8333", "filekey", SECRET, True, "eu-1")
    monkeypatch.setenv("UAE_S3_ENDPOINT", "envhost:1")
    monkeypatch.setenv("UAE_S3_ACCESS_KEY", "envkey")
    cfg = load_s3_config()
    assert (cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.secure) == (
        "envhost:1", "envkey", SECRET, True)


def test_malformed_file_does_not_echo_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "c.yaml", f"s3:\n  secret_key: {SECRET}\n   bad: [\n", monkeypatch)
    with pytest.raises(StorageConfigError) as info:
        load_s3_config()
    assert SECRET not in str(info.value)
    write_config(tmp_path / "d.yaml", "s3: [1, 2]\n", monkeypatch)
    with pytest.raises(StorageConfigError, match="section 's3'"):
        load_s3_config()


def test_repr_masks_secret() -> None:
    cfg = S3Config("h:1", "AKIDEXAMPLE", SECRET)
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg])):
        assert SECRET not in text
        assert "AKIDEXAMPLE" not in text
        assert "***" in text and "h:1" in text


def test_missing_endpoint_clear_error() -> None:
    assert load_s3_config().endpoint is None
    with pytest.raises(StorageConfigError) as info:
        objects.exists("s3://bucket/some/key.nii.gz")
    message = str(info.value)
    assert message.startswith("s3://bucket/some/key.nii.gz: no S3 endpoint configured")
    assert "UAE_S3_ENDPOINT" in message
    assert "absent.yaml" in message  # names the config file it looked at (UAE_CONFIG)


def test_local_paths_need_no_config(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    objects.write_bytes_atomic(str(target), b"abc")
    assert objects.read_bytes(str(target)) == b"abc"


def test_secret_never_logged(s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    import os

    secret = os.environ["UAE_S3_SECRET_KEY"]
    caplog.set_level(logging.DEBUG)
    objects.write_bytes_atomic(f"{s3_bucket}/a/b.bin", b"123")
    assert objects.read_bytes(f"{s3_bucket}/a/b.bin") == b"123"
    objects.list_uris(s3_bucket)
    with pytest.raises(FileNotFoundError):
        objects.read_bytes(f"{s3_bucket}/missing")
    assert secret not in caplog.text
    assert caplog.records  # something was logged, and none of it holds the secret
