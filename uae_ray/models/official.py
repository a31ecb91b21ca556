"""Load the official SAM / UAE mmcv checkpoints into :class:`~uae_ray.models.sam_r18.SamR18`.

The published checkpoints (``SAM.pth``, ``SAMv2_iter_20000.pth``,
``CrossSAM_iter_20000_ct_mr_inter_1.pth``) are mmcv ``save_checkpoint`` files::

    {"meta": {"mmcv_version", "time", "iter", "config", ...},
     "state_dict": {"backbone.conv1.conv.weight": tensor, ...},
     "optimizer": {...}}   # optional

Their keys are checked against ``manifests/sam_r18.json`` (derived from the published model
definition) before loading, so any other file fails with one clear line.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from uae_ray.models.digest import file_sha256
from uae_ray.models.sam_r18 import ARCH, SamR18, sam_r18_config

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).resolve().parent / "manifests" / "sam_r18.json"
#: Manifest variants: SAM (local + global) and UAE (+ semantic head).
VARIANTS = ("sam", "uae")
#: numpy objects that may appear in an mmcv ``meta`` and are safe to unpickle.
_SAFE_NUMPY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
_LIST_FIRST = 3


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict[str, tuple[int, ...]]]:
    """Expected ``{variant: {key: shape}}`` of the official checkpoints (``"sam"``, ``"uae"``)."""
    data = json.loads(MANIFEST_PATH.read_text())
    return {v: {k: tuple(shape) for k, shape in data[v].items()} for v in VARIANTS}


def _resolve(name: str) -> Any:
    module, attr = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


def _numpy_dtype_classes() -> list[type]:
    """numpy's dtype classes (``numpy.dtypes.Int64DType``, ...), which pickled scalars reference."""
    try:
        import numpy.dtypes as npd
    except ImportError:  # numpy < 1.25
        return []
    return [c for c in vars(npd).values() if isinstance(c, type) and c.__name__.endswith("DType")]


def read_raw_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a checkpoint on the CPU, as safely as its content allows.

    Tries ``weights_only=True``; then the same with the numpy types an mmcv ``meta`` may hold
    allowed. Full unpickling (``weights_only=False``), which can run code from the file, is
    done only when the environment says the user trusts their checkpoints
    (``UAE_TRUST_CHECKPOINTS=1``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file needs full unpickling and ``UAE_TRUST_CHECKPOINTS`` is not set
            (one line naming the file and the types it needs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - e.g. a legacy (non-zip) file: decide below
        unsafe = None
    if unsafe is not None and all(n in _SAFE_NUMPY_GLOBALS or n.startswith("numpy.dtypes.") for n in unsafe):
        with torch.serialization.safe_globals([_resolve(n) for n in unsafe] + _numpy_dtype_classes()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                pass
    if os.environ.get("UAE_TRUST_CHECKPOINTS", "") not in ("1", "true", "yes"):
        raise ValueError(
            f"{path}: the checkpoint needs full unpickling (it holds {unsafe or 'non-tensor objects'}), which can run "
            "code from the file; set UAE_TRUST_CHECKPOINTS=1 if you trust it"
        )
    logger.warning("%s: loading with weights_only=False (UAE_TRUST_CHECKPOINTS is set)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def is_official_checkpoint(data: Any) -> bool:
    """Whether ``data`` (a loaded file) is an mmcv-format checkpoint rather than an uae-ray one.

    mmcv files have ``"meta"`` and/or a ``"state_dict"`` with ``backbone.`` keys, and no
    ``"config"`` (uae-ray checkpoints always carry their :class:`EmbeddingConfig`).
    """
    if not isinstance(data, dict) or "config" in data:
        return False
    state = data.get("state_dict")
    has_backbone = isinstance(state, dict) and any(
        isinstance(k, str) and k.removeprefix("module.").startswith("backbone.") for k in state
    )
    return "meta" in data or has_backbone


def official_state_dict(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of an mmcv checkpoint (``data["state_dict"]`` or ``data``), ``module.`` stripped."""
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        return {}
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _first(names: list[str]) -> str:
    more = ", ..." if len(names) > _LIST_FIRST else ""
    return ", ".join(names[:_LIST_FIRST]) + more


def check_official_keys(state: dict[str, Any], path: str | Path) -> str:
    """Check a state dict against the manifest; return its variant (``"sam"`` or ``"uae"``).

    The variant is ``"uae"`` when any ``semantic_head.`` key is present. A missing
    ``*.num_batches_tracked`` is tolerated (older torch did not save it).

    Raises:
        ValueError: One line naming the file, the number and first few missing keys,
            unexpected keys and shape mismatches.
    """
    variant = "uae" if any(k.startswith("semantic_head.") for k in state) else "sam"
    expected = load_manifest()[variant]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} != {list(s)}"
        for k, s in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != s
    ]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing keys" + (f" ({_first(missing)})" if missing else "")]
        parts.append(f"{len(unexpected)} unexpected keys" + (f" ({_first(unexpected)})" if unexpected else ""))
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_first(shapes)})")
        raise ValueError(
            f"{path}: not an official SAM/UAE {ARCH} checkpoint (compared with the {variant!r} "
            f"manifest {MANIFEST_PATH.name}): " + "; ".join(parts)
        )
    return variant


def load_official_checkpoint(path: str | Path, data: Any = None) -> SamR18:
    """Load an official SAM/UAE mmcv checkpoint into :class:`SamR18` (eval mode, float32).

    Args:
        path: The ``.pth`` file (e.g. ``SAM.pth``, ``SAMv2_iter_20000.pth``).
        data: The already loaded file content (:func:`read_raw_checkpoint`), to avoid a
            second read.

    Returns:
        The model, with the semantic head when the file has one; ``model.version`` is
        ``"sam-r18-<file stem>+<sha8>"`` and ``model.meta`` describes the source.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not such a checkpoint (one line, see
            :func:`check_official_keys`).
    """
    path = Path(path)
    if data is None:
        data = read_raw_checkpoint(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an mmcv checkpoint (a {type(data).__name__}, not a dict)")
    state = official_state_dict(data)
    variant = check_official_keys(state, path)
    model = SamR18(sam_r18_config(semantic=variant == "uae"))
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(floats, strict=False)  # keys were checked; only num_batches_tracked may lack
    sha8 = file_sha256(path)[:8]
    model.version = f"{ARCH}-{path.stem}+{sha8}"
    src_meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    model.meta = {  # type: ignore[attr-defined]
        "version": model.version,
        "source": "official",
        "file": path.name,
        "variant": variant,
        **{k: v for k, v in src_meta.items() if k in ("mmcv_version", "time", "epoch", "iter")},
    }
    return model.eval()
