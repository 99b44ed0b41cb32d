#!/usr/bin/env python3
"""Replica lag during a purge (writes docs/replica_lag.md and docs/img/replica_lag.png): scenario A's
table (ROWS, default 2M, half purgeable) on a primary with a streaming hot standby on the same
machine (pg_basebackup -R), purged four ways, one after the other on a fresh copy of the table:
the plain DELETE, a pg_token_cleanup run() without pacing, and run() with max_replica_lag of 1 s and
of 100 ms. No workload runs beside them: the standby's replay is the only competition.
On this machine an idle standby replays as fast as the primary writes, so the standby is throttled
while each purge is measured: its startup process (the one that replays WAL) is stopped and
continued (SIGSTOP/SIGCONT) so that it runs REPLAY_SHARE of every 100 ms (default 0.05: a standby
replaying at a twentieth of its speed, like one on a much slower machine or busy with queries; at
0.2 it still kept within about 1.2 s of the plain DELETE here). It runs at
full speed in between, while each fresh copy of the table replicates. REPLAY_SHARE=1 turns the
throttle off. (Pinning the standby to one core at nice 19 beside a busy loop was tried first:
replaying each fresh 2M-row copy of the table then took over ten minutes.)

While each purge runs and until the standby has caught up, a sampler reads the primary every 100 ms:
its WAL position, and the standby's replay_lsn and replay_lag from pg_stat_replication. Before each
read it commits a tiny WAL record (a logical message): a standby reports its replay position when
new WAL reaches it, otherwise only every wal_receiver_status_interval (10 s), which after a purge
would show a standby that has caught up as still behind. Autovacuum is off on the purged table: its
WAL after a purge is not the purge's. The lag
plotted is the age of the oldest WAL position the standby had not replayed (the measure the
extension paces by, which also shows a stalled standby); the byte gap is beside it.

Run `bash bench/run.sh` once first (it installs what the benchmarks need), then
`python3 bench/replica_lag.py`.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402

REPLICA_DIR = b.DIR / "replica"
REPLAY_SHARE = float(os.environ.get("REPLAY_SHARE", "0.05"))
THROTTLE_PERIOD_S = 0.1
REPLICA_PORT = b.PORT + 2
SAMPLE_S = 0.1


def start_replica():
    subprocess.run(b.as_postgres([f"{b.BIN}/pg_basebackup", "-D", str(REPLICA_DIR), "-R", "-X", "stream",
                                  "-c", "fast", "-h", "127.0.0.1", "-p", str(b.PORT), "-U", "postgres"]),
                   check=True, capture_output=True)
    with open(REPLICA_DIR / "postgresql.auto.conf", "a") as conf:
        conf.write(f"port = {REPLICA_PORT}\nhot_standby = on\n")
    subprocess.run(b.as_postgres([f"{b.BIN}/pg_ctl", "-D", str(REPLICA_DIR), "-l", str(b.DIR / "replica.log"),
                                  "-w", "start"]), check=True, capture_output=True)


def stop_replica():
    subprocess.run(b.as_postgres([f"{b.BIN}/pg_ctl", "-D", str(REPLICA_DIR), "-m", "fast", "-w", "stop"]),
                   capture_output=True)


def replication_state():
    """(primary WAL position, standby replay position, replay_lag in s) as integers/float."""
    # A standby reports its replay position when new WAL reaches it (else every
    # wal_receiver_status_interval, 10 s): a tiny record, committed (so flushed and sent at once), keeps
    # what pg_stat_replication shows current, also when nothing else writes.
    b.psql("SELECT pg_logical_emit_message(true, 'bench', '')")
    row = b.psql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint || ' ' || "
                 "coalesce((SELECT pg_wal_lsn_diff(replay_lsn, '0/0')::bigint FROM pg_stat_replication "
                 "          WHERE state = 'streaming' LIMIT 1), 0) || ' ' || "
                 "coalesce((SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication "
                 "          WHERE state = 'streaming' LIMIT 1), 0)")
    current, replay, reported = row.split()
    return int(current), int(replay), float(reported)


def wait_caught_up(timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        current, replay, _ = replication_state()
        if replay >= current:
            return
        time.sleep(0.2)
    raise RuntimeError("the standby did not catch up")


def startup_pid():
    """The standby's startup process: the child of its postmaster that replays WAL."""
    postmaster = int((REPLICA_DIR / "postmaster.pid").read_text().split()[0])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_text()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == postmaster and cmdline.startswith("postgres: startup"):
            return int(proc.name)
    raise RuntimeError("no startup process in the standby")


