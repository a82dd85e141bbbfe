"""System shared memory for frame tensors when Triton runs on this host: face crops and
lip-synced crops (megabytes per batch) are written and read in place instead of being copied
through gRPC. Regions are registered once and reused, one request at a time each.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm

log = logging.getLogger(__name__)

MIN_REGION_BYTES = 1 << 20
_ids = itertools.count(1)


def on_this_host(url: str) -> bool:
    """Whether a Triton gRPC address is loopback, so that its /dev/shm is ours."""
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass(eq=False)
class Region:
    name: str
    byte_size: int
    handle: object


class SharedMemoryPool:
    """Regions registered with one Triton server; sizes are powers of two so they get reused."""

    def __init__(self, client: grpcclient.InferenceServerClient, prefix: str) -> None:
        self._client = client
        self._prefix = f"livehuman-{os.getpid()}-{prefix}"
        self._free: list[Region] = []
        self._all: list[Region] = []
        self._lock = asyncio.Lock()
        self._retired = False

    async def acquire(self, byte_size: int) -> Region:
        async with self._lock:
            for region in self._free:
                if region.byte_size >= byte_size:
                    self._free.remove(region)
                    return region
            size = max(MIN_REGION_BYTES, 1 << (byte_size - 1).bit_length())
            name = f"{self._prefix}-{next(_ids)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            try:
                await self._client.register_system_shared_memory(name, f"/{name}", size)
            except BaseException:
                # Cancelled too (the session closed or was interrupted mid-registration): a
                # region neither pooled nor unlinked would stay in /dev/shm after we exit.
                shm.destroy_shared_memory_region(handle)
                raise
            region = Region(name, size, handle)
            self._all.append(region)
            return region

    def release(self, region: Region) -> None:
        if self._retired:
            self._destroy(region)
        else:
            self._free.append(region)

    def retire(self) -> None:
        """The server no longer knows these regions (it restarted): free them locally, each
        region in use when its request is done. No unregistering: there is nothing to undo."""
        self._retired = True
        for region in self._free:
            self._destroy(region)
        self._free.clear()

    def _destroy(self, region: Region) -> None:
        if region in self._all:
            self._all.remove(region)
            shm.destroy_shared_memory_region(region.handle)

    async def close(self) -> None:
        async with self._lock:
            for region in self._all:
                try:
                    await self._client.unregister_system_shared_memory(region.name)
                except Exception:  # the server may be gone already
                    log.debug("unregister %s failed", region.name, exc_info=True)
                shm.destroy_shared_memory_region(region.handle)
            self._all.clear()
            self._free.clear()


async def infer_in_shared_memory(
    client: grpcclient.InferenceServerClient, pool: SharedMemoryPool, model: str,
    inputs: dict[str, np.ndarray], output: str, output_shape: tuple[int, ...],
    timeout_s: float,
) -> np.ndarray:
    """One FP32 inference with every input and the output in one pooled region."""
    arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in inputs.items()}
    output_bytes = int(np.prod(output_shape)) * 4
    region = await pool.acquire(sum(a.nbytes for a in arrays.values()) + output_bytes)
    try:
        tensors, offset = [], 0
        for name, array in arrays.items():
            shm.set_shared_memory_region(region.handle, [array], offset=offset)
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_shared_memory(region.name, array.nbytes, offset=offset)
            tensors.append(tensor)
            offset += array.nbytes
        requested = grpcclient.InferRequestedOutput(output)
        requested.set_shared_memory(region.name, output_bytes, offset=offset)
        await client.infer(model, tensors, outputs=[requested], client_timeout=timeout_s)
        return shm.get_contents_as_numpy(region.handle, np.float32, list(output_shape),
                                         offset=offset).copy()
    finally:
        pool.release(region)
