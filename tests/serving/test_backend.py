"""The helpers the Triton python backends of model_repo/ share (no Triton needed)."""

from pathlib import Path

from uae_ray.serving.backend import instance_device, parameters, triton_error, weights_setting

CONFIG = {"parameters": {"checkpoint": {"string_value": "weights/m.pt"}, "num_threads": {"string_value": "1"}}}


def test_weights_setting_environment_parameter_shipped_and_relative(monkeypatch, tmp_path):
    monkeypatch.delenv("X_CKPT", raising=False)
    assert parameters(CONFIG) == {"checkpoint": "weights/m.pt", "num_threads": "1"}
    assert weights_setting(CONFIG, "X_CKPT", "checkpoint", (), tmp_path) == str(tmp_path / "weights" / "m.pt")
    assert weights_setting({}, "X_CKPT", "checkpoint", (), tmp_path) is None  # the shipped default
    monkeypatch.setenv("X_CKPT", "tiny-v0")
    assert weights_setting(CONFIG, "X_CKPT", "checkpoint", ("tiny-v0",), tmp_path) == "tiny-v0"  # a shipped name
    monkeypatch.setenv("X_CKPT", "/abs/m.pt")
    assert weights_setting(CONFIG, "X_CKPT", "checkpoint", (), tmp_path) == str(Path("/abs/m.pt"))


def test_instance_device_and_one_line_errors():
    assert str(instance_device({"model_instance_kind": "CPU"}, {}, "num_threads")) == "cpu"  # threads untouched

    class FakeUtils:
        class TritonError:
            INVALID_ARG, INTERNAL = 3, 13

            def __init__(self, message, code=None):
                self.message, self.code = message, code

    bad = triton_error(FakeUtils, "m", ValueError("shape [1]\nsecond line"))
    assert (bad.message, bad.code) == ("m: ValueError: shape [1]", 3)
    assert triton_error(FakeUtils, "m", RuntimeError("boom")).code == 13
