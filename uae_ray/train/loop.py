"""Plain PyTorch training loop for the SAM-style self-supervised embedding (no Ray needed).

Usage::

    python -m uae_ray.train.loop --data ../shared/data --steps 3000 --seconds 1800 \
        --threads 2 --out uae_ray/models/weights/uae_tiny_v0.pt

    python -m uae_ray.train.loop --data ../shared/data --config uae_ctmr.yaml --pair-prob 0.5

Each step takes ``batch_scans`` items of distinct patients, draws two random affine views of
each (known correspondence), embeds all views in one forward pass and adds a local InfoNCE loss
(4 mm map; positives at the exact corresponding location, negatives farther than
``local_ignore_mm``, hard ones ranked by local + global similarity, plus random ones) and a
global InfoNCE loss (16 mm map; negatives also from the other items of the batch).

An item is either one volume (CT, or MR with ``modalities`` including MR) seen twice, or, with
probability ``pair_prob``, an aligned CT-MR pair of one patient (UAE cross-modality stage): view
A from the CT, view B from the MR at the same world location (:mod:`uae_ray.train.pairs`).
With probability ``modality_shift_prob`` a view's intensities are inverted / histogram-shifted
(:class:`~uae_ray.train.augment.RandomModalityShift`) so that CT views look MR-like.

UAE semantic head (``semantic_weight > 0``): the model gets a semantic head
(``EmbeddingConfig.semantic_dim``, :func:`build_train_model`), and for every item whose scan has
an organ label map the prototype contrastive loss (:func:`~uae_ray.train.losses.prototype_loss`,
temperature ``semantic_temperature``) is added: organ prototypes of one view, voxels of the
other, both directions. The label maps follow each view's spatial transform exactly
(:func:`~uae_ray.train.augment.extract_labels`); items without labels add nothing.
Hyper-parameters come from :class:`TrainConfig`, a YAML file (``--config``) and CLI flags (which
win over the file).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from uae_ray.models.checkpoint import read_checkpoint, save_checkpoint
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.split import DEFAULT_SPLIT, load_split, read_case_patients
from uae_ray.train.config import TrainConfig, add_config_arguments, config_from_args
from uae_ray.train.data import fetch_data, load_volumes
from uae_ray.train.trainer import Trainer, TrainState, build_train_model

logger = logging.getLogger(__name__)


def train(
    data_dir: str | Path,
    config: TrainConfig,
    out: str | Path | None = None,
    threads: int | None = None,
    command: str | None = None,
    init: str | Path | None = None,
    release: str = "v0",
    split: str | None = DEFAULT_SPLIT,
    resume: bool = False,
) -> tuple[EmbeddingNet, TrainState]:
    """Prepare the cases of ``data_dir`` (``config.modalities``), train, and optionally save the
    checkpoint and its training report (``<out>.html`` and ``<out>.png``: loss curves).

    Args:
        data_dir: Data folder with ``manifest.csv``.
        config: Hyper-parameters.
        out: Checkpoint path to write (``None``: do not save).
        threads: ``torch.set_num_threads`` value (``None``: leave as is).
        command: Command line recorded in the checkpoint metadata.
        init: Checkpoint to start from (continue training); ``None``: random initialisation.
        release: Release tag of the version string (``<model>-<release>+<sha8>``).
        split: Patient split (:mod:`uae_ray.split`) whose *train* side is used; ``None``: every
            case of ``data_dir`` (then no figure on these patients is leave-patient-out).
        resume: Continue from ``<out minus .pt>.resume.pt`` where it exists (written every
            5 minutes and at the end of every run with ``out``); the budget ``seconds`` counts
            the time of all runs together.

    Returns:
        ``(model in eval mode, final TrainState)``.
    """
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    data_dir = fetch_data(data_dir)
    case_ids = None
    if split is not None:
        case_ids = load_split(split).cases(read_case_patients(data_dir), "train")
        logger.info("split %s: training on the %d cases of its train side", split, len(case_ids))
    volumes = load_volumes(data_dir, config.modalities, labels=config.semantic_weight > 0, case_ids=case_ids)
    logger.info("prepared %d %s volumes in %.1fs", len(volumes), "/".join(config.modalities), time.perf_counter() - t0)
    if config.semantic_weight > 0:
        logger.info("semantic loss on: %d of %d volumes have organ labels", sum(v.has_labels for v in volumes), len(volumes))
    model = build_train_model(config, init)
    if init is not None:
        logger.info("starting from %s (%s)", init, model.version)
        model.train()
    trainer = Trainer(model, volumes, config)
    resume_path = Path(out).with_suffix(".resume.pt") if out is not None else None
    if resume and resume_path is not None and resume_path.is_file():
        trainer.load_resume(resume_path)
        logger.info("resumed from %s at step %d (%.0f s trained)", resume_path, trainer.state.step, trainer.state.elapsed_s)
    state = trainer.fit(resume_path=resume_path)
    model.eval()
    if out is not None:
        last = state.history[-1] if state.history else {}
        meta = {
            "trained_on": sorted({v.case_id for v in volumes} | set(_init_trained_on(init))),
            "init": str(init) if init is not None else "",
            "split": split or "",
            "cross_modal_pairs": [list(p.case_ids) for p in trainer.pairs],
            "command": command or "",
            "steps": state.step,
            "time_s": round(state.elapsed_s, 1),
            "final_loss": last.get("loss"),
            "train_config": asdict(config),
            "torch_threads": torch.get_num_threads(),
            "version": f"{config.model}-{release}",
        }
        model.version = save_checkpoint(model, out, meta)
        from uae_ray.report.training import training_report

        report = training_report(Path(out).with_suffix(".html"), state.history,
                                 {"version": model.version, **{k: v for k, v in meta.items() if k != "train_config"},
                                  "train_config": asdict(config)})
        logger.info("wrote %s (version %s) and %s", out, model.version, report)
    return model, state


def _init_trained_on(init: str | Path | None) -> list[str]:
    """Case ids the ``--init`` checkpoint was trained on (its lineage counts as seen data)."""
    if init is None:
        return []
    return list(read_checkpoint(init).get("meta", {}).get("trained_on", []))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``python -m uae_ray.train.loop``."""
    p = argparse.ArgumentParser(description="Self-supervised training of the uae-ray embedding network (CPU/GPU, no Ray).")
    p.add_argument("--data", required=True, help="data folder with manifest.csv")
    p.add_argument("--out", default=None, help="checkpoint to write")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--init", default=None, help="checkpoint to continue training from")
    p.add_argument("--release", default="v0", help="release tag in the version string (default: %(default)s)")
    p.add_argument("--split", default=DEFAULT_SPLIT,
                   help="patient split whose train side is used, a name or a .json file; 'none': every case "
                        "(default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume.pt where it exists")
    add_config_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> TrainState:
    """Entry point; returns the final training state."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    command = "python -m uae_ray.train.loop " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    split = None if args.split.lower() == "none" else args.split
    _, state = train(args.data, cfg, out=args.out, threads=args.threads, command=command, init=args.init,
                     release=args.release, split=split, resume=args.resume)
    return state


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
