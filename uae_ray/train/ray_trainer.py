"""Ray Train wrapper (``TorchTrainer``) around :class:`uae_ray.train.trainer.Trainer`.

Thin by design: every worker runs the plain loop on its own random views (seed + rank);
with more than one worker ``ray.train.torch.prepare_model`` wraps the network in
DistributedDataParallel, so gradients are averaged. Rank 0 writes an uae-ray checkpoint
(:func:`uae_ray.models.checkpoint.save_checkpoint`) plus the optimiser state into a
``ray.train.Checkpoint`` at every report. ``--storage`` is a local folder or an ``s3://`` URI
(checkpoints and metrics then go to object storage through pyarrow's S3 filesystem, with the
credentials of :mod:`uae_ray.storage`). A run resumes from ``ray.train.get_checkpoint()`` when
Ray restarts it, and with ``--resume`` from the latest checkpoint of an earlier run of the same
name in the same storage (a stopped job re-submitted with the same command continues).

Usage::

    python -m uae_ray.train.ray_trainer --data ../shared/data --steps 200 --workers 1 \
        --out runs/ray/uae_tiny.pt [--storage runs/ray | s3://bucket/train] [--resume] [--use-gpu] \
        [--config uae_ctmr.yaml] [--modalities CT MR --modality-shift-prob 0.5 --pair-prob 0.25]

The TrainConfig flags and ``--config`` are those of ``python -m uae_ray.train.loop``
(:func:`uae_ray.train.config.add_config_arguments`); here ``steps`` defaults to 200.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from uae_ray.models.checkpoint import load_checkpoint_into, save_checkpoint
from uae_ray.train.data import TrainVolume, load_volumes
from uae_ray.train.config import TrainConfig, add_config_arguments, config_from_args
from uae_ray.train.trainer import Trainer, build_train_model

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"
STATE_FILE = "trainer_state.pt"
RUN_NAME = "uae_embedding"


def storage_filesystem(storage: str | Path) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` of a local folder or an ``s3://`` URI (the bucket is
    created when missing)."""
    from uae_ray.storage import is_s3
    from uae_ray.storage.objects import ensure_bucket, filesystem_for

    text = str(storage)
    if is_s3(text):
        ensure_bucket(text)
    else:
        Path(text).mkdir(parents=True, exist_ok=True)
    return filesystem_for(text)


def latest_checkpoint(fs: Any, root: str, name: str = RUN_NAME) -> str | None:
    """Path (on ``fs``) of the newest checkpoint folder holding a model of run ``name``, or None.

    Ray Train names checkpoint folders ``checkpoint_<timestamp>``, so the name order is the
    time order.
    """
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True, recursive=False))
    folders = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for folder in reversed(folders):
        if fs.get_file_info(f"{folder}/{CHECKPOINT_FILE}").type == pafs.FileType.File:
            return folder
    return None


