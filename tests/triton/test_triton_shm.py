"""The shared-memory pool's regions in /dev/shm: none outlives the pool, whatever happens to
the request that created it. (Inference through the pool, against a real Triton, is in
test_client.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.triton.shm import SharedMemoryPool

SHM_DIR = Path("/dev/shm")


class RegisteringClient:
    """Triton's shared-memory calls; registration waits until `answer` is set."""

    def __init__(self) -> None:
        self.registering = asyncio.Event()
        self.answer = asyncio.Event()
        self.registered: set[str] = set()

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int) -> None:
        self.registering.set()
        await self.answer.wait()
        self.registered.add(name)

    async def unregister_system_shared_memory(self, name: str) -> None:
        self.registered.discard(name)


def regions(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"livehuman-*-{prefix}-*"))


async def test_cancelled_registration_leaves_no_region():
    """A session closed (or interrupted) while its first batch registers a region."""
    client = RegisteringClient()
    pool = SharedMemoryPool(client, "cancelled")
    acquiring = asyncio.create_task(pool.acquire(1000))
    await client.registering.wait()
    assert regions("cancelled"), "the region exists while it is being registered"
    acquiring.cancel()
    await asyncio.gather(acquiring, return_exceptions=True)
    assert regions("cancelled") == []
    await pool.close()


async def test_close_unlinks_every_region():
    client = RegisteringClient()
    client.answer.set()
    pool = SharedMemoryPool(client, "closed")
    in_use = await pool.acquire(1000)
    pool.release(await pool.acquire(3 << 20))
    assert len(regions("closed")) == 2 and len(client.registered) == 2
    await pool.close()
    pool.release(in_use)
    assert regions("closed") == [] and client.registered == set()