class Throttle(threading.Thread):
    """Lets the standby's startup process run REPLAY_SHARE of every THROTTLE_PERIOD_S."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pid = startup_pid()
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                os.kill(self.pid, signal.SIGCONT)
                time.sleep(THROTTLE_PERIOD_S * REPLAY_SHARE)
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(THROTTLE_PERIOD_S * (1 - REPLAY_SHARE))
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def end(self):
        self.stop.set()
        self.join()


class Sampler(threading.Thread):
    """Every SAMPLE_S: the lag (age of the oldest primary position not replayed) and the byte gap."""

    def __init__(self):
        super().__init__(daemon=True)
        self.series = []  # (t, lag s, gap bytes, reported s)
        self.positions = []  # (t, primary position)
        self.stop = threading.Event()

    def run(self):
        t0 = time.time()
        while not self.stop.is_set():
            now = time.time() - t0
            current, replay, reported = replication_state()
            self.positions.append((now, current))
            unreplayed = next((t for t, lsn in self.positions if lsn > replay), None)
            lag = 0.0 if unreplayed is None else now - unreplayed
            self.series.append((now, lag, current - replay, reported))
            time.sleep(SAMPLE_S)


def plain():
    b.psql(f"DELETE FROM public.refresh_tokens WHERE {b.CONDITION}")


def run_with(max_lag):
    def purge():
        b.psql(f"UPDATE token_cleanup.rules SET max_replica_lag = {max_lag} WHERE name = 'bench'")
        b.psql("SELECT status FROM token_cleanup.run('bench')")
    return purge


CONTENDERS = [
    ("plain DELETE", plain),
    ("run(), no pacing", run_with("NULL")),
    ("run(), max_replica_lag = 1 s", run_with("'1 second'")),
    ("run(), max_replica_lag = 100 ms", run_with("'100 milliseconds'")),
]


def main():
    b.start_cluster()
    results = []
    try:
        start_replica()
        b.make_source("source_a", b.ROWS)
        b.fresh_table("source_a")
        b.psql(f"INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) "
               f"VALUES ('bench', 'public.refresh_tokens', '{b.CONDITION}', '@yearly', {b.BATCH})")
        # ONLY=<text>: only the contenders whose name contains it (for development; the report then
        # has only those rows).
        only = os.environ.get("ONLY", "")
        for name, purge in [c for c in CONTENDERS if only in c[0]]:
            b.fresh_table("source_a")
            # Autovacuum's WAL after the purge is not the purge's (and not paced by it).
            b.psql("ALTER TABLE public.refresh_tokens SET (autovacuum_enabled = off)")
            wait_caught_up()
            sampler = Sampler()
            sampler.start()
            time.sleep(1)
            throttle = Throttle() if REPLAY_SHARE < 1 else None
            if throttle:
                throttle.start()
            t0 = time.time()
            try:
                purge()
                took = time.time() - t0
                wait_caught_up()
                caught_up = time.time() - t0
            finally:
                if throttle:
                    throttle.end()
            time.sleep(1)
            sampler.stop.set()
            sampler.join()
            series = sampler.series
            results.append({"name": name, "took": took, "caught_up": caught_up,
                            "max_lag": max(s[1] for s in series),
                            "max_gap_mb": max(s[2] for s in series) / 2**20,
                            "max_reported": max(s[3] for s in series), "series": series})
            print(f"  {name}: {took:.2f} s, max lag {results[-1]['max_lag']:.2f} s", flush=True)
    finally:
        stop_replica()
        b.stop_cluster()
    # The series behind the report and the chart, for a closer look.
    (b.ROOT / "target").mkdir(exist_ok=True)
    (b.ROOT / "target" / "replica_lag.json").write_text(json.dumps(results))
    report(results)


def report(results):
    lines = ["# Replica lag during a purge", "",
             f"Generated by `python3 bench/replica_lag.py` on {os.cpu_count()} cores: scenario A's table "
             f"({b.ROWS:,} rows, half purgeable) on a primary with a streaming hot standby on the same machine, "
             "no workload; each purge on a fresh copy of the table once the standby had caught up. "
             + (f"While a purge runs and until the standby has caught up, the standby replays at {REPLAY_SHARE:.0%} "
                "of its speed (its startup process stopped and continued). " if REPLAY_SHARE < 1 else
                "The standby is not throttled. ") + "Lag: the age "
             "of the oldest primary WAL position the standby had not replayed, sampled every 100 ms (see the "
             "docstring of bench/replica_lag.py).", "",
             "| purge | purge time (s) | standby caught up after (s) | max lag (s) | max gap (MB) | max replay_lag shown (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['took']:.2f} | {r['caught_up']:.2f} | {r['max_lag']:.2f} | "
                     f"{r['max_gap_mb']:.0f} | {r['max_reported']:.2f} |")
    by_name = {r["name"]: r for r in results}
    if "plain DELETE" in by_name and "run(), max_replica_lag = 1 s" in by_name:
        held = by_name["run(), max_replica_lag = 1 s"]["max_lag"]
        lines += ["", f"With `max_replica_lag = 1 s` the standby's lag peaked at **{held:.2f} s** "
                  f"({'under' if held < 1.5 else 'over'} 1.5 s); the plain DELETE let it reach "
                  f"**{by_name['plain DELETE']['max_lag']:.2f} s**."]
    lines += ["", "![replica lag against time](img/replica_lag.png)", ""]
    (b.ROOT / "docs" / "replica_lag.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (bash bench/run.sh installs it)")
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in results:
        ax.plot([s[0] for s in r["series"]], [s[1] for s in r["series"]], label=r["name"])
    ax.set_xlabel("seconds since sampling started (the purge starts at 1 s)")
    ax.set_ylabel("standby lag (s)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    (b.ROOT / "docs" / "img").mkdir(exist_ok=True)
    fig.savefig(b.ROOT / "docs" / "img" / "replica_lag.png", dpi=100)


if __name__ == "__main__":
    main()
