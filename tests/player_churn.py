"""Start and stop room players on a real SIP thread as fast as rooms can, in a process of its
own (a crash in C kills only it): `python -m tests.player_churn <dir> <cycles>`.

Each cycle starts a looping player and a one-shot player of a 30 ms file (so each reaches its
end or rewinds at almost every bridge tick, posting pjmedia's end-of-file callback), links
them to the level monitor, and stops them 0-60 ms later. A thread keeps the GIL busy, so
pjmedia's event thread often waits for it inside a Python onEof2 while the SIP thread stops
the player: the window in which a player deleted at once was used after it was freed.
The engine then stops with two players still playing. Exits 0 and prints "churn ok <cycles>"
when every cycle ran.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from pathlib import Path

from media.rooms import MONITOR, Link, Player
from media.tones import sine, write_wav
from sip import commands as cmd
from sip.config import SipConfig
from sip.engine import SipEngine


async def churn(tmp: Path, cycles: int) -> None:
    short = tmp / "short.wav"
    write_wav(short, sine(440.0, 0.03))
    engine = SipEngine(SipConfig(port=0, transports=("udp",)), lambda event: None)
    await engine.start()
    busy = True

    def hog() -> None:
        while busy:
            sum(range(1000))

    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    rng = random.Random(13)
    try:
        for i in range(cycles):
            names = (f"@wait:1:{i}", f"@once:1:{i}")
            players = (Player(names[0], str(short), True), Player(names[1], str(short), False))
            links = tuple(Link(n, MONITOR) for n in names)
            await engine.send(cmd.ApplyLinks(links, (), players, ()))
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            await engine.send(cmd.ApplyLinks((), links, (), names))
        # and the engine stops with players still playing
        last = (Player("@wait:2:0", str(short), True), Player("@once:2:0", str(short), False))
        await engine.send(cmd.ApplyLinks(tuple(Link(p.name, MONITOR) for p in last), (), last))
    finally:
        busy = False
        thread.join()
        await engine.stop()
    print("churn ok", cycles, flush=True)


if __name__ == "__main__":
    asyncio.run(churn(Path(sys.argv[1]), int(sys.argv[2])))
