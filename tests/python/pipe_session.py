"""Drives `patron-client pipe` the way a script in another language would, and checks the
session's shape: one reply per command carrying its `request`, an error naming the line of a
malformed one, status updates in between, and `finished` after `shutdown`.

Usage: pipe_session.py PATRON_CLIENT STATE_DIR TORRENT PEER OUTPUT_DIR
Exits 0 when every check holds; prints what went wrong otherwise.
"""

import json
import selectors
import subprocess
import sys
import time

DEADLINE_SECS = 60


def main():
    client, state, torrent, peer, output = sys.argv[1:6]
    pipe = subprocess.Popen(
        [client, "--state-dir", state, "pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines = selectors.DefaultSelector()
    lines.register(pipe.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + DEADLINE_SECS

    def send(command):
        pipe.stdin.write(json.dumps(command) + "\n")
        pipe.stdin.flush()

    def receive():
        left = deadline - time.monotonic()
        if left <= 0 or not lines.select(timeout=left):
            raise SystemExit("no output from patron-client pipe in time")
        line = pipe.stdout.readline()
        if not line:
            raise SystemExit("patron-client pipe closed its output early")
        return json.loads(line)

    def reply_to(request):
        """The reply to `request`; status updates seen on the way are kept."""
        while True:
            event = receive()
            if "request" in event:
                if event["request"] != request:
                    raise SystemExit(f"expected the reply to {request!r}, got {event}")
                return event
            seen.append(event)

    seen = []
    try:
        send({"cmd": "add", "torrent": torrent, "output": output, "peers": [peer],
              "request": "add-1"})
        created = reply_to("add-1")
        assert created["event"] == "created", created
        torrent_id = created["id"]

        pipe.stdin.write("{this is not json\n")  # line 2
        pipe.stdin.flush()
        error = reply_to(2)
        assert error["event"] == "error" and error["line"] == 2, error

        send({"cmd": "status", "torrent": "no-such-torrent", "request": {"mine": [1, 2]}})
        refused = reply_to({"mine": [1, 2]})
        assert refused["event"] == "error" and refused["line"] == 3, refused

        # Status updates (no `request`) until the download completes.
        while not any(e.get("event") == "status" and e["id"] == torrent_id and e["complete"]
                      for e in seen):
            event = receive()
            if "request" in event:
                raise SystemExit(f"unexpected reply {event}")
            seen.append(event)

        send({"cmd": "list"})  # line 4: its request is the line number
        listed = reply_to(4)
        assert [t["id"] for t in listed["torrents"]] == [torrent_id], listed

        send({"cmd": "shutdown", "request": "bye"})
        finished = receive()
        while finished.get("event") == "status":
            finished = receive()
        assert finished == {"event": "finished", "request": "bye"}, finished
        code = pipe.wait(timeout=max(1, deadline - time.monotonic()))
        assert code == 0, f"exit code {code}"
    except AssertionError as failed:
        raise SystemExit(f"check failed: {failed}")
    finally:
        if pipe.poll() is None:
            pipe.kill()
    print(json.dumps({"statuses": len(seen), "torrent": torrent_id}))


if __name__ == "__main__":
    main()
