"""Who is speaking in a room, from the bridge's levels: start and stop transitions, rate-limited.

Pure: levels in (0-255 per participant, polled), transitions out. A participant starts speaking
when their level reaches the threshold and stops once it has stayed below it for `hold_s` (a
pause between words is not a stop). At most one transition per participant per `min_gap_s`:
a change that comes sooner waits for the gap, and is dropped if it is undone meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Speaker:
    speaking: bool = False
    last_loud: float = -math.inf
    last_change: float = -math.inf


@dataclass
class SpeakingTracker:
    threshold: int
    hold_s: float = 1.0
    min_gap_s: float = 1.0
    _state: dict[str, _Speaker] = field(default_factory=dict)

    def update(self, levels: dict[str, int], now: float) -> list[tuple[str, bool]]:
        """The transitions at `now`: (participant, True = started, False = stopped), in the
        order of `levels`. Participants missing from `levels` are forgotten (they left)."""
        out: list[tuple[str, bool]] = []
        for pid, level in levels.items():
            s = self._state.setdefault(pid, _Speaker())
            if level >= self.threshold:
                s.last_loud = now
            want = level >= self.threshold if not s.speaking \
                else now - s.last_loud <= self.hold_s
            if want != s.speaking and now - s.last_change >= self.min_gap_s:
                s.speaking, s.last_change = want, now
                out.append((pid, want))
        for pid in [p for p in self._state if p not in levels]:
            del self._state[pid]
        return out

    def speaking(self) -> set[str]:
        return {p for p, s in self._state.items() if s.speaking}
