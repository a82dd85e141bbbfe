"""Freed heap memory goes back to the system after sessions close: one trim per burst of
closes, off the event loop."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.session.heap_trim import HeapTrimmer


@pytest.fixture
def trimmer() -> HeapTrimmer:
    trimmer = HeapTrimmer(delay_s=0.05)
    if trimmer._malloc_trim is None:
        pytest.skip("no glibc malloc_trim here")
    return trimmer


async def test_a_burst_of_closes_is_one_trim(trimmer):
    for _ in range(20):
        trimmer.request()
    await asyncio.sleep(0.3)
    assert trimmer.trims == 1
    trimmer.request()
    await asyncio.sleep(0.3)
    assert trimmer.trims == 2


async def test_close_cancels_a_pending_trim(trimmer):
    trimmer.request()
    trimmer.close()
    await asyncio.sleep(0.2)
    assert trimmer.trims == 0
