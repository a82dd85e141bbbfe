"""What Whisper writes when nothing was said: its known phrases on silence and noise, and its own
scores, which tell them from speech.

Whisper was trained on subtitles: given noise, background talk or silence it often writes what
subtitles say where nobody speaks ("Thank you.", "Thanks for watching!", "you"). It also says how
sure it is: per segment, the probability of its no-speech token (`no_speech_prob`) and the mean
log-probability of the tokens it wrote (`avg_logprob`). faster-whisper already drops a segment
only when both are bad (no_speech_prob > 0.6 and avg_logprob < -1, Whisper's own rule), which
lets most inventions through. Here a transcript counts as nothing said when

- its scores are weak on their own (NO_SPEECH_PROB_DROP, AVG_LOGPROB_DROP), or
- it is nothing but known inventions (NEVER_SAID always; OFTEN_INVENTED, which a user may also
  really say, like "thank you", only when its scores are not strong: NO_SPEECH_PROB_WEAK,
  AVG_LOGPROB_WEAK).

Engines that give no scores (an OpenAI-compatible server) lose only NEVER_SAID phrases.
"""

from __future__ import annotations

import re

from .base import Transcript

# A transcript whose segments all have a no-speech probability at least this, or whose mean
# token log-probability is below AVG_LOGPROB_DROP, is nothing said, whatever it reads.
NO_SPEECH_PROB_DROP = 0.6
AVG_LOGPROB_DROP = -1.0
# Known inventions are nothing said unless Whisper was sure of them: no-speech probability below
# NO_SPEECH_PROB_WEAK and mean log-probability at or above AVG_LOGPROB_WEAK.
NO_SPEECH_PROB_WEAK = 0.3
AVG_LOGPROB_WEAK = -0.6

# Phrases nobody says to a talking avatar: subtitle credits and sound tags (lower case, words
# only).
NEVER_SAID = (
    "thanks for watching", "thank you for watching", "thank you so much for watching",
    "thanks for watching and i ll see you next time", "see you in the next video",
    "please subscribe", "subscribe to my channel", "like and subscribe",
    "don t forget to like and subscribe", "subtitles by the amara org community",
    "transcription by castingwords", "music", "applause", "laughter", "silence", "blank audio",
    "inaudible", "no audio",
)
# What Whisper writes most on noise that a user may also say (lower case, words only).
OFTEN_INVENTED = (
    "i want to thank you very much", "thank you very much", "thank you so much", "thank you",
    "thanks", "you", "bye bye", "bye", "goodbye", "oh", "so", "um", "uh", "hmm", "mm",
    "ah", "i m sorry", "i m not sure", "the end", "we ll be right back",
)


def words_of(text: str) -> str:
    """`text` lower-cased, every run of non-alphanumeric characters one space."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _only(text: str, phrases: tuple[str, ...]) -> bool:
    """Whether `text` (words_of) is nothing but `phrases`, each any number of times."""
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.fullmatch(rf"(?:(?:{alternatives})(?: |$))+", text) is not None


def nothing_said(transcript: Transcript) -> str | None:
    """Why `transcript` counts as nothing said: "empty" (no words), "no_speech" (Whisper's
    scores say so), "hallucination" (known inventions, see the module); None when it is speech."""
    text = words_of(transcript.text)
    if not text:
        return "empty"
    if _only(text, NEVER_SAID):
        return "hallucination"
    scores = transcript.scores
    if not scores:
        return None
    mean_logprob = sum(s.avg_logprob for s in scores) / len(scores)
    if all(s.no_speech_prob >= NO_SPEECH_PROB_DROP for s in scores) or (
            mean_logprob < AVG_LOGPROB_DROP):
        return "no_speech"
    strong = (max(s.no_speech_prob for s in scores) < NO_SPEECH_PROB_WEAK
              and mean_logprob >= AVG_LOGPROB_WEAK)
    if not strong and _only(text, NEVER_SAID + OFTEN_INVENTED):
        return "hallucination"
    return None
