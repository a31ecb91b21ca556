"""StackConfig: defaults < stack.yaml < environment, credentials, port checks (no processes)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from uae_ray.stack import StackConfig, StackError, client_env, ensure_credentials, stack_status, stack_up
from uae_ray.stack.config import DEFAULT_MODEL_REPOSITORY, DEFAULT_STACK_YAML

ISOLATED = {"UAE_CONFIG": "/nonexistent/uae-ray/config.yaml"}


def test_defaults_match_the_documented_stack_yaml(tmp_path: Path) -> None:
    loaded = StackConfig.load(env=ISOLATED, yaml_path=DEFAULT_STACK_YAML)
    assert loaded == StackConfig()
    assert (loaded.ray_port, loaded.ray_dashboard_port) == (6380, 8265)
    assert (loaded.triton_http_port, loaded.triton_grpc_port, loaded.triton_metrics_port) == (8000, 8001, 8002)
    assert loaded.s3_port == 8333 and loaded.host == "127.0.0.1"
    assert loaded.model_repository == DEFAULT_MODEL_REPOSITORY
    assert (DEFAULT_MODEL_REPOSITORY / "uae_embedder" / "config.pbtxt").is_file()


def test_environment_wins_over_yaml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "stack.yaml"
    yaml_file.write_text("triton_http_port: 9000\ns3_port: 9444\nrun_dir: from-yaml\n")
    env = {**ISOLATED, "UAE_TRITON_HTTP_PORT": "9100", "UAE_STACK_DIR": str(tmp_path / "run"),
           "UAE_CHECKPOINT": str(tmp_path / "w.pt")}
    cfg = StackConfig.load(env=env, yaml_path=yaml_file)
    assert cfg.triton_http_port == 9100          # env
    assert cfg.s3_port == 9444                   # yaml
    assert cfg.s3_master_port == StackConfig().s3_master_port  # default
    assert cfg.run_dir == tmp_path / "run"
    assert cfg.checkpoint == tmp_path / "w.pt"
    assert cfg.triton_url == "127.0.0.1:9100"


def test_s3_port_clash_with_master_default_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="both use port 9333"):
        StackConfig.load(env={**ISOLATED, "UAE_S3_PORT": "9333"}, yaml_path=DEFAULT_STACK_YAML)


@pytest.mark.parametrize("text, message", [
    ("triton_port: 1\n", "unknown keys"),
    ("s3_secret_key: x\n", "do not belong"),
    ("ray_port: abc\n", "expected a number"),
    ("- a list\n", "mapping"),
])
def test_bad_yaml_is_reported(tmp_path: Path, text: str, message: str) -> None:
    yaml_file = tmp_path / "stack.yaml"
    yaml_file.write_text(text)
    with pytest.raises(StackError, match=message):
        StackConfig.load(env=ISOLATED, yaml_path=yaml_file)


def test_missing_explicit_yaml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="not found"):
        StackConfig.load(env={**ISOLATED, "UAE_STACK_CONFIG": str(tmp_path / "nope.yaml")})


def test_generated_credentials_are_private_and_reused(tmp_path: Path) -> None:
    env = {**ISOLATED, "UAE_STACK_DIR": str(tmp_path)}
    cfg = StackConfig.load(env=env, yaml_path=DEFAULT_STACK_YAML)
    assert not cfg.has_credentials
    with pytest.raises(StackError, match="stack up"):
        client_env(cfg)
    with_keys = ensure_credentials(cfg)
    assert with_keys.has_credentials
    mode = stat.S_IMODE(os.stat(cfg.s3_env_file).st_mode)
    assert mode == 0o600
    again = StackConfig.load(env=env, yaml_path=DEFAULT_STACK_YAML)
    assert (again.s3_access_key, again.s3_secret_key) == (with_keys.s3_access_key, with_keys.s3_secret_key)
    assert ensure_credentials(again) == again  # nothing regenerated
    text = repr(again) + str(again) + stack_status(again, ["s3"]).table()
    assert with_keys.s3_secret_key not in text
    assert with_keys.s3_access_key[:4] in text
    env_out = client_env(again)
    assert env_out["UAE_S3_SECRET_KEY"] == with_keys.s3_secret_key
    assert env_out["UAE_S3_ENDPOINT"] == "127.0.0.1:8333"
    assert env_out["RAY_ADDRESS"] == "http://127.0.0.1:8265"
    assert env_out["UAE_RAY_ADDRESS"] == "127.0.0.1:6380"


def test_credentials_from_env_then_user_config(tmp_path: Path) -> None:
    user = tmp_path / "config.yaml"
    user.write_text("s3:\n  endpoint: 127.0.0.1:1\n  access_key: FILEKEY\n  secret_key: filesecret\n")
    base = {"UAE_CONFIG": str(user), "UAE_STACK_DIR": str(tmp_path / "run")}
    cfg = StackConfig.load(env=base, yaml_path=DEFAULT_STACK_YAML)
    assert (cfg.s3_access_key, cfg.s3_secret_key) == ("FILEKEY", "filesecret")
    cfg = StackConfig.load(env={**base, "UAE_S3_ACCESS_KEY": "ENVKEY", "UAE_S3_SECRET_KEY": "envsecret"},
                           yaml_path=DEFAULT_STACK_YAML)
    assert (cfg.s3_access_key, cfg.s3_secret_key) == ("ENVKEY", "envsecret")
    assert "envsecret" not in repr(cfg)


def test_port_in_use_fails_fast_with_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = StackConfig(run_dir=tmp_path, s3_port=port)
        with pytest.raises(StackError, match=f"port {port} .*UAE_S3_PORT"):
            stack_up(cfg, ["s3"])
    assert not stack_status(cfg).any_alive


def test_unknown_service_name(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown services"):
        stack_status(StackConfig(run_dir=tmp_path), ["minio"])
