"""Project-wide asyncio rule: no asyncio.wait_for in the server.

On Python 3.11, asyncio.wait_for loses a cancellation that arrives as the awaited call completes
(gh-86296, fixed in 3.12 by rebuilding wait_for on asyncio.timeout). A task cancelled by a close
then runs on, and whoever awaits it waits for good: a CI run hung in the Triton supervisor's
close. `async with asyncio.timeout(...)` has no such race; this test keeps it the only way.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCES = Path(__file__).resolve().parent.parent / "orchestrator"


def test_the_server_uses_asyncio_timeout_not_wait_for():
    offenders = []
    for path in sorted(SOURCES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                offenders.append(f"{path.relative_to(SOURCES.parent)}:{node.lineno}")
    assert not offenders, f"asyncio.wait_for (use asyncio.timeout): {offenders}"