def _restore(trainer: Trainer, folder: Path) -> None:
    """Loads model weights, optimiser state and progress from a checkpoint folder."""
    load_checkpoint_into(trainer.model, folder / CHECKPOINT_FILE)
    trainer.state.step = int(getattr(trainer.model, "meta", {}).get("steps", 0))
    state_file = folder / STATE_FILE
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.state.step = int(state["step"])
        trainer.state.elapsed_s = float(state["elapsed_s"])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function.

    Args:
        config: ``{"train": TrainConfig as dict, "data_dir": str | None,
            "volumes": list[TrainVolume] | None, "threads": int | None,
            "report_every": int}``; ``volumes`` (in-memory, for tests) wins over ``data_dir``.
    """
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    cfg = TrainConfig(**config["train"])
    cfg.seed += rank
    volumes: list[TrainVolume] = config.get("volumes") or load_volumes(
        config["data_dir"], cfg.modalities, labels=cfg.semantic_weight > 0
    )
    model = build_train_model(cfg)
    forward = ray.train.torch.prepare_model(model)
    trainer = Trainer(model, volumes, cfg, forward_module=forward)
    resume = ray.train.get_checkpoint()
    if resume is not None:  # Ray restarted this run
        with resume.as_directory() as d:
            _restore(trainer, Path(d))
    elif config.get("resume_from"):  # --resume: the latest checkpoint of an earlier run
        from pyarrow import fs as pafs

        fs, folder = config["resume_from"]
        with tempfile.TemporaryDirectory() as tmp:
            pafs.copy_files(folder, tmp, source_filesystem=fs)
            _restore(trainer, Path(tmp))
    resumed_at = trainer.state.step
    if resumed_at:
        logger.info("rank %d resumes at step %d", rank, resumed_at)
    cfg.log_every = int(config.get("report_every", cfg.log_every))
    t0 = time.perf_counter() - trainer.state.elapsed_s

    def report(rec: dict[str, float]) -> None:
        metrics = {k: float(v) for k, v in rec.items()}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                meta = {
                    "trained_on": [v.case_id for v in volumes],
                    "cross_modal_pairs": [list(p.case_ids) for p in trainer.pairs],
                    "command": config.get("command", "ray_trainer"),
                    "steps": trainer.state.step,
                    "time_s": round(time.perf_counter() - t0, 1),
                    "final_loss": metrics["loss"],
                    "train_config": asdict(cfg),
                    "workers": ctx.get_world_size(),
                    "resumed_at_step": resumed_at,
                    "version": f"{cfg.model}-v0",
                }
                save_checkpoint(model, Path(tmp) / CHECKPOINT_FILE, meta)
                torch.save(
                    {"optimizer": trainer.optimizer.state_dict(), "step": trainer.state.step,
                     "elapsed_s": trainer.state.elapsed_s},
                    Path(tmp) / STATE_FILE,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)

    trainer.fit(on_log=report)


def run_ray_training(
    data_dir: str | Path | None,
    config: TrainConfig,
    out: str | Path | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: str | Path | None = None,
    threads: int | None = None,
    report_every: int = 50,
    volumes: list[TrainVolume] | None = None,
    command: str = "ray_trainer",
    resume: bool = False,
) -> Any:
    """Train with Ray Train and copy the last checkpoint to ``out``.

    Args:
        data_dir: Data folder with ``manifest.csv`` (ignored when ``volumes`` is given).
        config: Hyper-parameters (``steps``/``seconds`` per worker).
        out: Where to copy the final uae-ray checkpoint file.
        num_workers: Ray Train workers (1 CPU each unless ``use_gpu``).
        use_gpu: One GPU per worker.
        storage_path: Ray Train storage: a folder or an ``s3://`` URI (default: a temporary
            folder). Checkpoints and metrics are written there.
        threads: torch threads per worker.
        report_every: Steps between reports (each report writes a checkpoint).
        volumes: Pre-loaded volumes (tests).
        command: Command line recorded in the checkpoint metadata.
        resume: Continue from the latest checkpoint of the run in ``storage_path`` (if any).

    Returns:
        The ``ray.train.Result``.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, root = storage_filesystem(storage_path or tempfile.mkdtemp(prefix="uae_ray_train_"))
    resume_from = latest_checkpoint(fs, root) if resume else None
    if resume:
        logger.info("resuming from %s", resume_from or "nothing (no checkpoint yet): starting afresh")
    loop_config = {
        "train": asdict(config),
        "data_dir": str(data_dir) if data_dir is not None else None,
        "volumes": volumes,
        "threads": threads,
        "report_every": report_every,
        "command": command,
        "resume_from": (fs, resume_from) if resume_from else None,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=RUN_NAME, storage_path=root, storage_filesystem=fs),
    )
    if not ray.is_initialized():
        logger.info("starting a local Ray instance")
    result = trainer.fit()
    if out is not None:
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint (no report was made)")
        with result.checkpoint.as_directory() as d:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(d) / CHECKPOINT_FILE, out)
        logger.info("copied the final checkpoint to %s", out)
    return result


def main(argv: list[str] | None = None) -> Any:
    """Command-line entry point; returns the ``ray.train.Result``."""
    import sys

    p = argparse.ArgumentParser(description="Train the uae-ray embedding with Ray Train (TorchTrainer)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--storage", default=None, help="folder or s3:// URI for checkpoints and metrics")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --storage")
    p.add_argument("--report-every", type=int, default=50)
    defaults = {"steps": 200}
    add_config_arguments(p, defaults)
    args = p.parse_args(argv)
    cfg = config_from_args(args, defaults)
    command = "python -m uae_ray.train.ray_trainer " + " ".join(argv if argv is not None else sys.argv[1:])
    return run_ray_training(
        args.data, cfg, args.out, args.workers, args.use_gpu, args.storage, args.threads, args.report_every,
        command=command, resume=args.resume,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
