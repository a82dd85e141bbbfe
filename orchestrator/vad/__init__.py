"""Voice activity detection engines behind one interface (`base.VAD`), and the engine-independent
turn of probabilities into speech events (`activity.VoiceActivity`).

Adding an engine: its module, and its line in VAD_ENGINES.
"""

from __future__ import annotations

from .base import VAD
from .silero import SileroVAD

# name -> the engine's class, built from the Triton URL
VAD_ENGINES: dict[str, type[VAD]] = {"silero": SileroVAD}
DEFAULT_VAD = "silero"


def open_vad(triton_url: str, engine: str = DEFAULT_VAD) -> VAD:
    """The engine `engine` (a key of VAD_ENGINES; KeyError otherwise) on Triton at `triton_url`."""
    return VAD_ENGINES[engine](triton_url)


def vad_triton_models(engine: str = DEFAULT_VAD) -> list[str]:
    """The Triton models `engine` needs served."""
    return list(VAD_ENGINES[engine].triton_models)
