"""The published SAM/UAE network ("sam-r18"): official key names, output geometry, loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.models import EmbeddingConfig, build_model, embed_array, load_model, save_checkpoint
from uae_ray.models.official import MANIFEST_PATH, load_manifest, load_official_checkpoint
from uae_ray.models.sam_r18 import SamR18, sam_r18_config

# Key names quoted in the issue / published README for the official checkpoints.
DOCUMENTED_KEYS = (
    "backbone.layer1.0.conv1.conv.weight",
    "neck.lateral_convs.0.conv.weight",
    "read_out_head.fpn_convs.0.conv.weight",
)


def _fake_official(path: Path, variant: str, dtype: torch.dtype = torch.float32, prefix: str = "") -> dict:
    """Write an mmcv-style checkpoint with random tensors of the manifest's keys and shapes."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in load_manifest()[variant].items():
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.rand(shape, generator=gen).to(dtype) + 0.5
        else:
            state[prefix + key] = (0.05 * torch.randn(shape, generator=gen)).to(dtype)
    meta = {"mmcv_version": "1.4.7", "iter": 20000, "seed": np.int64(0), "config": "model = dict(type='Sam')"}
    torch.save({"meta": meta, "state_dict": state}, path)
    return state


@pytest.fixture(scope="module")
def uae_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("official") / "SAMv2_iter_20000.pth"
    return path, _fake_official(path, "uae")


@pytest.mark.parametrize("variant", ["sam", "uae"])
def test_state_dict_matches_manifest(variant: str) -> None:
    model = SamR18(sam_r18_config(semantic=variant == "uae"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = load_manifest()[variant]
    assert list(ours) == list(expected)  # same keys, same (mmcv) order
    assert ours == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert (len(ours), n_params) == {"sam": (138, 32_832_960), "uae": (146, 33_333_184)}[variant]


def test_manifest_has_documented_keys() -> None:
    raw = json.loads(MANIFEST_PATH.read_text())
    for variant in ("sam", "uae"):
        assert set(DOCUMENTED_KEYS) <= set(raw[variant])
        assert raw[variant]["backbone.conv1.conv.weight"] == [64, 1, 3, 7, 7]  # 3x7x7 stem, 1 channel
        assert raw[variant]["backbone.layer1.0.conv1.conv.weight"] == [64, 64, 1, 3, 3]
        assert raw[variant]["backbone.layer4.0.downsample.conv.weight"] == [512, 256, 1, 1, 1]
    assert not any(k.startswith("semantic_head.") for k in raw["sam"])
    sem = {k[len("semantic_head.") :]: v for k, v in raw["uae"].items() if k.startswith("semantic_head.")}
    assert sem == {k[len("neck.") :]: v for k, v in raw["uae"].items() if k.startswith("neck.")}


def test_forward_geometry_and_norm() -> None:
    torch.manual_seed(0)
    model = SamR18(sam_r18_config(semantic=True)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 64, 64) * 2 - 1)
        odd = model(torch.rand(1, 1, 10, 18, 17) * 2 - 1)  # padded inside, cropped back
    assert out["local"].shape == out["semantic"].shape == (1, 128, 16, 32, 32)  # stride 2 (4 mm)
    assert out["global"].shape == (1, 128, 8, 4, 4)  # stride (4, 16, 16) in (z, y, x)
    assert odd["local"].shape == (1, 128, 5, 9, 9) and odd["global"].shape == (1, 128, 3, 2, 2)
    for t in out.values():
        torch.testing.assert_close(t.norm(dim=1), torch.ones_like(t[:, 0]), atol=1e-4, rtol=0)
    assert model.config.stride_zyx("local") == (2, 2, 2) and model.config.stride_zyx("global") == (4, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, 1, Z, Y, X\)"):
        model(torch.zeros(1, 2, 8, 16, 16))


def test_official_checkpoint_loads_by_path(uae_file: tuple[Path, dict]) -> None:
    path, state = uae_file
    model = load_model(path)
    assert isinstance(model, SamR18) and model.has_semantic and not model.training
    assert model.version.startswith("sam-r18-SAMv2_iter_20000+") and model.meta["variant"] == "uae"
    loaded = model.state_dict()
    for key in DOCUMENTED_KEYS + ("semantic_head.fpn_convs.0.conv.bias",):
        torch.testing.assert_close(loaded[key], state[key])
    assert int(loaded["backbone.conv1.bn.num_batches_tracked"]) == 7

    built = build_model("sam-r18", checkpoint=path)
    assert built.has_semantic and built.version == model.version
    out = embed_array(built, np.full((16, 32, 32), -1.0, np.float32))
    assert set(out) == {"local", "global", "semantic"} and out["local"].shape == (128, 8, 16, 16)


def test_sam_variant_half_and_module_prefix(tmp_path: Path) -> None:
    path = tmp_path / "SAM.pth"
    _fake_official(path, "sam", dtype=torch.float16, prefix="module.")
    model = load_official_checkpoint(path)
    assert not model.has_semantic and model.config.semantic_dim == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="no semantic head"):
        build_model("uae-r18", checkpoint=path)


def test_wrong_keys_give_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    state = {k: torch.zeros(()).expand(s) for k, s in load_manifest()["sam"].items()}  # tiny file
    del state["neck.lateral_convs.0.conv.weight"]
    state["neck.extra_conv.weight"] = torch.zeros(3)
    torch.save({"meta": {}, "state_dict": state}, path)
    for load in (load_model, lambda p: build_model("sam-r18", checkpoint=p)):
        with pytest.raises(ValueError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg
        assert "1 missing keys (neck.lateral_convs.0.conv.weight)" in msg
        assert "1 unexpected keys (neck.extra_conv.weight)" in msg


def test_own_checkpoint_of_sam_r18_and_old_configs(tmp_path: Path) -> None:
    path = tmp_path / "sam_r18_ours.pt"
    save_checkpoint(build_model("sam-r18"), path, {"steps": 0})
    loaded = load_model(path)
    assert isinstance(loaded, SamR18) and loaded.config == sam_r18_config()
    old = EmbeddingConfig().to_dict()
    del old["arch"], old["semantic_dim"]  # a checkpoint written before these fields existed
    assert EmbeddingConfig.from_dict(old) == EmbeddingConfig()


class _Opaque:
    """A non-tensor object: loading it needs full unpickling."""


def test_untrusted_pickle_needs_explicit_trust(tmp_path, monkeypatch):
    from uae_ray.models.official import read_raw_checkpoint

    path = tmp_path / "odd.pth"
    torch.save({"meta": {"obj": _Opaque()}, "state_dict": {}}, path)
    monkeypatch.delenv("UAE_TRUST_CHECKPOINTS", raising=False)
    with pytest.raises(ValueError, match="UAE_TRUST_CHECKPOINTS=1") as e:
        read_raw_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("UAE_TRUST_CHECKPOINTS", "1")
    assert isinstance(read_raw_checkpoint(path)["meta"]["obj"], _Opaque)
