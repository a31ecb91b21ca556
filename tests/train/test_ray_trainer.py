"""Ray Train wrapper: a short real TorchTrainer run writes a loadable checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uae_ray.models import load_model
from uae_ray.train.config import TrainConfig

ray = pytest.importorskip("ray")
try:
    import ray.train  # noqa: F401  (needs the ray[train] extra: pandas, tensorboardX, ...)
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"ray.train not importable ({exc}); install ray[train]", allow_module_level=True)


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_trainer_writes_checkpoint(ray_local, tmp_path: Path, phantom_volumes) -> None:
    from uae_ray.train.ray_trainer import run_ray_training

    vols = phantom_volumes
    cfg = TrainConfig(steps=4, crop=(32, 32, 32), local_points=32, global_points=8, k_hard=8, k_random=8, max_offset_vox=4)
    out = tmp_path / "ray_model.pt"
    result = run_ray_training(None, cfg, out=out, num_workers=1, storage_path=tmp_path / "ray", threads=1, report_every=2, volumes=vols)
    assert result.error is None
    assert out.is_file()
    model = load_model(out)
    assert model.meta["steps"] == 4
    assert model.meta["trained_on"] == ["p0", "p1"]
    assert "loss" in result.metrics


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_trainer_runs_two_ddp_workers(ray_local, tmp_path: Path, phantom_volumes) -> None:
    """The same command with --workers 2: two DDP processes (gloo on CPU), one checkpoint."""
    from uae_ray.train.ray_trainer import run_ray_training

    out = tmp_path / "ddp.pt"
    result = run_ray_training(None, _small_config(4), out=out, num_workers=2, storage_path=tmp_path / "ray",
                              threads=1, report_every=2, volumes=phantom_volumes)
    assert result.error is None
    meta = load_model(out).meta
    assert meta["workers"] == 2 and meta["steps"] == 4
    assert result.metrics["loss"] == result.metrics["loss"]  # finite, not NaN


def _small_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, crop=(32, 32, 32), local_points=32, global_points=8, k_hard=8, k_random=8, max_offset_vox=4)


def _reported_steps(result) -> list[int]:
    return sorted(int(m["step"]) for _, m in result.best_checkpoints)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_trainer_resumes_a_stopped_run_from_object_storage(ray_local, tmp_path: Path, phantom_volumes, s3_env,
                                                                monkeypatch) -> None:
    """Checkpoints and metrics go to S3; the same command with --resume continues from the
    latest checkpoint (weights, optimiser state and step) instead of starting over."""
    from uae_ray.storage import list_uris
    from uae_ray.train.ray_trainer import run_ray_training

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    storage = "s3://uae-train-test/runs"
    first = run_ray_training(None, _small_config(4), num_workers=1, storage_path=storage, threads=1, report_every=2,
                             volumes=phantom_volumes)
    assert first.error is None and _reported_steps(first) == [2, 4]
    keys = list_uris(storage)
    assert any(k.endswith("/model.pt") for k in keys) and any(k.endswith("/trainer_state.pt") for k in keys)

    out = tmp_path / "resumed.pt"
    second = run_ray_training(None, _small_config(6), out=out, num_workers=1, storage_path=storage, threads=1,
                              report_every=2, volumes=phantom_volumes, resume=True)
    assert second.error is None
    assert 6 in _reported_steps(second)
    meta = load_model(out).meta
    assert meta["steps"] == 6 and meta["resumed_at_step"] == 4  # continued, not started over
