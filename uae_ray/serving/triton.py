"""Embedder backed by a Triton Inference Server (HTTP, binary tensors).

The model's version and :class:`EmbeddingConfig` come with every response (outputs ``VERSION``
and ``CONFIG``); on first use a small probe request reads them (see
:mod:`uae_ray.serving.protocol`).
Connection errors, HTTP 5xx answers, "model not ready / unknown" answers (a server restarting
and loading its models) and timeouts of the small metadata calls are retried with exponential
backoff (capped; by default about 24 s in all, longer than a restart of the local server); other
4xx answers (bad input) and timed-out inferences are not. Every retry is counted
(:attr:`TritonEmbedder.retries_done`) so that jobs can report them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, TypeVar

import numpy as np

from uae_ray.models.config import EmbeddingConfig
from uae_ray.serving import protocol as P
from uae_ray.serving.local import check_volume

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TritonEmbedderError(RuntimeError):
    """Triton answered, but not as expected (model missing, bad request, model error)."""


class TritonUnavailableError(TritonEmbedderError):
    """The Triton server could not be reached (after the retries); ``url`` names it."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def _split_url(url: str) -> tuple[str, bool]:
    """``"http://h:p/"`` -> ``("h:p", False)``; ``"https://h:p"`` -> ``("h:p", True)``."""
    text = url.strip()
    ssl = text.lower().startswith("https://")
    for prefix in ("http://", "https://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"Triton URL must be host:port (optionally with http://), got {url!r}")
    return text, ssl


def triton_http():
    """The ``tritonclient.http`` module, or a one-line error saying how to install it."""
    try:
        import tritonclient.http as httpclient
    except ImportError:
        raise ImportError("--triton needs the Triton client, which is not installed: pip install 'uae-ray[stack]' "
                          "(or run in-process without --triton)") from None
    return httpclient


def _is_timeout(exc: BaseException) -> bool:
    try:
        import gevent

        if isinstance(exc, gevent.Timeout):
            return True
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        pass
    return isinstance(exc, TimeoutError)  # socket.timeout is TimeoutError


def _transient(exc: BaseException, retry_timeouts: bool) -> bool:
    """Worth retrying: no connection, a 5xx answer, or (if allowed) a timeout."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = str(exc.message() or "").lower()
        loading = "unknown model" in message or "not ready" in message or "unavailable" in message
        return status.startswith("5") or not status.isdigit() or loading
    if _is_timeout(exc):
        return retry_timeouts
    try:
        from geventhttpclient.response import HTTPConnectionClosed
    except ImportError:  # pragma: no cover - geventhttpclient comes with tritonclient[http]
        HTTPConnectionClosed = OSError  # noqa: N806
    # the server closed the connection before answering (stopped or restarting); inference is a
    # pure function of its input, so sending it again is safe
    return isinstance(exc, (OSError, HTTPConnectionClosed))


def _describe(exc: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = f"HTTP {exc.status()}: " if exc.status() else ""
        return f"{status}{exc.message()}".splitlines()[0]
    return f"{exc.__class__.__name__}: {exc}".splitlines()[0]


def _model_state(entry: dict[str, Any]) -> str:
    """``"name=STATE (reason)"`` of a repository index entry."""
    reason = f" ({entry['reason']})" if entry.get("reason") else ""
    return f"{entry.get('name')}={entry.get('state', '?')}{reason}"


class TritonEmbedder:
    """Implements the ``Embedder`` protocol through a Triton server.

    Args:
        url: Triton HTTP endpoint, ``host:port`` (``http://`` / ``https://`` accepted).
        model_name: Model in the server's repository.
        timeout_s: Network timeout of one request, queueing on the server included (an
            inference of a large volume on a busy CPU can take minutes). Timed-out inferences
            are not retried.
        retries: Extra attempts after a connection error, timeout, 5xx or model-loading answer.
        backoff_s: Pause before the first retry; doubles for each further one, up to
            ``max_backoff_s`` (defaults: 0.5, 1, 2, 4, 8, 8 s: about 24 s before giving up).
        max_backoff_s: Longest pause between two attempts.
        connection_timeout_s: Timeout to open a connection.

    Attributes:
        url: The ``host:port`` used.
        version: Model version string (fetched from the server on first access).
        retries_done: Retries made so far (a job reports the difference over a scan).
        config: The model's :class:`EmbeddingConfig` (fetched on first access).

    Raises:
        TritonUnavailableError: (on first use) the server cannot be reached.
        TritonEmbedderError: the model is not ready, or a request fails.
    """

    def __init__(
        self,
        url: str,
        model_name: str = P.MODEL_NAME,
        timeout_s: float = 300.0,
        retries: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        connection_timeout_s: float = 5.0,
    ) -> None:
        triton_http()  # one line naming the extra to install when the client is missing
        self.url, self._ssl = _split_url(url)
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self.retries = max(int(retries), 0)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.retries_done = 0  # retries made by this embedder (all threads), for job reports
        self.connection_timeout_s = float(connection_timeout_s)
        self._local = threading.local()  # tritonclient.http clients are not thread-safe
        self._meta: tuple[str, EmbeddingConfig] | None = None

    def __repr__(self) -> str:
        return f"TritonEmbedder(url={self.url!r}, model_name={self.model_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # ------------------------------------------------------------------ client plumbing
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            httpclient = triton_http()

            client = httpclient.InferenceServerClient(
                self.url, ssl=self._ssl, connection_timeout=self.connection_timeout_s,
                network_timeout=self.timeout_s,
            )
            self._local.client = client
        return client

    def _reset_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken client must not hide the real error
                pass

    def close(self) -> None:
        """Close this thread's connection to the server (a later call opens a new one)."""
        self._reset_client()

    def _call(self, what: str, fn: Callable[[Any], T], retry_timeouts: bool = True) -> T:
        """Run ``fn(client)`` with retries on transient errors.

        Inference calls pass ``retry_timeouts=False``: a request that timed out may still be
        running on the server, and sending it again only adds load.
        """
        t0 = time.monotonic()
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return fn(self._client())
            except BaseException as exc:  # gevent.Timeout is a BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                if _is_timeout(exc) and not retry_timeouts:
                    raise TritonEmbedderError(
                        f"Triton at {self.url}: {what} timed out after {self.timeout_s:.0f} s "
                        f"(raise timeout_s, or add model instances)"
                    ) from exc
                if not _transient(exc, retry_timeouts):
                    raise TritonEmbedderError(f"Triton at {self.url}: {what} failed: {_describe(exc)}") from exc
                self._reset_client()
                if attempt + 1 == attempts:
                    raise TritonUnavailableError(
                        f"Triton at {self.url}: {what} failed after {attempts} attempt(s) in "
                        f"{time.monotonic() - t0:.1f} s ({_describe(exc)}); is the server running? "
                        f"Start the local one with `uae-ray stack up`, or check --triton / UAE_TRITON_URL",
                        self.url,
                    ) from exc
                pause = min(self.backoff_s * (2 ** attempt), self.max_backoff_s)
                self.retries_done += 1
                logger.warning("Triton at %s: %s failed (%s); retry %d/%d in %.1f s", self.url, what,
                               _describe(exc), attempt + 1, self.retries, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------ metadata
    def check_ready(self) -> None:
        """Raise unless the server is reachable and the model is ready.

        Raises:
            TritonUnavailableError: The server cannot be reached.
            TritonEmbedderError: The model is not loaded or not ready.
        """
        if not self._call("health check", lambda c: c.is_server_live()):
            raise TritonEmbedderError(f"Triton at {self.url} answers but is not live")
        if not self._call(f"readiness check of model {self.model_name!r}",
                          lambda c: c.is_model_ready(self.model_name)):
            try:
                index = self._call("repository index", lambda c: c.get_model_repository_index())
                states = ", ".join(_model_state(m) for m in index) or "none"
            except TritonEmbedderError:
                states = "unknown"
            raise TritonEmbedderError(
                f"Triton at {self.url}: model {self.model_name!r} is not ready (models: {states}); "
                f"see the server log"
            )

    def _infer(self, what: str, volume: np.ndarray, outputs: tuple[str, ...]) -> Any:
        httpclient = triton_http()

        array = volume[None, None]  # batch, channel (the server batches requests of one shape)
        inp = httpclient.InferInput(P.INPUT_VOLUME, list(array.shape), "FP32")
        inp.set_data_from_numpy(array, binary_data=True)
        requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
        return self._call(what, lambda c: c.infer(self.model_name, [inp], outputs=requested), retry_timeouts=False)

    @staticmethod
    def _text(result: Any, name: str) -> str:
        value = result.as_numpy(name)
        if value is None or value.size != 1:
            raise TritonEmbedderError(f"the model returned no {name} output")
        item = value.reshape(-1)[0]
        return item.decode() if isinstance(item, bytes) else str(item)

    def _metadata(self) -> tuple[str, EmbeddingConfig]:
        """Version and config of the served model, from a probe request (cached)."""
        if self._meta is None:
            self.check_ready()
            probe = np.full(P.PROBE_SHAPE, -1.0, dtype=np.float32)
            result = self._infer(f"probe of model {self.model_name!r}", probe, (P.OUTPUT_VERSION, P.OUTPUT_CONFIG))
            try:
                version = self._text(result, P.OUTPUT_VERSION)
                config = EmbeddingConfig.from_dict(json.loads(self._text(result, P.OUTPUT_CONFIG)))
            except (TritonEmbedderError, ValueError, TypeError) as exc:
                raise TritonEmbedderError(
                    f"Triton at {self.url}: model {self.model_name!r} does not answer like "
                    f"model_repo/uae_embedder ({exc})"
                ) from exc
            self._meta = (version, config)
            logger.debug("Triton at %s serves %s", self.url, version)
        return self._meta

    def batch_statistics(self) -> dict[str, int]:
        """The server's counts for this model since it started: ``inferences`` (requests
        answered), ``executions`` (forward passes; fewer when requests were batched)."""
        stats = self._call("statistics", lambda c: c.get_inference_statistics(self.model_name))
        entry = next((m for m in stats.get("model_stats", []) if m.get("name") == self.model_name), {})
        return {"inferences": int(entry.get("inference_count", 0)), "executions": int(entry.get("execution_count", 0))}

    @property
    def version(self) -> str:
        """Version string of the served model."""
        return self._metadata()[0]

    @property
    def config(self) -> EmbeddingConfig:
        """:class:`EmbeddingConfig` of the served model."""
        return self._metadata()[1]

    # ---------------------------------------------------------------------- inference
    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """Embed one prepared volume on the server.

        Args:
            volume: (Z, Y, X) float32 on the model grid (2 mm, normalised intensities).

        Returns:
            ``{"local": (Cl, z, y, x), "global": (Cg, z, y, x)}`` float32, L2-normalised on C,
            plus ``"semantic"`` (Cs, z, y, x) when the served model has a semantic head.

        Raises:
            ValueError: Not a 3D volume.
            TritonUnavailableError: The server cannot be reached (after the retries).
            TritonEmbedderError: The server rejected the request or the model failed, or the
                served model version changed since :attr:`version` was read.
        """
        array = check_volume(volume)
        version = self.version
        semantic = self.config.semantic_dim > 0
        outputs = (P.OUTPUT_LOCAL, P.OUTPUT_GLOBAL, P.OUTPUT_VERSION) + ((P.OUTPUT_SEMANTIC,) if semantic else ())
        result = self._infer(f"inference of a {array.shape} volume", array, outputs)
        served_version = self._text(result, P.OUTPUT_VERSION)
        if served_version != version:
            self._meta = None
            raise TritonEmbedderError(
                f"Triton at {self.url}: the served model changed from {version} to {served_version}; "
                f"results would mix versions"
            )
        out = {
            "local": np.ascontiguousarray(result.as_numpy(P.OUTPUT_LOCAL)[0], dtype=np.float32),
            "global": np.ascontiguousarray(result.as_numpy(P.OUTPUT_GLOBAL)[0], dtype=np.float32),
        }
        if semantic:
            sem = result.as_numpy(P.OUTPUT_SEMANTIC)
            if sem is None:
                raise TritonEmbedderError(f"Triton at {self.url}: the model returned no {P.OUTPUT_SEMANTIC} output")
            out["semantic"] = np.ascontiguousarray(sem[0], dtype=np.float32)
        return out
