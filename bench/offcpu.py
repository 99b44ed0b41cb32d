#!/usr/bin/env python3
"""Where a run's off-CPU time goes (writes docs/offcpu.md): the table walk of scenario A under its
token-refresh workload, once as a pg_token_cleanup run() (in its runner worker) and once as the same
walk in PL/pgSQL (in a client backend), alternating REPEAT times (default 2). For the process doing
the purge, sampled while it works:

- /proc/<pid>/schedstat: time on CPU, and time runnable but waiting for a CPU (the run queue);
  the rest of the wall time is time asleep (I/O, locks, latches, sleeps);
- /proc/<pid>/status: voluntary and involuntary context switches;
- pg_wait_sampling at 1 ms: the wait events PostgreSQL reports for that pid;
- `strace -c` attached to it: the time spent in each system call.

The first two are exact; wait sampling misses waits shorter than a millisecond; strace slows the
process it traces, so its run is a separate, extra one and only its proportions count.

Run `bash bench/run.sh` once first (it installs what the benchmarks need); this installs
postgresql-15-pg-wait-sampling itself. Then `python3 bench/offcpu.py`.
"""

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402

REPEAT = int(os.environ.get("REPEAT", "2"))
PAGES_PER_BATCH = 135  # as bench/overhead.py: about 5,000 matching rows per range


def ensure_wait_sampling():
    ok = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "postgresql-15-pg-wait-sampling"],
                        capture_output=True, text=True).stdout
    if "install ok installed" not in ok:
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql-15-pg-wait-sampling"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def start():
    b.start_cluster()
    conf = b.DIR / "data" / "postgresql.conf"
    with open(conf, "a") as f:
        f.write("shared_preload_libraries = 'pg_token_cleanup,pg_cron,pg_wait_sampling'\n"
                "pg_wait_sampling.history_period = 1\n"
                "pg_wait_sampling.history_size = 200000\n"
                "pg_wait_sampling.profile_pid = on\n")
    b.stop_cluster()
    subprocess.run(b.as_postgres([f"{b.BIN}/pg_ctl", "-D", str(b.DIR / "data"), "-l",
                                  str(b.DIR / "server.log"), "-w", "start"]), check=True, capture_output=True)
    b.psql("CREATE EXTENSION pg_wait_sampling")
    b.create_walk_procedure()


def find_pid(query_like, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = b.psql(f"SELECT pid FROM pg_stat_activity WHERE {query_like} LIMIT 1")
        if pid:
            return int(pid)
        time.sleep(0.002)
    return None


def proc_counters(pid):
    try:
        cpu_ns, wait_ns, _ = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split())
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    switches = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))}
    return {"cpu": cpu_ns / 1e9, "runqueue": wait_ns / 1e9, "voluntary": switches["voluntary_ctxt_switches"],
            "involuntary": switches["nonvoluntary_ctxt_switches"]}


def watch(pid_query, purge, strace=False):
    """Runs purge() in a thread; finds the purging process, samples its counters until it is done.
    Returns wall time and the counters' growth, the wait events sampled, and strace's summary."""
    b.psql("SELECT pg_wait_sampling_reset_profile()")
    result = {}
    thread = threading.Thread(target=lambda: result.update(purge() or {}))
    t0 = time.time()
    thread.start()
    pid = find_pid(pid_query)
    first = proc_counters(pid) if pid else None
    tracer = None
    if strace and pid:
        out = b.DIR / f"strace-{pid}.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = first
    while thread.is_alive():
        now = proc_counters(pid) if pid else None
        if now:
            last = now
        time.sleep(0.01)
    wall = time.time() - t0
    if tracer:
        tracer.wait(timeout=10)
    events = b.psql(f"SELECT coalesce(event_type, 'CPU') || ':' || coalesce(event, 'running') || '=' || count "
                    f"FROM pg_wait_sampling_profile WHERE pid = {pid} ORDER BY count DESC") if pid else ""
    growth = {k: last[k] - first[k] for k in first} if first and last else {}
    summary = (b.DIR / f"strace-{pid}.txt").read_text() if tracer else ""
    return {"wall": wall, **growth, "events": events.splitlines(), "strace": summary}


