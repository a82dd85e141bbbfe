"""What a session shows on each tick: the speaking avatar's lip-synced frame, else the custom
clip chosen by /set_audiotype, else the idle loop of the avatar who spoke last.

Switching between them (clip → speech → clip, one avatar → another) cross-fades over a few
frames instead of jumping; every picture leaves at the session's frame size.

The idle loop's position can come from outside (`idle_tick`: the session clock's tick on the
process-wide grid), so every session showing the same avatar idle shows the same picture at the
same moment; such a shot says which one (`Shot.idle`), and one shared encoder can send it to all
of them (orchestrator/media/idle_stream.py). Speech continues the loop from where it was planned, so
back from speech the loop is elsewhere: the loop frame that would have followed cross-fades
into the one at `idle_tick` (both with the mouth closed, as it closes at the end of speech).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..avatar.clips import Clip
from ..avatar.compositor import crossfade, fit_to, paste_face, paste_masked
from ..avatar.store import Avatar
from ..errors import ApiError
from ..media.clock import AUDIO_SAMPLES_PER_TICK
from ..speech.items import SpeechFrame

TRANSITION_FRAMES = 5  # 200 ms
IDLE = 0  # audiotype of the idle loop

_SILENCE = np.zeros(AUDIO_SAMPLES_PER_TICK, np.float32)
_SILENCE.setflags(write=False)


@dataclass(frozen=True, eq=False)
class IdleFrame:
    """Frame `tick` of `avatar`'s idle loop: the same picture in every session that shows it at
    the same frame size."""

    avatar: Avatar
    tick: int

    def image(self, width: int, height: int) -> np.ndarray:
        """uint8 [height, width, 3] RGB (the avatar's frame itself when the sizes agree)."""
        avatar = self.avatar
        return fit_to(avatar.frames[avatar.frame_index(self.tick)], width, height)

    def at(self, tick: int) -> IdleFrame:
        """The same avatar's loop frame at grid tick `tick` (a shared stream encodes ahead)."""
        return IdleFrame(self.avatar, tick)


@dataclass(frozen=True)
class Shot:
    image: np.ndarray  # uint8 [H, W, 3] RGB at the session's size
    audio: np.ndarray  # float32 [640] at 16 kHz
    idle: IdleFrame | None = None  # set when `image` is exactly this idle-loop frame on the grid


class Stage:
    def __init__(self, avatar: Avatar, clips: dict[int, Clip] | None = None) -> None:
        self.width, self.height = avatar.width, avatar.height
        self.shown = avatar  # whose idle loop plays when nobody speaks
        self.clips = clips or {}
        self.audiotype = IDLE
        self._positions: dict[int, int] = {}  # where each clip was left
        self.avatar_tick = 0  # position in the idle loop(s); speech frames continue from it
        self._source: object = None
        self._on_grid = False  # the last shot was an idle frame at a position given from outside
        self._last: np.ndarray | None = None
        self._fade_from: np.ndarray | None = None
        self._fade_step = 0

    def set_audiotype(self, audiotype: int, reinit: bool) -> None:
        if audiotype != IDLE and audiotype not in self.clips:
            known = ", ".join(str(k) for k in sorted(self.clips)) or "none"
            raise ApiError.not_found(f"unknown audiotype {audiotype} (this session's clips: {known}; "
                                     f"{IDLE} is the idle loop)")
        if reinit:
            self._positions[audiotype] = 0
        self.audiotype = audiotype

    def next_shot(self, speech: SpeechFrame | None, idle_tick: int | None = None) -> Shot:
        """The next picture and its 40 ms of sound. `idle_tick`: the idle loop's position for
        this shot (None: the stage's own count, going on from the last shot)."""
        if speech is not None:
            avatar = speech.avatar
            index = avatar.frame_index(speech.avatar_tick)
            self.avatar_tick = speech.avatar_tick + 1
            self.shown = avatar
            if avatar.blend_masks is not None:  # the avatar's own masks (LiveTalking MuseTalk)
                image = paste_masked(avatar.frames[index], avatar.boxes[index], speech.face_crop,
                                     avatar.blend_masks, index)
            else:
                image = paste_face(avatar.frames[index], avatar.boxes[index], speech.face_crop,
                                   speech.paste_top_fraction)
            shot, source = Shot(image, speech.audio), ("avatar", avatar.id)
        elif self.audiotype != IDLE:
            clip = self.clips[self.audiotype]
            position = self._positions.get(self.audiotype, 0) % len(clip.frames)
            self._positions[self.audiotype] = position + 1
            audio = clip.frame_audio(position)
            shot = Shot(clip.frames[position], _SILENCE if audio is None else audio)
            source = ("clip", self.audiotype)
        else:
            avatar = self.shown
            tick = self.avatar_tick if idle_tick is None else idle_tick
            if tick != self.avatar_tick and not self._on_grid and self._last is not None:
                # Back from speech, the loop is elsewhere: fade from where it would have gone on.
                self._fade_from = IdleFrame(avatar, self.avatar_tick).image(self.width, self.height)
                self._fade_step = 0
            idle = IdleFrame(avatar, tick)
            self.avatar_tick = tick + 1
            # Only a frame on the grid is the one other sessions show now. A late frame within
            # an utterance (the loop going on locally) offered to the shared stream would make
            # it skip ahead of its idle viewers, or force a keyframe on all of them.
            shot = Shot(idle.image(self.width, self.height), _SILENCE,
                        idle if idle_tick is not None else None)
            source = ("avatar", avatar.id)
        self._on_grid = speech is None and self.audiotype == IDLE and idle_tick is not None
        return self._blend(Shot(fit_to(shot.image, self.width, self.height), shot.audio,
                                shot.idle), source)

    def _blend(self, shot: Shot, source: object) -> Shot:
        if source != self._source and self._last is not None:
            self._fade_from, self._fade_step = self._last, 0
        self._source = source
        if self._fade_from is None:
            self._last = shot.image
            return shot
        self._fade_step += 1
        image = crossfade(self._fade_from, shot.image, self._fade_step / (TRANSITION_FRAMES + 1))
        if self._fade_step >= TRANSITION_FRAMES:
            self._fade_from = None
        self._last = image
        return Shot(image, shot.audio)  # a blend is no idle-loop frame
