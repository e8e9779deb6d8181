#!/usr/bin/env python3
"""Chaos soak of the broker (run through scripts/soak).

A seeding broker serves five torrents at a limited rate; a second broker (the one under test)
downloads them again and again, while patrons come and go at random (list, status, add,
close, watch, pipe), some killed (SIGKILL), some stopped and resumed (SIGSTOP/SIGCONT), and
hostile raw connectors mix in (garbage, a NUL in the hello, silence, 20 descriptors), and an
attacker works on a folder torrent the broker seeds: it swaps the folder for a symlink to a
folder outside every root and asks for a recheck or a delete, plants a FIFO as one of its
files, and adds another torrent over it with --overwrite. It checks as it runs:
  - nothing outside the download roots is ever created, changed or removed;
  - an add over another torrent's files is refused (exit 3), a recheck through a planted
    FIFO answers within the bound;
  - the broker never dies, and every record (records/<id>.json) always parses;
  - every patron that was not killed exits within PATRON_BOUND with a documented code;
  - every completed download has the right SHA-256;
and at the end, once every patron is gone: the broker's fds, threads and RSS are back near
their baseline. The broker under test holds --many (10,000 by default) idle seeds of its own
throughout (issue 23: what a broker shared by many programs collects), added at the start
through one pipe patron; at the end every one of them still seeds and has its record.
Everything stays on 127.0.0.1; every process is ended by its PID.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6}
PATRON_BOUND = 60.0  # seconds a patron that was not killed may take
TORRENTS = 5
SIZE = 3 * 1024 * 1024
SEED_RATE = "4000000"  # bytes/s: each round of downloads takes a few seconds


def log(*parts):
    print("soak:", *parts, flush=True)


class Soak:
    def __init__(self, bins, minutes, seed, many):
        self.bins = bins
        self.many = many
        self.deadline = time.monotonic() + minutes * 60
        self.rng = random.Random(seed)
        self.tmp = tempfile.mkdtemp(prefix="tp-soak-")
        self.procs = []  # (Popen, kind, started, killed)
        self.brokers = []
        self.failures = []
        self.counts = {"patrons": 0, "killed": 0, "stopped": 0, "hostile": 0,
                       "downloads": 0, "cats": 0, "attacks": 0, "exit_codes": {}}
        # A folder outside every download root (the root is self.tmp): the attacker's target.
        self.outside = tempfile.mkdtemp(prefix="tp-soak-outside-")
        with open(os.path.join(self.outside, "a.bin"), "wb") as f:
            f.write(b"the user's own file, outside every root")
        self.outside_before = snapshot(self.outside)
        self.env = dict(os.environ, TORRENT_PATRON_LOOPBACK_ONLY="1",
                        TORRENT_PATRON_DOWNLOAD_ROOT=self.tmp,
                        TORRENT_PATRON_STATUS_INTERVAL="200", RUST_LOG="info",
                        # The idle seeds and the soak's own torrents.
                        TORRENT_PATRON_MAX_TORRENTS=str(max(10_000, many + 1_000)))
        self.env.pop("TORRENT_PATRON_STATE", None)
        self.env.pop("XDG_RUNTIME_DIR", None)

    # -- processes -------------------------------------------------------------------------
    def broker(self, name, *args):
        state = os.path.join(self.tmp, name)
        os.makedirs(state, mode=0o700, exist_ok=True)
        logf = open(os.path.join(self.tmp, name + ".log"), "w")
        proc = subprocess.Popen([self.bins["torrent-broker"], "--state-dir", state,
                                 "--loopback-only", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=logf, env=self.env)
        self.brokers.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = open(logf.name).read()
            if "broker ready" in text:
                port = text.split("listen=")[1].split()[0].rsplit(":", 1)[1]
                return proc, state, int(port)
            if proc.poll() is not None:
                sys.exit(f"soak: broker {name} exited at start:\n{text}")
            time.sleep(0.02)
        sys.exit(f"soak: broker {name} not ready")

    def client(self, state, *args, timeout=PATRON_BOUND):
        out = subprocess.run([self.bins["patron-client"], "--state-dir", state, *args],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=self.env, timeout=timeout)
        return out

    def spawn(self, state, kind, args, stdin=None, stdout=None, verify=None):
        proc = subprocess.Popen([self.bins["patron-client"], "--state-dir", state, *args],
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=stdout or subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=self.env)
        if stdout:
            stdout.close()
        if stdin:
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except OSError:
                pass
        self.procs.append({"proc": proc, "kind": kind, "since": time.monotonic(),
                           "killed": False, "stopped": False, "interrupted": False,
                           "verify": verify})
        self.counts["patrons"] += 1

    # -- checks ----------------------------------------------------------------------------
    def fail(self, what):
        log("FAILED:", what)
        self.failures.append(what)

    def broker_alive(self, proc, name):
        if proc.poll() is not None:
            self.fail(f"{name} died with {proc.returncode}")
            return False
        return True

    def records_valid(self, state, sample=None):
        """Every record parses (or a random `sample` of them: thousands each second would
        be the soak's own load)."""
        folder = os.path.join(state, "records")
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        if sample is not None and len(names) > sample:
            names = self.rng.sample(names, sample)
        for name in names:
            if name.startswith("."):
                continue  # a write in progress
            try:
                with open(os.path.join(folder, name)) as f:
                    json.load(f)
            except FileNotFoundError:
                pass  # removed meanwhile
            except (OSError, ValueError) as e:
                self.fail(f"record {name} unreadable: {e}")

    def reap(self, force=False):
        now = time.monotonic()
        for entry in list(self.procs):
            proc, kind = entry["proc"], entry["kind"]
            code = proc.poll()
            if code is None:
                if entry["stopped"]:
                    continue  # its clock runs from when it is resumed
                if kind == "watch" and not entry["interrupted"] and (
                        force or now - entry["since"] > 5):
                    proc.send_signal(signal.SIGINT)  # a person's Ctrl-C
                    entry["interrupted"] = True
                    entry["since"] = now
                elif now - entry["since"] > PATRON_BOUND:
                    self.fail(f"a {kind} patron (pid {proc.pid}) ran past {PATRON_BOUND} s")
                    proc.kill()
                    proc.wait()
                    self.procs.remove(entry)
                continue
            self.procs.remove(entry)
            if entry["killed"]:
                continue
            self.counts["exit_codes"][code] = self.counts["exit_codes"].get(code, 0) + 1
            ended_by_us = kind == "watch" and entry["interrupted"] and code == -signal.SIGINT
            if code not in DOCUMENTED_EXIT_CODES and not ended_by_us:
                self.fail(f"a {kind} patron exited with undocumented code {code}")
            if entry["verify"]:
                out, data, offset = entry["verify"]
                with open(out, "rb") as f:
                    got = f.read()
                with open(data, "rb") as f:
                    f.seek(offset)
                    want = f.read()
                # Whatever it wrote is the file's bytes from the offset; all of them at exit 0.
                if got != want[:len(got)] or (code == 0 and got != want):
                    self.fail(f"cat (exit {code}) wrote {len(got)} bytes that are not the file's")
                else:
                    self.counts["cats"] += 1
                os.unlink(out)

    def usage(self, pid):
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        rss = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return fds, threads, rss

    # -- hostile connectors ----------------------------------------------------------------
    def hostile(self, state):
        path = os.path.join(state, "run", "broker.sock")
        if not os.path.exists(path):
            candidates = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs
                          if f.endswith(".sock")]
            if not candidates:
                return
            path = candidates[0]
        self.counts["hostile"] += 1
        kind = self.rng.choice(["garbage", "nul", "silent", "fds", "missing"])
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(2)
            s.connect(path)
            if kind == "garbage":
                s.send(os.urandom(self.rng.randrange(1, 200)))
            elif kind in ("nul", "missing"):
                name = b"/tmp/evil\x00name" if kind == "nul" else b"/nonexistent/.tmpx/socket"
                payload = b"\x00\x01" + bytes([len(name)]) + name
                s.send(struct.pack("=QQ", 16 + len(payload), len(payload)) + payload)
            elif kind == "fds":
                r, w = os.pipe()
                payload = b"\x00\x01\x04/tmp"
                data = struct.pack("=QQ", 16 + len(payload), len(payload)) + payload
                s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    struct.pack("20i", *([r, w] * 10)))])
                os.close(r)
                os.close(w)
            elif kind == "silent":
                time.sleep(self.rng.random() * 0.2)
            s.close()
        except OSError:
            pass  # the broker hung up first: fine

    # -- the attacker ----------------------------------------------------------------------
    def seed_pack(self, state):
        """(Re)makes and seeds the attacked folder torrent; its id, or None."""
        pack = os.path.join(self.tmp, "attacked", "pack")
        os.makedirs(pack, exist_ok=True)
        for name, size in (("a.bin", 64 * 1024), ("b.bin", 32 * 1024)):
            path = os.path.join(pack, name)
            if os.path.islink(path) or not os.path.isfile(path):
                if os.path.lexists(path):
                    os.remove(path)
                with open(path, "wb") as f:
                    f.write(self.rng.randbytes(size))
        r = self.client(state, "--json", "make", pack, "--seed", "--force",
                        "--output", os.path.join(self.tmp, "attacked", "pack.torrent"))
        made = json_line(r.stdout)
        return None if r.returncode != 0 else str(made.get("seeding_id"))

    def outside_untouched(self, after):
        if snapshot(self.outside) != self.outside_before:
            self.fail(f"{after}: a file outside the download roots was created, changed "
                      f"or removed: {snapshot(self.outside)}")

    def attack(self, state):
        pack = os.path.join(self.tmp, "attacked", "pack")
        if getattr(self, "pack_id", None) is None:
            self.pack_id = self.seed_pack(state)
            return
        self.counts["attacks"] += 1
        kind = self.rng.choice(["swap-recheck", "swap-delete", "fifo", "overlap"])
        if kind.startswith("swap"):
            real = pack + ".real"
            os.rename(pack, real)
            os.symlink(self.outside, pack)
            if kind == "swap-recheck":
                r = self.client(state, "--json", "recheck", self.pack_id)
            else:
                r = self.client(state, "--json", "close", "--force", "--delete-data",
                                self.pack_id)
                self.pack_id = None
            self.outside_untouched(f"{kind} (exit {r.returncode})")
            os.remove(pack)
            os.rename(real, pack)
            if kind == "swap-recheck":
                # Whatever became of it (refused, or kept unrestored), start afresh.
                self.client(state, "close", "--force", self.pack_id)
                self.pack_id = None
        elif kind == "fifo":
            b = os.path.join(pack, "b.bin")
            os.remove(b)
            os.mkfifo(b)
            r = self.client(state, "--json", "recheck", self.pack_id)  # bounded: PATRON_BOUND
            os.remove(b)
            self.client(state, "close", "--force", self.pack_id)
            self.pack_id = None
        else:
            other = os.path.join(self.tmp, "attacked", "other")
            os.makedirs(other, exist_ok=True)
            with open(os.path.join(other, "a.bin"), "wb") as f:
                f.write(self.rng.randbytes(1000))
            torrent = os.path.join(self.tmp, "attacked", "other.torrent")
            self.client(state, "make", os.path.join(other, "a.bin"), "--force",
                        "--output", torrent)
            before = open(os.path.join(pack, "a.bin"), "rb").read()
            r = self.client(state, "--json", "add", torrent, "--overwrite", "--output", pack)
            if r.returncode != 3 or json_line(r.stdout).get("kind") != "file-owned":
                self.fail(f"an add over another torrent's file was not refused: "
                          f"{r.returncode} {r.stdout}")
                if r.returncode in (0, 4) and "id" in json_line(r.stdout):
                    self.client(state, "close", "--force", str(json_line(r.stdout)["id"]))
            if open(os.path.join(pack, "a.bin"), "rb").read() != before:
                self.fail("an add over another torrent's file changed it")

    # -- the run ---------------------------------------------------------------------------
    def run(self):
        seeder, seed_state, seed_port = self.broker("seeder", "--max-upload-rate", SEED_RATE)
        leecher, state, _ = self.broker("leecher")
        torrents = []
        for n in range(TORRENTS):
            data = os.path.join(self.tmp, "seed", f"file{n}.bin")
            os.makedirs(os.path.dirname(data), exist_ok=True)
            with open(data, "wb") as f:
                f.write(self.rng.randbytes(SIZE))
            digest = hashlib.sha256(open(data, "rb").read()).hexdigest()
            torrent = os.path.join(self.tmp, f"file{n}.torrent")
            out = self.client(seed_state, "make", data, "--output", torrent, "--seed")
            if out.returncode != 0:
                sys.exit(f"soak: make --seed failed: {out.stderr}")
            torrents.append((torrent, digest, f"file{n}.bin"))
        peer = f"127.0.0.1:{seed_port}"
        self.peer = peer

        self.many_seeds(state)
        # Warm every lazily started part of the broker, then take its baseline.
        self.client(state, "list")
        base = self.usage(leecher.pid)
        log(f"baseline: {base[0]} fds, {base[1]} threads, {base[2] // 1024} MiB RSS")

        rounds = 0
        downloads = {}  # torrent index → (output dir, started)
        last_check = 0.0
        began = last_trace = time.monotonic()
        while time.monotonic() < self.deadline and not self.failures:
            # Keep five downloads going: start missing ones, verify and restart finished ones.
            for i, (torrent, digest, name) in enumerate(torrents):
                if i not in downloads:
                    out_dir = os.path.join(self.tmp, "dl", f"r{rounds}-{i}")
                    os.makedirs(out_dir, exist_ok=True)
                    r = self.client(state, "--json", "add", torrent, "--output", out_dir,
                                    "--peer", peer)
                    started = json_line(r.stdout)
                    if r.returncode not in (0, 3, 4):
                        self.fail(f"adding {torrent} failed ({r.returncode}): {r.stderr}")
                    if r.returncode in (0, 4) and "id" in started:
                        # A joiner may have started it first, elsewhere: go by its answer.
                        downloads[i] = (str(started["id"]), started["save_folder"],
                                        time.monotonic())
                    continue
                ident, folder, started = downloads[i]
                st = json_line(self.client(state, "--json", "status", ident).stdout)
                if st.get("complete"):
                    path = os.path.join(folder, name)
                    got = hashlib.sha256(open(path, "rb").read()).hexdigest()
                    if got != digest:
                        self.fail(f"{path}: SHA-256 {got}, expected {digest}")
                    self.counts["downloads"] += 1
                    self.client(state, "close", "--force", "--delete-data", ident)
                    del downloads[i]
                    rounds += 1
                elif time.monotonic() - started > 120:
                    self.fail(f"torrent {ident} in {folder} did not complete within 120 s")
            # Patrons come and go.
            for _ in range(self.rng.randrange(1, 4)):
                self.random_patron(state, torrents, downloads)
            if self.rng.random() < 0.5:
                self.hostile(state)
            if self.rng.random() < 0.1:
                self.attack(state)
            self.chaos()
            self.reap()
            now = time.monotonic()
            if now - last_check > 1:
                last_check = now
                if now - last_trace > 15:
                    # A trace of the broker's memory, to tell a leak from a plateau.
                    last_trace = now
                    use = self.usage(leecher.pid)
                    log(f"t={now - began:.0f}s: {use[0]} fds, {use[1]} threads, "
                        f"{use[2] // 1024} MiB RSS")
                self.broker_alive(leecher, "the broker under test")
                self.broker_alive(seeder, "the seeding broker")
                self.records_valid(state, sample=200)
            time.sleep(self.rng.random() * 0.2)

        # Wind down: every patron ends (watchers get Ctrl-C), then resources return.
        end = time.monotonic() + PATRON_BOUND + 10
        while self.procs and time.monotonic() < end:
            for entry in self.procs:
                if entry["stopped"]:
                    os.kill(entry["proc"].pid, signal.SIGCONT)
                    entry["stopped"] = False
                    entry["since"] = time.monotonic()
            self.reap(force=True)
            time.sleep(0.05)
        if self.procs:
            self.fail(f"{len(self.procs)} patrons did not end")
            for entry in self.procs:
                entry["proc"].kill()
        for ident, _, _ in downloads.values():
            self.client(state, "close", "--force", "--delete-data", ident)
        settle = time.monotonic() + 20
        now_usage = self.usage(leecher.pid)
        while time.monotonic() < settle:
            now_usage = self.usage(leecher.pid)
            if now_usage[0] <= base[0] + 4 and now_usage[1] <= base[1] + 2:
                break
            time.sleep(0.2)
        log(f"after: {now_usage[0]} fds, {now_usage[1]} threads, {now_usage[2] // 1024} MiB RSS")
        if now_usage[0] > base[0] + 4:
            self.fail(f"fds did not return: {base[0]} → {now_usage[0]}")
        if now_usage[1] > base[1] + 2:
            self.fail(f"threads did not return: {base[1]} → {now_usage[1]}")
        if now_usage[2] > base[2] + 64 * 1024:
            self.fail(f"RSS grew by {(now_usage[2] - base[2]) // 1024} MiB")
        self.broker_alive(leecher, "the broker under test")
        self.records_valid(state)
        self.many_seeds_held(state)
        self.outside_untouched("at the end")
        if self.counts["attacks"] == 0:
            self.fail("the attacker never attacked")
        # A soak that downloaded nothing tested nothing.
        if self.counts["downloads"] < TORRENTS:
            self.fail(f"only {self.counts['downloads']} downloads verified; "
                      f"at least one of each of the {TORRENTS} torrents is expected")
        self.stop()
        c = self.counts
        log(f"{c['patrons']} patrons ({c['killed']} SIGKILLed, {c['stopped']} SIGSTOPped), "
            f"{c['hostile']} hostile connectors, {c['downloads']} downloads verified, "
            f"{c['cats']} cat streams verified, {c['attacks']} attacks on the storage, "
            f"exit codes {dict(sorted(c['exit_codes'].items()))}")
        return not self.failures

    # -- many idle seeds ---------------------------------------------------------------------
    def many_seeds(self, state):
        """Adds self.many tiny seeds (data present, one piece each) through one pipe patron;
        every add must be answered `created`."""
        if self.many == 0:
            return
        folder = os.path.join(self.tmp, "many")
        os.makedirs(folder, exist_ok=True)
        lines = []
        for n in range(self.many):
            name = f"m{n}.bin"
            data = f"idle seed {n} of the soak\n".encode() * 4
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
            info = (b"d6:lengthi%de4:name%d:%s12:piece lengthi16384e6:pieces20:%se"
                    % (len(data), len(name), name.encode(), hashlib.sha1(data).digest()))
            torrent = os.path.join(folder, f"m{n}.torrent")
            with open(torrent, "wb") as f:
                f.write(b"d4:info" + info + b"e")
            lines.append(json.dumps({"cmd": "add", "torrent": torrent, "output": folder,
                                     "overwrite": True, "request": n}))
        started = time.monotonic()
        out = subprocess.run([self.bins["patron-client"], "--state-dir", state, "pipe"],
                             input="\n".join(lines) + "\n", capture_output=True, text=True,
                             env=self.env, timeout=600)
        replies = [json_line(line) for line in out.stdout.splitlines()]
        created = sum(1 for r in replies if r.get("event") == "created")
        if out.returncode != 0 or created != self.many:
            self.fail(f"{self.many} idle seeds: {created} created, exit {out.returncode}: "
                      f"{[r for r in replies if r.get('event') not in ('created', 'status')][:3]}")
        deadline = time.monotonic() + 300
        seeding = 0
        while time.monotonic() < deadline:
            listed = self.client(state, "--json", "list").stdout.splitlines()
            seeding = sum(1 for line in listed if json_line(line).get("state") == "seeding")
            if seeding >= self.many:
                break
            time.sleep(1)
        log(f"{self.many} idle seeds added and seeding in {time.monotonic() - started:.1f} s "
            f"({seeding} seeding)")
        if seeding < self.many:
            self.fail(f"only {seeding} of {self.many} idle seeds seed")

    def many_seeds_held(self, state):
        """At the end, every idle seed still seeds and has its record."""
        if self.many == 0:
            return
        listed = self.client(state, "--json", "list").stdout.splitlines()
        names = {json_line(line).get("name"): json_line(line).get("state") for line in listed}
        idle = [state_ for name, state_ in names.items()
                if name and re.fullmatch(r"m[0-9]+\.bin", name)]
        if len(idle) != self.many or any(state_ != "seeding" for state_ in idle):
            self.fail(f"of {self.many} idle seeds, {len(idle)} listed, "
                      f"{sum(1 for s in idle if s == 'seeding')} seeding at the end")
        records = len(os.listdir(os.path.join(state, "records")))
        if records < self.many:
            self.fail(f"{records} records for at least {self.many} idle seeds")

    def random_patron(self, state, torrents, downloads):
        torrent, _, _ = self.rng.choice(torrents)
        out_dir = os.path.join(self.tmp, "dl", "joiners")
        os.makedirs(out_dir, exist_ok=True)
        choice = self.rng.choice(["list", "list-json", "status", "add", "watch", "pipe",
                                  "close-unknown", "info", "files", "peers", "recheck",
                                  "cat"])
        if choice == "cat" and downloads:
            # A reader of a torrent while it downloads, from anywhere in the file.
            i = self.rng.choice(sorted(downloads))
            ident = downloads[i][0]
            offset = self.rng.randrange(0, SIZE)
            data = os.path.join(self.tmp, "seed", f"file{i}.bin")
            os.makedirs(os.path.join(self.tmp, "cat"), exist_ok=True)
            out = os.path.join(self.tmp, "cat", f"{self.counts['patrons']}.bin")
            self.spawn(state, choice, ["cat", ident, "--offset", str(offset)],
                       stdout=open(out, "wb"), verify=(out, data, offset))
            return
        if choice == "cat":
            choice = "list"
        if choice == "list":
            self.spawn(state, choice, ["list"])
        elif choice == "list-json":
            self.spawn(state, choice, ["--json", "list"])
        elif choice == "status":
            self.spawn(state, choice, ["status", str(self.rng.randrange(0, 40))])
        elif choice == "add":
            # With the seeder as its peer: if this patron starts the torrent (nobody ran it
            # at that moment), it must be able to download it.
            self.spawn(state, choice, ["--json", "add", torrent, "--output", out_dir,
                                       "--peer", self.peer])
        elif choice == "watch":
            self.spawn(state, "watch", ["--json", "watch"])
        elif choice == "pipe":
            lines = "\n".join(self.rng.choice([
                '{"cmd": "list"}', '{"cmd": "status", "torrent": "0"}',
                'not json', '{"cmd": "nope"}', '{"cmd": "info"}',
                json.dumps({"cmd": "add", "torrent": torrent, "output": out_dir,
                            "peers": [self.peer]}),
            ]) for _ in range(self.rng.randrange(1, 6))) + "\n"
            self.spawn(state, choice, ["pipe"], stdin=lines)
        elif choice == "files":
            # Lists, or selects every file again (the torrents here have one): harmless to
            # the downloads, but through the same path as a real change.
            args = ["--json", "files", str(self.rng.randrange(0, 8))]
            if self.rng.random() < 0.3:
                args += ["--only", "0"]
            self.spawn(state, choice, args)
        elif choice == "peers":
            args = ["--json", "peers", str(self.rng.randrange(0, 8))]
            if self.rng.random() < 0.5:
                args += ["--add", self.peer]
            self.spawn(state, choice, args)
        elif choice == "recheck":
            # Mid-download too: the torrent is checked again and goes on.
            self.spawn(state, choice, ["--json", "recheck", str(self.rng.randrange(0, 8))])
        elif choice == "close-unknown":
            # (Far above any id the soak hands out, its idle seeds included.)
            self.spawn(state, choice, ["close", str(self.rng.randrange(10**9, 10**9 + 1000))])
        else:
            self.spawn(state, choice, ["--json", "broker", "status"])

    def chaos(self):
        alive = [e for e in self.procs if e["proc"].poll() is None and not e["killed"]]
        if not alive:
            return
        entry = self.rng.choice(alive)
        roll = self.rng.random()
        if roll < 0.15:
            entry["proc"].kill()
            entry["killed"] = True
            self.counts["killed"] += 1
        elif roll < 0.25 and not entry["stopped"]:
            os.kill(entry["proc"].pid, signal.SIGSTOP)
            entry["stopped"] = True
            self.counts["stopped"] += 1
        elif entry["stopped"] and roll < 0.6:
            os.kill(entry["proc"].pid, signal.SIGCONT)
            entry["stopped"] = False
            entry["since"] = time.monotonic()

    def stop(self):
        for proc in self.brokers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.brokers:
            try:
                code = proc.wait(timeout=20)
                if code != 0:
                    self.fail(f"a broker exited {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.fail("a broker did not stop within 20 s of SIGTERM")
                proc.kill()


def snapshot(folder):
    """Every file and folder under `folder`, with each file's bytes."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            found.append((os.path.join(dirpath, name), None))
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                found.append((path, open(path, "rb").read()))
            except OSError as e:
                found.append((path, str(e)))
    return sorted(found)


def json_line(text):
    """The first JSON object printed, or {}."""
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--many", type=int, default=10_000,
                        help="idle seeds the broker under test holds throughout (0: none)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    log(f"{args.minutes} minutes, seed {seed} (rerun with --seed {seed})")
    bins = {b: os.path.join(args.bin_dir, b) for b in ("torrent-broker", "patron-client")}
    soak = Soak(bins, args.minutes, seed, args.many)
    try:
        ok = soak.run()
    finally:
        for proc in soak.brokers:
            if proc.poll() is None:
                proc.kill()
        for entry in soak.procs:
            if entry["proc"].poll() is None:
                entry["proc"].kill()
        shutil.rmtree(soak.outside, ignore_errors=True)
    if not ok:
        log(f"{len(soak.failures)} invariant(s) broken; logs in {soak.tmp}")
        sys.exit(1)
    log("OK: every invariant held")


if __name__ == "__main__":
    main()
