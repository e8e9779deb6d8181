"""Downloads a torrent into a folder, showing its progress; exits 1 if it fails.

    python download.py FILE.torrent FOLDER
"""

import sys

import torrent_patron as tp


def main(torrent: str, folder: str) -> int:
    with tp.Patron() as patron:
        added = patron.add(torrent, output=folder)
        print(f"{added.name}: #{added.id}, into {added.save_path}")
        for torrents in patron.watch():
            status = next((s for s in torrents if s.id == added.id), None)
            if status is None:
                print("closed by another patron", file=sys.stderr)
                return 1
            print(f"\r{status.progress:6.1%} {status.download_rate / 1e6:6.1f} MB/s", end="")
            if status.complete:
                print()
                return 0
            if status.error is not None:
                print(f"\nfailed: {status.error}", file=sys.stderr)
                return 1
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
