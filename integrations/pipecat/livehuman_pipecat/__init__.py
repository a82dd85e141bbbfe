"""pipecat-livehuman: a livehuman avatar as a pipecat video service."""

from .video import LivehumanVideoService

__all__ = ["LivehumanVideoService"]
