"""``--device`` for in-process models: auto picks CUDA only when this torch build has it; cuda
without CUDA is a one-line error; the embedder runs where it was put."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uae_ray.cli import main
from uae_ray.models.inference import resolve_device
from uae_ray.serving import LocalEmbedder


def test_auto_and_cpu() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, caplog) -> None:
    with pytest.raises(ValueError, match=r"--device cuda: no CUDA device \(torch .*\); install a CUDA build"):
        resolve_device("cuda")
    code = main(["landmarks", "--template", "t.nii.gz", "--points", "p.csv", "--target", "t.nii.gz",
                 "--out", str(tmp_path / "d.csv"), "--device", "cuda"])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("--device cuda: no CUDA device")


def test_embedder_runs_on_its_device() -> None:
    emb = LocalEmbedder(device="cpu")
    assert emb.device.type == "cpu" and next(emb.model.parameters()).device.type == "cpu"
    out = emb.embed(np.zeros((32, 32, 32), dtype=np.float32) - 1.0)
    assert out["local"].dtype == np.float32 and out["local"].shape[1:] == (16, 16, 16)
