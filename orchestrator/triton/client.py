"""The transport to Triton's models, over `tritonclient.grpc.aio`: no model's names or shapes
live here (each engine module owns its tensors).

All clients of one Triton URL (in one event loop) share a single `InferenceServerClient`, so
concurrent lip-sync requests from every session travel over one gRPC channel and meet in the
server's dynamic batcher. Each client's `close()` releases its share; the channel closes with the
last one.

The channel reconnects by itself when the server comes back (a restarted embedded server, an
external one after an outage): its reconnect backoff is capped at RECONNECT_BACKOFF_MAX_MS, where
gRPC's default (1 s growing by 1.6x up to 120 s) left the app unable to speak for ~9 s after the
server was ready again.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import KeepAliveOptions
from tritonclient.utils import InferenceServerException

from .shm import SharedMemoryPool, infer_in_shared_memory

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
RECONNECT_BACKOFF_INITIAL_MS = 100
RECONNECT_BACKOFF_MAX_MS = 1000
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # tritonclient's own default: no message size limit


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options plus a short, capped reconnect backoff.

    Passing `channel_args` replaces tritonclient's defaults, so those are repeated here.
    """
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]


def new_client(url: str) -> grpcclient.InferenceServerClient:
    """An InferenceServerClient (gRPC, asyncio) that reconnects quickly; see channel_args()."""
    return grpcclient.InferenceServerClient(url, channel_args=channel_args())


class _SharedChannel:
    """One InferenceServerClient per (URL, event loop), reference-counted.

    Keyed by the loop too: a grpc.aio channel belongs to the loop it was made in. The entry
    holds its loop, so a loop's id cannot be reused while its channel is open.
    """

    _open: dict[tuple[str, int], _SharedChannel] = {}

    def __init__(self, key: tuple[str, int], url: str,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        self.loop = loop
        self.client = new_client(url)
        self.users = 0

    @classmethod
    def acquire(cls, url: str) -> _SharedChannel:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        key = (url, id(loop))
        channel = cls._open.get(key)
        if channel is None:
            channel = cls._open[key] = cls(key, url, loop)
        channel.users += 1
        return channel

    async def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            if self._open.get(self.key) is self:
                del self._open[self.key]
            await self.client.close()


def bytes_input(name: str, value: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return tensor


def fp32_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    array = np.ascontiguousarray(array, dtype=np.float32)
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def strings(array: np.ndarray | None) -> list[str]:
    if array is None:
        return []
    return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]


def times(array: np.ndarray | None) -> np.ndarray:
    if array is None:
        return np.zeros((0, 2), np.float32)
    return array.astype(np.float32, copy=False).reshape(-1, 2)


class _ChannelUser:
    """Holds a share of the URL's channel until close()."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel: _SharedChannel | None = _SharedChannel.acquire(url)

    @property
    def _client(self) -> grpcclient.InferenceServerClient:
        if self._channel is None:
            raise RuntimeError(f"Triton client for {self.url} is closed")
        return self._channel.client

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.release()


class TritonServerClient(_ChannelUser):
    """A Triton server over the shared channel: its health (the supervisor's probe).

    Probing through the channel the models use means "ready" is true only once that channel
    itself has reconnected, so the first request after recovery does not fail.
    """

    async def server_status(self, models: list[str] | tuple[str, ...]) -> dict:
        """{"live", "ready" (server and every model in `models`), "models": {name: ready}}.

        Raises what the gRPC calls raise (InferenceServerException: unreachable and the like).
        """
        live = bool(await self._client.is_server_live())
        server_ready = bool(await self._client.is_server_ready())
        states = {m: bool(await self._client.is_model_ready(m)) for m in models}
        return {"live": live, "ready": server_ready and all(states.values()), "models": states}


class TritonModelClient(_ChannelUser):
    """One model on a Triton server (shared channel): the transport of the TTS engines and
    lip-sync clients. Health is the supervisor's business (TritonServerClient), not theirs."""

    def __init__(self, url: str, model: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(url)
        self.model = model
        self.timeout_s = timeout_s

    async def run(self, inputs: list[grpcclient.InferInput]) -> grpcclient.InferResult:
        """One inference of this model (raises InferenceServerException)."""
        return await self._client.infer(self.model, inputs, client_timeout=self.timeout_s)

    async def config(self) -> dict:
        """The model's configuration as Triton serves it (JSON form)."""
        return (await self._client.get_model_config(self.model, as_json=True))["config"]

    async def input_shapes(self) -> dict[str, list[int]]:
        """The model's inputs and their shapes, batch dimension included (-1: any)."""
        metadata = await self._client.get_model_metadata(self.model, as_json=True)
        return {i["name"]: [int(d) for d in i["shape"]] for i in metadata["inputs"]}


class TensorModelClient(TritonModelClient):
    """A model whose inputs and output are FP32 tensors of megabytes (frames): named arrays in,
    one named array out.

    With `shared_memory` (Triton on this host) the tensors travel through system shared memory;
    if the server cannot map it (e.g. a container without the host's /dev/shm), gRPC it is.
    """

    def __init__(self, url: str, model: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 shared_memory: bool = False) -> None:
        super().__init__(url, model, timeout_s)
        self._pool: SharedMemoryPool | None = None
        self.shared_memory = shared_memory

    async def infer_tensors(self, inputs: dict[str, np.ndarray], output: str,
                            output_shape: tuple[int, ...]) -> np.ndarray:
        """float32 `output` of `output_shape` for the named `inputs` (cast to float32).

        Raises InferenceServerException (a shared-memory failure only once gRPC failed too).
        """
        if self.shared_memory:
            try:
                return await self._run_in_shared_memory(inputs, output, output_shape)
            except InferenceServerException as exc:
                if not _is_shared_memory_error(exc):
                    raise
                log.warning("Triton at %s cannot use shared memory (%s): using gRPC",
                            self.url, exc.message())
                self.shared_memory = False
        result = await self._client.infer(
            self.model, [fp32_input(name, array) for name, array in inputs.items()],
            client_timeout=self.timeout_s,
        )
        return result.as_numpy(output)

    async def _run_in_shared_memory(self, inputs: dict[str, np.ndarray], output: str,
                                    output_shape: tuple[int, ...]) -> np.ndarray:
        """One inference through the pool; once more through a new pool when the server lost
        the registrations (a restarted Triton knows none of them)."""
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = SharedMemoryPool(self._client, self.model)
            pool = self._pool
            try:
                return await infer_in_shared_memory(self._client, pool, self.model, inputs,
                                                    output, output_shape, self.timeout_s)
            except InferenceServerException as exc:
                if attempt == 2 or not _is_shared_memory_error(exc):
                    raise
                if self._pool is pool:  # the first of concurrent calls to notice replaces it
                    log.info("Triton at %s lost the shared memory regions (%s): registering "
                             "new ones", self.url, exc.message())
                    self._pool = None
                    pool.retire()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pool is not None and self._channel is not None:
            await self._pool.close()
        await super().close()


def _is_shared_memory_error(exc: InferenceServerException) -> bool:
    return "shared memory" in str(exc.message()).lower()


def triton_failure(exc: BaseException) -> str | None:
    """What a failed call to Triton says (one line), when `exc` is one (the server gone, a
    timeout, a model error); None for any other exception."""
    if not isinstance(exc, InferenceServerException):
        return None
    message = str(exc.message() or exc.status() or type(exc).__name__).strip()
    return (message.splitlines() or [type(exc).__name__])[0][:200]
