"""Writes one file of a torrent to stdout while it downloads (say, into a player).

    python stream.py ID [FILE] | mpv -
"""

import shutil
import sys
from typing import Optional, Union

import torrent_patron as tp


def main(torrent: int, file: Optional[Union[int, str]]) -> int:
    with tp.Patron() as patron:
        try:
            with patron.open(torrent, file) as source:
                shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)
        except tp.StreamEnded as e:
            print(f"the stream ended: {e.message}", file=sys.stderr)
            return 6
        except tp.TorrentPatronError as e:
            print(f"{e.kind}: {e.message}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
