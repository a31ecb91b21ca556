"""TritonEmbedder against the real Triton server of the session stack, and its errors."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator

import numpy as np
import pytest

from uae_ray.serving import LocalEmbedder, TritonEmbedder, get_embedder
from uae_ray.serving.triton import TritonEmbedderError, TritonUnavailableError
from uae_ray.stack.process import free_port

TOL = 1e-4


@pytest.fixture(scope="module")
def local(stack) -> LocalEmbedder:
    """The in-process twin of the served model (same checkpoint)."""
    return LocalEmbedder(checkpoint=stack.config.checkpoint)


@pytest.fixture(scope="module")
def remote(stack) -> Iterator[TritonEmbedder]:
    emb = TritonEmbedder(stack.env["UAE_TRITON_URL"], retries=1, backoff_s=0.1)
    yield emb
    emb.close()
    get_embedder(stack.env["UAE_TRITON_URL"]).close()


def _assert_agree(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b) and {"local", "global"} <= set(a) <= {"local", "global", "semantic"}
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == np.float32
        assert float(np.abs(a[key] - b[key]).max()) < TOL, key


@pytest.mark.stack
def test_version_and_config_match_the_local_model(remote: TritonEmbedder, local: LocalEmbedder) -> None:
    assert remote.version == local.version
    assert remote.config == local.config


@pytest.mark.stack
def test_triton_and_in_process_agree_on_a_random_volume(remote: TritonEmbedder, local: LocalEmbedder) -> None:
    vol = np.random.default_rng(3).uniform(-1, 1, (24, 40, 32)).astype(np.float32)
    _assert_agree(remote.embed(vol), local.embed(vol))


@pytest.mark.stack
@pytest.mark.data
def test_triton_and_in_process_agree_on_a_real_ct(remote, local, shared_data) -> None:
    import SimpleITK as sitk

    from uae_ray.volume import normalize_ct

    image = sitk.ReadImage(str(shared_data / "cases" / "matrad_hn_frm2" / "image.nii.gz"))
    array = normalize_ct(sitk.GetArrayFromImage(image).astype(np.float32))  # z, y, x
    z, y, x = array.shape
    crop = np.ascontiguousarray(array[:32, y // 2 - 32 : y // 2 + 32, x // 2 - 32 : x // 2 + 32])
    _assert_agree(remote.embed(crop), local.embed(crop))


@pytest.mark.stack
def test_get_embedder_and_pickling(stack, remote: TritonEmbedder) -> None:
    emb = get_embedder(stack.env["UAE_TRITON_URL"])
    assert isinstance(emb, TritonEmbedder) and emb.version == remote.version
    clone = pickle.loads(pickle.dumps(emb))  # Ray ships embedders to workers
    out = clone.embed(np.zeros((8, 16, 16), np.float32))
    clone.close()
    assert out["local"].shape[1:] == (4, 8, 8)


@pytest.mark.stack
def test_bad_request_is_a_clear_error_and_the_server_goes_on(stack, remote: TritonEmbedder) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(stack.env["UAE_TRITON_URL"])
    inp = httpclient.InferInput("VOLUME", [1, 1, 0, 8, 8], "FP32")  # batch, channel, Z, Y, X
    inp.set_data_from_numpy(np.zeros((1, 1, 0, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("uae_embedder", [inp])
    client.close()
    assert err.value.status() == "400" and "VOLUME is empty" in err.value.message()
    assert remote.embed(np.zeros((8, 8, 8), np.float32))["local"].shape[1:] == (4, 4, 4)


@pytest.mark.stack
def test_unknown_model_is_reported_as_not_ready(stack) -> None:
    emb = TritonEmbedder(stack.env["UAE_TRITON_URL"], model_name="no_such_model", retries=0)
    with pytest.raises(TritonEmbedderError, match="'no_such_model' is not ready.*uae_embedder=READY"):
        emb.version
    emb.close()


def test_unreachable_server_fails_fast_and_clearly() -> None:
    url = f"127.0.0.1:{free_port()}"
    emb = TritonEmbedder(url, retries=2, backoff_s=0.05, connection_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(TritonUnavailableError) as err:
        emb.embed(np.zeros((8, 8, 8), np.float32))
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert url in message and "3 attempt(s)" in message and "stack up" in message
    assert elapsed < 3.0


def test_bad_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="host:port"):
        TritonEmbedder("http://127.0.0.1:8000/v2/models")


def test_silent_server_times_out_and_inference_timeouts_are_not_retried() -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        emb = TritonEmbedder(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3, retries=1, backoff_s=0.01)
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailableError, match="2 attempt"):
            emb.version
        assert time.monotonic() - t0 < 5
    calls = []

    def slow(_client):
        calls.append(1)
        raise TimeoutError("timed out")

    with pytest.raises(TritonEmbedderError, match="timed out after"):
        emb._call("inference", slow, retry_timeouts=False)
    assert len(calls) == 1
