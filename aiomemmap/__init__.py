"""aiomemmap: an asyncio, event-driven memory-mapping engine."""

from __future__ import annotations
