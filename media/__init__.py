"""Rooms, tones and audio analysis. Pure Python and numpy: no asyncio, no pjsua2."""
