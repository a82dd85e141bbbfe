"""Which engine says what: the default engine, and eSpeak for what it cannot say.

A voice name belongs to the first engine that has it (asked once, then remembered): `joe` to
Piper, `cmn` or `fr` to eSpeak. The auto voice goes to the first engine that speaks the text's
language. A sentence the voice's engine cannot say (Chinese with `joe`) falls back to the last
engine (eSpeak) with the auto voice, which picks the language's voice.

A sentence mixing Chinese and English ("我喜欢用 Python 编程") is cut by script (`plan`,
language.script_runs) where the voice allows it: with the auto voice, or a voice whose engine
says only one of the two (Piper's `joe`), the English words go to the English voice and the
Chinese ones to the Chinese voice. A voice that says both (eSpeak's `cmn`, a cloning server's)
says the whole sentence.
"""

from __future__ import annotations

import asyncio
import logging

from ..language import script_runs
from .base import TTSEngine, TTSServerUnavailable, UnknownVoice, Voice

log = logging.getLogger(__name__)


class TTSRouter:
    def __init__(self, engines: list[TTSEngine]) -> None:
        """`engines` in order of preference; the last one is the fallback for any language."""
        if not engines:
            raise ValueError("at least one TTS engine is needed")
        self.engines = engines
        self._owners: dict[str, TTSEngine] = {}
        self._ignored_logged: set[tuple[str, str]] = set()  # (engine, option key)
        self._health_check: asyncio.Task | None = None

    @property
    def default(self) -> TTSEngine:
        return self.engines[0]

    @property
    def fallback(self) -> TTSEngine:
        return self.engines[-1]

    async def check_voice(self, voice: Voice) -> TTSEngine:
        """The engine that has `voice` (the default one for the auto voice); UnknownVoice if
        none has it."""
        if voice.auto:
            await self.default.check_available()
            return self.default
        owner = self._owners.get(voice.name)
        if owner is not None:
            await owner.check_available()
            return owner
        for engine in self.engines:
            try:
                await engine.check_available()
                await engine.check_voice(voice)
            except UnknownVoice:
                continue
            self._owners[voice.name] = engine
            return engine
        raise UnknownVoice(voice.name)

    async def route(self, text: str, voice: Voice) -> tuple[TTSEngine, Voice]:
        """The engine and voice that say `text`."""
        engine, voice = await self._route(text, voice)
        self._note_ignored(engine, voice)
        return engine, voice

    async def plan(self, text: str, voice: Voice) -> list[tuple[TTSEngine, Voice, str]]:
        """Who says which part of `text`, in order: (engine, voice, part); the parts joined are
        `text`. One part unless the text mixes Chinese and English and the voice allows its
        runs to go to different voices (see the module's docstring)."""
        engine, routed = await self.route(text, voice)
        runs = script_runs(text)
        if len(runs) < 2:
            return [(engine, routed, text)]
        # The auto voice of the fallback (eSpeak) picks the language per call: each run its own.
        by_language = voice.auto and engine is self.fallback
        parts: list[tuple[TTSEngine, Voice, str]] = []
        for run in runs:
            run_engine, run_voice = await self.route(run, voice)
            if parts and parts[-1][:2] == (run_engine, run_voice) and not (
                    by_language and run_engine is self.fallback and run_voice.auto):
                parts[-1] = (run_engine, run_voice, parts[-1][2] + run)
            else:
                parts.append((run_engine, run_voice, run))
        return parts

    async def _route(self, text: str, voice: Voice) -> tuple[TTSEngine, Voice]:
        if voice.auto:
            for engine in self.engines:
                if engine.speaks(text, voice):
                    return engine, voice
            return self.fallback, voice
        engine = await self.check_voice(voice)
        if engine.speaks(text, voice):
            return engine, voice
        return self.fallback, Voice(ref_text=voice.ref_text, options=voice.options)

    def _note_ignored(self, engine: TTSEngine, voice: Voice) -> None:
        """`tts` keys the engine does not read (LiveTalking's `voice`, `emotion`…): logged once
        per engine and key, never an error."""
        new = {(engine.name, key) for key in voice.options
               if key not in engine.understood_options} - self._ignored_logged
        if new:
            self._ignored_logged |= new
            log.info("tts %s: ignoring option(s) it does not understand: %s", engine.name,
                     ", ".join(sorted(key[:40] for _, key in new)))

    async def probe(self) -> list[str]:
        """Ask every engine's server now (at start-up); what is wrong, one line per engine."""
        for engine in self.engines:
            try:
                await engine.check_available()
            except TTSServerUnavailable:
                pass  # kept as its health_warning
        return self.warnings()

    def warnings(self) -> list[str]:
        """The engines' health warnings as last seen (for /healthz: a warning, not readiness);
        stale ones are asked again in the background, never waited for here."""
        if any(e.health_stale for e in self.engines) and (
                self._health_check is None or self._health_check.done()):
            self._health_check = asyncio.create_task(self.probe(), name="tts-health")
        return [w for w in (e.health_warning for e in self.engines) if w]

    async def close(self) -> None:
        if self._health_check is not None:
            self._health_check.cancel()
            await asyncio.gather(self._health_check, return_exceptions=True)
        await asyncio.gather(*(e.close() for e in self.engines), return_exceptions=True)
