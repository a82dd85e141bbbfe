"""Start-up (orchestrator/services.py): what a session with the server's defaults loads on its
/offer is loaded before the server answers, so the first session after start is not the slow one:
the default avatar, the configured and the shipped knowledge bases, and jieba's dictionary."""

from __future__ import annotations

import logging

import jieba
import pytest
from server_fixtures import server_settings

from orchestrator.chat.knowledge import word_segmenter_loaded
from orchestrator.services import start_services

SHOP_FAQ = "question,answer\nWhen do you open?,At nine.\n营业时间是什么？,早上九点。\n"


@pytest.fixture
def fresh_segmenter(monkeypatch):
    """jieba's dictionary as a fresh process has it: not read yet (other tests read it)."""
    monkeypatch.setattr(jieba.dt, "initialized", False)
    assert not word_segmenter_loaded()


async def test_the_defaults_are_loaded_before_the_first_offer(triton, fresh_segmenter):
    settings = server_settings(triton)
    services = await start_services(settings)
    try:
        assert services.avatars.loaded(settings.avatar_id)
        assert services.knowledge.loaded(settings.llmid), "the default base ('' is 'default')"
        assert word_segmenter_loaded()
        assert len(services.registry) == 0, "before any /offer"
    finally:
        await services.close()


async def test_a_configured_knowledge_base_and_the_shipped_one_are_both_loaded(
        triton, tmp_path, fresh_segmenter):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "faq.csv").write_text(SHOP_FAQ, encoding="utf-8")
    settings = server_settings(triton, knowledge_dir=tmp_path, llmid="shop")
    services = await start_services(settings)
    try:
        assert services.knowledge.loaded("shop") and services.knowledge.loaded("")
        assert word_segmenter_loaded()
    finally:
        await services.close()


async def test_a_default_that_cannot_be_had_is_logged_and_the_rest_still_loads(
        triton, tmp_path, caplog):
    settings = server_settings(triton, avatar_id="nobody", knowledge_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="orchestrator.services"):
        services = await start_services(settings)
    try:
        assert not services.avatars.loaded("nobody")
        assert services.knowledge.loaded(""), "the shipped base all the same"
        assert "unknown avatar 'nobody'" in caplog.text
    finally:
        await services.close()
