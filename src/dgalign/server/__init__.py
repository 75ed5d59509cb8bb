"""An OpenAI-compatible HTTP server with alignment chosen per request (`dgalign serve`)."""

from .app import create_app
from .engine import Limits

__all__ = ["Limits", "create_app"]