def run_purge():
    b.psql("SELECT status FROM token_cleanup.run('bench')")
    return {}


def walk_purge():
    b.psql(f"SET enable_seqscan = off; CALL walk({PAGES_PER_BATCH})")
    return {}


def wal_compression(mode):
    """pg_token_cleanup.wal_compression for the runners started from now on."""
    def apply():
        b.psql(f"ALTER SYSTEM SET pg_token_cleanup.wal_compression = '{mode}'; SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster, which forks the runners, reloads asynchronously
    return apply


# (name, how to find the purging process in pg_stat_activity, the purge, what to set before it)
CONTENDERS = [
    ("pg_token_cleanup run() (runner worker, wal_compression = lz4, the default)",
     "backend_type = 'pg_token_cleanup runner'", run_purge, wal_compression("lz4")),
    ("the same, wal_compression = server (off here, as for the PL/pgSQL walk)",
     "backend_type = 'pg_token_cleanup runner'", run_purge, wal_compression("server")),
    ("PL/pgSQL walk, same table (client backend)",
     "query LIKE '%CALL walk%' AND pid <> pg_backend_pid()", walk_purge, lambda: None),
]


def main():
    ensure_wait_sampling()
    start()
    results = {name: [] for name, _, _, _ in CONTENDERS}
    traces = {}
    try:
        b.make_source("source_a", b.ROWS)
        b.fresh_table("source_a")
        b.psql(f"INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) "
               f"VALUES ('bench', 'public.refresh_tokens', '{b.CONDITION}', '@yearly', {b.BATCH})")
        for _ in range(REPEAT):
            for name, query, purge, setup in CONTENDERS:
                setup()
                b.fresh_table("source_a")
                _, _, t0, t1 = b.with_workload(15, lambda q=query, p=purge: results[name].append(watch(q, p)))
                print(f"  {name}: {results[name][-1]['wall']:.2f} s", flush=True)
        for name, query, purge, setup in CONTENDERS:
            setup()
            b.fresh_table("source_a")
            box = []
            b.with_workload(20, lambda q=query, p=purge: box.append(watch(q, p, strace=True)))
            traces[name] = box[0]
    finally:
        b.stop_cluster()
    report(results, traces)


def report(results, traces):
    lines = ["# Where a run's off-CPU time goes", "",
             f"Generated by `python3 bench/offcpu.py` on {os.cpu_count()} cores: scenario A's table "
             f"({b.ROWS:,} rows, half purgeable) under its token-refresh workload ({b.RATE} transactions/s), "
             f"the purge done {REPEAT} times each way, alternating. Medians of the purging process's counters "
             "while it purged (see the docstring of bench/offcpu.py).", "",
             "| purge | wall (s) | on CPU (s) | runnable, waiting for a CPU (s) | asleep (s) | voluntary switches | involuntary switches |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        med = lambda k: statistics.median(r.get(k, float("nan")) for r in runs)  # noqa: E731
        asleep = statistics.median(r["wall"] - r.get("cpu", 0) - r.get("runqueue", 0) for r in runs)
        lines.append(f"| {name} | {med('wall'):.2f} | {med('cpu'):.2f} | {med('runqueue'):.2f} | {asleep:.2f} | "
                     f"{med('voluntary'):.0f} | {med('involuntary'):.0f} |")
    lines += ["", "Wait events sampled every millisecond for the purging process (last run of each; "
              "`CPU:running` is a sample with no wait event):", ""]
    for name, runs in results.items():
        lines += [f"- {name}: " + (", ".join(runs[-1]["events"][:8]) or "none")]
    lines += ["", "`strace -c` of one more run each (the tracing slows it; proportions only):", ""]
    for name, t in traces.items():
        top = [l for l in t["strace"].splitlines() if l.strip() and not l.startswith(("%", "-", "total"))][:6]
        lines += [f"- {name} ({t['wall']:.2f} s traced):", "", "```", *top, "```", ""]
    lines += ["Every run: " + "; ".join(f"{name} {r['wall']:.2f} s" for name, runs in results.items() for r in runs), ""]
    (b.ROOT / "docs" / "offcpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
