"""Prints every event of the torrents this patron holds, with asyncio, until the broker
stops (or Ctrl-C).

    python events.py ID...
"""

import asyncio
import sys
from typing import List

import torrent_patron as tp


async def main(ids: List[int]) -> None:
    async with tp.AsyncPatron() as patron:
        for torrent in ids:
            await patron.follow(torrent)
        async for event in patron.events():
            if isinstance(event, tp.StatusChanged):
                s = event.status
                print(f"#{s.id} {s.state} {s.progress:.1%} {s.peers} peers")
            elif isinstance(event, tp.TorrentGone):
                print(f"#{event.id} gone: {event.reason}")
            else:
                print(f"the broker is stopping: {event.reason}")


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]]))
