"""The local stack is found from any folder: the run folder is per user (UAE_STACK_DIR,
XDG_STATE_HOME, ~/.local/state), and a running stack's client settings (client.env) give every
verb its S3 endpoint and keys without any environment."""

from __future__ import annotations

from pathlib import Path

from uae_ray.paths import CLIENT_ENV_FILE, default_stack_dir, running_stack_env
from uae_ray.stack import StackConfig
from uae_ray.storage.config import load_s3_config


def test_run_folder_is_per_user_not_per_working_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_stack_dir({"UAE_STACK_DIR": "/srv/stack"}) == Path("/srv/stack")
    assert default_stack_dir({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/uae-ray/stack")
    assert default_stack_dir({}) == Path.home() / ".local" / "state" / "uae-ray" / "stack"
    assert StackConfig.load(env={"UAE_CONFIG": "/nonexistent"}).run_dir == default_stack_dir({})


def test_verbs_pick_up_the_running_stacks_s3_settings(tmp_path: Path) -> None:
    env = {"UAE_STACK_DIR": str(tmp_path), "UAE_CONFIG": "/nonexistent/config.yaml"}
    assert running_stack_env(env) == {} and load_s3_config(env).endpoint is None
    (tmp_path / CLIENT_ENV_FILE).write_text("# comment\nUAE_S3_ENDPOINT=127.0.0.1:8333\nUAE_S3_SECURE=false\n"
                                            "UAE_S3_ACCESS_KEY=AKEY123\nUAE_S3_SECRET_KEY=secret456\n")
    cfg = load_s3_config(env)
    assert (cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.secure) == ("127.0.0.1:8333", "AKEY123", "secret456", False)
    mine = load_s3_config({**env, "UAE_S3_ENDPOINT": "minio.example:9000", "UAE_S3_ACCESS_KEY": "MINE1234",
                           "UAE_S3_SECRET_KEY": "minesecret"})
    assert (mine.endpoint, mine.access_key) == ("minio.example:9000", "MINE1234")  # the user's own settings win
