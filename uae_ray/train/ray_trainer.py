"""Ray Train wrapper (``TorchTrainer``) around :class:`uae_ray.train.loop.Trainer`.

Thin by design: every worker runs the plain loop on its own random views (seed + rank);
with more than one worker ``ray.train.torch.prepare_model`` wraps the network in
DistributedDataParallel, so gradients are averaged. Rank 0 writes an uae-ray checkpoint
(:func:`uae_ray.models.checkpoint.save_checkpoint`) into a ``ray.train.Checkpoint`` at every
report; a run resumes from ``ray.train.get_checkpoint()`` when Ray restarts it.

Usage::

    python -m uae_ray.train.ray_trainer --data ../shared/data --steps 200 --workers 1 \
        --out runs/ray/uae_tiny.pt [--storage runs/ray] [--use-gpu] \
        [--config uae_ctmr.yaml] [--modalities CT MR --modality-shift-prob 0.5 --pair-prob 0.25]

The TrainConfig flags and ``--config`` are those of ``python -m uae_ray.train.loop``
(:func:`uae_ray.train.loop.add_config_arguments`); here ``steps`` defaults to 200.
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
from uae_ray.models.registry import build_model
from uae_ray.train.data import TrainVolume, load_volumes
from uae_ray.train.loop import TrainConfig, Trainer, add_config_arguments, config_from_args

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


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
    volumes: list[TrainVolume] = config.get("volumes") or load_volumes(config["data_dir"], cfg.modalities)
    model = build_model(cfg.model)
    start_step = 0
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            load_checkpoint_into(model, Path(d) / CHECKPOINT_FILE)
            start_step = int(getattr(model, "meta", {}).get("steps", 0))
    forward = ray.train.torch.prepare_model(model)
    trainer = Trainer(model, volumes, cfg, forward_module=forward)
    trainer.state.step = start_step
    cfg.log_every = int(config.get("report_every", cfg.log_every))
    t0 = time.perf_counter()

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
                    "version": f"{cfg.model}-v0",
                }
                save_checkpoint(model, Path(tmp) / CHECKPOINT_FILE, meta)
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
) -> Any:
    """Train with Ray Train and copy the last checkpoint to ``out``.

    Args:
        data_dir: Data folder with ``manifest.csv`` (ignored when ``volumes`` is given).
        config: Hyper-parameters (``steps``/``seconds`` per worker).
        out: Where to copy the final uae-ray checkpoint file.
        num_workers: Ray Train workers (1 CPU each unless ``use_gpu``).
        use_gpu: One GPU per worker.
        storage_path: Ray Train storage folder (default: a temporary folder).
        threads: torch threads per worker.
        report_every: Steps between reports (each report writes a checkpoint).
        volumes: Pre-loaded volumes (tests).
        command: Command line recorded in the checkpoint metadata.

    Returns:
        The ``ray.train.Result``.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(storage_path) if storage_path else Path(tempfile.mkdtemp(prefix="uae_ray_train_"))
    loop_config = {
        "train": asdict(config),
        "data_dir": str(data_dir) if data_dir is not None else None,
        "volumes": volumes,
        "threads": threads,
        "report_every": report_every,
        "command": command,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name="uae_embedding", storage_path=str(storage.resolve())),
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
    p.add_argument("--storage", default=None)
    p.add_argument("--report-every", type=int, default=50)
    defaults = {"steps": 200}
    add_config_arguments(p, defaults)
    args = p.parse_args(argv)
    cfg = config_from_args(args, defaults)
    command = "python -m uae_ray.train.ray_trainer " + " ".join(argv if argv is not None else sys.argv[1:])
    return run_ray_training(
        args.data, cfg, args.out, args.workers, args.use_gpu, args.storage, args.threads, args.report_every, command=command
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
