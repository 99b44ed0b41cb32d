#!/usr/bin/env python3
"""Benchmarks of issue 4, side by side on one cluster, writing docs/benchmarks.md and docs/img/*.png.

A. Bulk purge of a refresh-token table (ROWS, default 2M, half purgeable) by one plain DELETE, the
   naive ctid loop, pg_cron running the plain DELETE, and a pg_token_cleanup run (also with
   parallel_workers = 2), each while a
   pgbench token-refresh workload runs at a fixed rate: wall time, rows/s, WAL, longest batch, and
   the workload's latency during the purge against its idle baseline (plus a latency timeline).
B. Steady state: tables of 1M, 5M, 10M, 20M rows with a fixed number of purgeable rows and an index on
   the expiry column: a pg_token_cleanup run against a full-scan DELETE.
C. Scheduler: 100,000 rules (C_RULES) in one database; memory per rule, the first load and a
   one-rule reload (the scheduler's CPU), its CPU while nothing is due, and how late runs start
   with 10,000 of them (C_DUE) due every minute.

Run it with `bash bench/run.sh` (installs what it needs, builds the extension in release mode).
Environment: ROWS (another size is recorded beside A as a variant, e.g. A20M), REPEAT (runs of the
plain DELETE and of pg_token_cleanup in A, default 3), RATE_LIMITS (max_rows_per_second values tried
in A, default "750000 500000 250000"), WAL_LIMITS (max_wal_rate values, MB/s, default "100 50 25"),
YIELD (0: no run with yield_to_waiters), NAIVE (0: no naive loop), STEADY_SIZES
(e.g. "1000000 5000000 10000000"), STEADY_PURGEABLE, RATE (tps), SKIP (letters of scenarios to skip,
e.g. "BC").
"""

import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ["PG_BIN"]  # set by bench/run.sh from scripts/pg_env.sh
DIR = Path("/tmp/pg_token_cleanup_bench")
PORT = 54330
ROWS = int(os.environ.get("ROWS", "2000000"))  # not DEFAULT_ROWS: recorded as a variant of A
RATE = int(os.environ.get("RATE", "400"))
BATCH = 5000
REPEAT = int(os.environ.get("REPEAT", "3"))
RATE_LIMITS = [int(x) for x in os.environ.get("RATE_LIMITS", "750000 500000 250000").split()]
WAL_LIMITS = [float(x) for x in os.environ.get("WAL_LIMITS", "100 50 25").split()]  # max_wal_rate, MB/s
YIELD = os.environ.get("YIELD", "1") == "1"  # a run with yield_to_waiters in scenario A
NAIVE = os.environ.get("NAIVE", "1") == "1"  # the naive ctid loop in scenario A (slow at 20M rows)
DEFAULT_ROWS = 2000000
STEADY_SIZES = [int(x) for x in os.environ.get("STEADY_SIZES", "1000000 5000000 10000000 20000000").split()]
STEADY_PURGEABLE = int(os.environ.get("STEADY_PURGEABLE", "100000"))
STEADY_LAYOUTS = os.environ.get("STEADY_LAYOUTS", "oldest spread").split()
SKIP = os.environ.get("SKIP", "")
IDLE_S = 5  # workload alone before each purge: the idle baseline
TAIL_S = 3  # workload after the purge


def as_postgres(args):
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def psql(sql, db="bench", quiet=False):
    # Through stdin, so that each statement runs on its own (VACUUM cannot run in a transaction).
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", db,
         "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}\n{sql}")
    return out.stdout.strip() if not quiet else None


def start_cluster():
    subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", str(DIR / "data"), "-m", "fast", "-w", "stop"]),
                   capture_output=True)
    subprocess.run(["rm", "-rf", str(DIR)], check=True)
    DIR.mkdir(parents=True)
    if os.geteuid() == 0:
        subprocess.run(["chown", "postgres", str(DIR)], check=True)
    subprocess.run(as_postgres([f"{BIN}/initdb", "-D", str(DIR / "data"), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    with open(DIR / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"""
port = {PORT}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{DIR}'
shared_preload_libraries = 'pg_token_cleanup,pg_cron'
cron.database_name = 'bench'
cron.use_background_workers = on
shared_buffers = '2GB'
max_wal_size = '16GB'
checkpoint_timeout = '30min'
pg_token_cleanup.enabled = off
pg_token_cleanup.statement_timeout = 0
""")
    subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", str(DIR / "data"), "-l", str(DIR / "server.log"),
                                "-w", "start"]), check=True, capture_output=True)
    psql("CREATE DATABASE bench", db="postgres")
    psql("CREATE EXTENSION pg_token_cleanup; CREATE EXTENSION pg_cron;")


def stop_cluster():
    subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", str(DIR / "data"), "-m", "fast", "-w", "stop"]),
                   capture_output=True)


def make_source(name, rows, every=None, oldest=None):
    """An unlogged source table of `rows` tokens. By default a quarter revoked, a quarter expired
    (half purgeable). With `every`: every `every`-th token expired, none revoked. With `oldest`: the
    first `oldest` tokens expired, none revoked (tokens expire in about the order they were issued)."""
    if oldest is not None:
        revoked, expired = "false", f"g <= {oldest}"
    elif every is None:
        revoked, expired = "g % 4 = 0", "g % 4 = 1"
    else:
        revoked, expired = "false", f"g % {every} = 0"
    psql(f"""
DROP TABLE IF EXISTS {name};
CREATE UNLOGGED TABLE {name} AS
SELECT g::bigint AS id, (g % 100000)::bigint AS user_id, sha256(g::text::bytea) AS token_hash,
       {revoked} AS revoked,
       now() + CASE WHEN {expired} THEN -interval '1 day' ELSE interval '30 days' END
         + (g % 1000) * interval '1 second' AS expires_at,
       now() - interval '60 days' AS created_at
  FROM generate_series(1, {rows}) g;""")


def fresh_table(source):
    psql(f"""
DROP TABLE IF EXISTS public.refresh_tokens;
CREATE TABLE public.refresh_tokens (id bigserial PRIMARY KEY, user_id bigint, token_hash bytea,
  revoked boolean, expires_at timestamptz, created_at timestamptz);
INSERT INTO public.refresh_tokens SELECT * FROM {source};
SELECT setval('public.refresh_tokens_id_seq', (SELECT max(id) FROM public.refresh_tokens));
CREATE INDEX ON public.refresh_tokens (expires_at);
CREATE INDEX ON public.refresh_tokens (user_id);
VACUUM ANALYZE public.refresh_tokens;
CHECKPOINT;""")


CONDITION = "revoked OR expires_at < now()"
PARALLEL = "pg_token_cleanup run() with parallel_workers = 2"

WORKLOAD = """\\set uid random(1, 100000)
UPDATE public.refresh_tokens SET revoked = true
 WHERE id = (SELECT id FROM public.refresh_tokens WHERE user_id = :uid AND NOT revoked AND expires_at > now() LIMIT 1);
INSERT INTO public.refresh_tokens (user_id, token_hash, revoked, expires_at, created_at)
VALUES (:uid, sha256(random()::text::bytea), false, now() + interval '30 days', now());
"""


def create_walk_procedure(name="walk", returning=""):
    """walk(pages): the table walk of a run, in PL/pgSQL — the same page ranges (TID range scans),
    each its own asynchronously committed transaction — the algorithm without the worker
    (bench/overhead.py, bench/offcpu.py). `returning` ends each DELETE (its rows are discarded):
    bench/oncpu.py's `walk_returning` has the ` RETURNING ctid` of a run's batches."""
    psql(f"""CREATE PROCEDURE {name}(pages int) LANGUAGE plpgsql AS $$
DECLARE n int := pg_relation_size('public.refresh_tokens') / current_setting('block_size')::int; p int := 0;
BEGIN
  WHILE p < n LOOP
    SET LOCAL synchronous_commit = off;
    EXECUTE format('DELETE FROM public.refresh_tokens WHERE ctid >= %L::tid AND ctid < %L::tid AND ({CONDITION}){returning}',
                   '(' || p || ',0)', '(' || (p + pages) || ',0)');
    COMMIT;
    p := p + pages;
  END LOOP;
END $$""")


def wal_lsn():
    return psql("SELECT pg_current_wal_lsn()")


def wal_bytes(since):
    return int(float(psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{since}')")))


def with_workload(duration_s, purge):
    """Runs pgbench at RATE tps for duration_s seconds; calls purge() after IDLE_S seconds.
    Returns (purge result, [(completion epoch s, latency ms)], purge start, purge end)."""
    logdir = DIR / "pgbench"
    subprocess.run(["rm", "-rf", str(logdir)])
    logdir.mkdir()
    script = logdir / "workload.sql"
    script.write_text(WORKLOAD)
    bench = subprocess.Popen(
        ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-f", str(script),
         "-R", str(RATE), "-c", "4", "-j", "2", "-T", str(duration_s), "-l",
         "--log-prefix", str(logdir / "tx"), "bench"],
        cwd=logdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(IDLE_S)
    started = time.time()
    result = purge()
    finished = time.time()
    if isinstance(result, dict) and "finished_epoch" in result:
        # The purge's own client call, without the statements around it (token_cleanup_run_now).
        started, finished = result["started_epoch"], result["finished_epoch"]
    bench.wait()
    samples = []
    for log in logdir.glob("tx*"):
        for line in log.read_text().split("\n"):
            f = line.split()
            if len(f) >= 6:
                latency_ms = int(f[2]) / 1000.0
                done = int(f[4]) + int(f[5]) / 1e6
                samples.append((done - latency_ms / 1000.0, latency_ms))
    samples.sort()
    return result, samples, started, finished


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def latency_stats(samples, start, end):
    idle = [l for t, l in samples if t < start and t >= start - IDLE_S + 1]
    during = [l for t, l in samples if start <= t <= end]
    return {
        "idle_p50": percentile(idle, 50), "idle_p99": percentile(idle, 99),
        "p50": percentile(during, 50), "p99": percentile(during, 99), "max": max(during) if during else float("nan"),
        "n": len(during),
    }


# --- contenders of scenario A ---------------------------------------------------------------

def plain_delete():
    # No RETURNING: counting returned rows would slow the baseline down by a third.
    t0 = time.time()
    psql(f"DELETE FROM public.refresh_tokens WHERE {CONDITION}")
    return {"rows": None, "longest_batch_ms": (time.time() - t0) * 1000}


def naive_loop():
    psql(f"""
CREATE OR REPLACE PROCEDURE naive_purge(n int, INOUT total bigint DEFAULT 0, INOUT longest float8 DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE deleted bigint; t timestamptz;
BEGIN
  LOOP
    t := clock_timestamp();
    DELETE FROM public.refresh_tokens WHERE ctid = ANY(ARRAY(
      SELECT ctid FROM public.refresh_tokens WHERE {CONDITION} LIMIT n FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS deleted = ROW_COUNT;
    COMMIT;
    longest := greatest(longest, extract(epoch FROM clock_timestamp() - t) * 1000);
    total := total + deleted;
    EXIT WHEN deleted = 0;
  END LOOP;
END $$;""")
    out = psql(f"CALL naive_purge({BATCH})")
    total, longest = out.split("|")
    return {"rows": int(total), "longest_batch_ms": float(longest)}


def schedule_pg_cron():
    """Schedules the plain DELETE with pg_cron for the next minute boundary at least IDLE_S + 2 s
    away (pg_cron 1.4 schedules by the minute); returns that boundary (epoch seconds)."""
    psql("DELETE FROM cron.job_run_details; SELECT cron.unschedule(jobid) FROM cron.job;", quiet=True)
    due = (int(time.time()) // 60 + 1) * 60
    if due - time.time() < IDLE_S + 2:
        due += 60
    minute = time.gmtime(due).tm_min
    psql(f"SELECT cron.schedule('purge', '{minute} * * * *', $$DELETE FROM public.refresh_tokens WHERE {CONDITION}$$)")
    return due


def pg_cron_delete():
    """Waits for the job schedule_pg_cron() planned and reports its run."""
    while True:
        row = psql("SELECT status, extract(epoch FROM end_time - start_time) * 1000, "
                   "extract(epoch FROM start_time) FROM cron.job_run_details "
                   "WHERE status IN ('succeeded', 'failed')")
        if row:
            break
        time.sleep(0.2)
    psql("SELECT cron.unschedule('purge')")
    status, ms, start = row.split("|")
    assert status == "succeeded", row
    return {"rows": None, "longest_batch_ms": float(ms), "started_epoch": float(start), "waited_for_minute": True}


def token_cleanup_run(max_rows_per_second=0, max_wal_rate=0, yield_to_waiters=False, parallel_workers=1):
    psql(f"UPDATE token_cleanup.rules SET max_rows_per_second = {max_rows_per_second}, "
         f"max_wal_rate = {max_wal_rate}, yield_to_waiters = {yield_to_waiters}, "
         f"parallel_workers = {parallel_workers} WHERE name = 'bench'")
    return token_cleanup_run_now()


def token_cleanup_run_now():
    begun = time.time()
    run_id, rows = psql("SELECT run_id, rows_deleted FROM token_cleanup.run('bench')").split("|")
    # The purge ends here; the statistics below are read after it (with_workload's timing stops at
    # finished_epoch, so that a run is timed by one client call, as the plain DELETE is).
    finished = time.time()
    # A new statement: the run's row was committed by the runner after the call's snapshot.
    longest, inside, paused = psql(f"SELECT longest_batch_ms, extract(epoch FROM finished_at - started_at), "
                                   f"extract(epoch FROM paused) FROM token_cleanup.runs WHERE id = {run_id}").split("|")
    return {"rows": int(rows), "longest_batch_ms": float(longest), "inside_s": float(inside),
            "paused_s": float(paused), "started_epoch": begun, "finished_epoch": finished}


def scenario_a(results):
    make_source("source_a", ROWS)
    fresh_table("source_a")
    psql(f"INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) "
         f"VALUES ('bench', 'public.refresh_tokens', '{CONDITION}', '@yearly', {BATCH})")
    ours = "pg_token_cleanup run()"
    # The plain DELETE, pg_token_cleanup and a parallel run alternate REPEAT times (on 2 cores one
    # run varies by ±20%); then the rate-limited runs, pg_cron (which fires on a minute boundary) and
    # the naive loop.
    contenders = []
    for _ in range(REPEAT):
        contenders += [("plain DELETE", plain_delete, 15), (ours, token_cleanup_run, 15),
                       (PARALLEL, lambda: token_cleanup_run(parallel_workers=2), 15)]
    for limit in RATE_LIMITS:
        contenders.append((f"{ours}, max_rows_per_second {limit:,}",
                           lambda limit=limit: token_cleanup_run(limit), 15 + ROWS // 2 // limit))
    # About 100 MB of WAL per million rows deleted (see the WAL column).
    for limit in WAL_LIMITS:
        contenders.append((f"{ours}, max_wal_rate {limit:g} MB/s",
                           lambda limit=limit: token_cleanup_run(max_wal_rate=limit),
                           15 + int(ROWS / 1e4 / limit)))
    if YIELD:
        contenders.append((f"{ours}, yield_to_waiters", lambda: token_cleanup_run(yield_to_waiters=True), 15))
    contenders.append(("pg_cron running the plain DELETE", pg_cron_delete, None))
    if NAIVE:
        contenders.append(("naive ctid loop", naive_loop, 30 * max(1, ROWS // 2000000)))
    rows_a = []
    timelines = {}
    for name, purge, duration in contenders:
        fresh_table("source_a")
        matching = int(psql(f"SELECT count(*) FROM public.refresh_tokens WHERE {CONDITION}"))
        lsn = wal_lsn()
        if duration is None:
            # Start the workload IDLE_S seconds before the minute at which pg_cron fires.
            due = schedule_pg_cron()
            time.sleep(max(0.0, due - IDLE_S - time.time()))
            duration = IDLE_S + 15
        res, samples, t0, t1 = with_workload(duration, purge)
        if res.get("waited_for_minute"):
            t0 = res["started_epoch"]
            t1 = t0 + res["longest_batch_ms"] / 1000.0
        seconds = t1 - t0
        stats = latency_stats(samples, t0, t1)
        gone = matching - int(psql(f"SELECT count(*) FROM public.refresh_tokens WHERE {CONDITION}"))
        rows_a.append({"name": name, "table_rows": ROWS, "seconds": seconds, "inside_s": res.get("inside_s"),
                       "paused_s": res.get("paused_s"), "matching": matching, "deleted": gone,
                       "wal": wal_bytes(lsn), "longest_batch_ms": res["longest_batch_ms"], **stats})
        timelines.setdefault(name, (samples, t0, t1))
        print(f"  {name}: {seconds:.2f} s, {gone} rows, longest batch {res['longest_batch_ms']:.0f} ms, "
              f"p99 {stats['p99']:.1f} ms (idle {stats['idle_p99']:.1f} ms)", flush=True)
    results["A"] = rows_a
    results["A_timelines"] = timelines


# --- scenario B ---------------------------------------------------------------------------------

LAYOUT_NAMES = {"oldest": "oldest rows expired", "spread": "expired rows spread evenly"}


def scenario_b(results):
    rows_b = []
    for layout, size in [(l, n) for l in STEADY_LAYOUTS for n in STEADY_SIZES]:
        if layout == "oldest":
            make_source("source_b", size, oldest=STEADY_PURGEABLE)
        else:
            make_source("source_b", size, every=size // STEADY_PURGEABLE)
        timings = {}
        for name in ["pg_token_cleanup run()", "full-scan DELETE"]:
            fresh_table("source_b")
            matching = int(psql("SELECT count(*) FROM public.refresh_tokens WHERE expires_at < now()"))
            t0 = time.time()
            if name == "full-scan DELETE":
                psql("SET enable_indexscan = off; SET enable_bitmapscan = off; "
                     "DELETE FROM public.refresh_tokens WHERE expires_at < now()")
            else:
                psql("SELECT rows_deleted FROM token_cleanup.run('steady')")
            timings[name] = time.time() - t0
        rows_b.append({"layout": layout, "size": size, "purgeable": matching, **timings})
        print(f"  {layout}, {size} rows: {timings}", flush=True)
    results["B"] = rows_b


def scenario_b_rule():
    # An index on the expiry column; the condition uses only it, as steady-state rules do.
    psql("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) "
         "VALUES ('steady', 'public.refresh_tokens', 'expires_at < now()', '@yearly', 5000)")


# --- scenario C ---------------------------------------------------------------------------------

C_RULES = int(os.environ.get("C_RULES", "100000"))
C_DUE = int(os.environ.get("C_DUE", "10000"))  # of them due every minute in the last part
C_CHANGES = 20  # single-rule changes timed


def cpu_seconds(pid):
    """Time the process has spent on a CPU, in nanoseconds' precision (the first field of schedstat;
    /proc/<pid>/stat counts 10 ms ticks, too coarse for an idle scheduler)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def private_memory_kb(pid):
    """Memory the process has to itself (heap and palloc'd contexts; not shared buffers)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError(f"no RssAnon for {pid}")


def scheduler_pid():
    for _ in range(100):
        pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = 'bench'")
        if pid:
            return int(pid)
        time.sleep(0.1)
    raise RuntimeError("no scheduler in database bench")


def cpu_until_quiet(pid, since):
    """The scheduler's CPU from `since` (a cpu_seconds reading) until it stops working: a second in
    which it used less than 5 ms."""
    last = cpu_seconds(pid)
    while True:
        time.sleep(1)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return now - since
        last = now


def scenario_c(results):
    """The scheduler with C_RULES rules in one database: memory per rule, the cost of the first load and
    of one rule's change, idle CPU, and how late runs start with C_DUE of them due every minute."""
    psql("CREATE TABLE IF NOT EXISTS public.c_tokens (id bigint, user_id bigint, expires_at timestamptz)")
    psql("DELETE FROM token_cleanup.rules")
    psql("ALTER SYSTEM SET pg_token_cleanup.enabled = on")
    psql("SELECT pg_reload_conf()")
    pid = scheduler_pid()
    time.sleep(3)
    memory_empty = private_memory_kb(pid)
    # Due once a day, 12 hours from now: nothing falls due while the scheduler is watched idle.
    hour = (time.gmtime().tm_hour + 12) % 24
    cpu0, t0 = cpu_seconds(pid), time.time()
    psql(f"""INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
SELECT 'c_' || i, 'public.c_tokens', 'user_id = ' || i || ' AND expires_at < now()',
       '0 ' || (i % 60) || ' {hour} * * *' FROM generate_series(1, {C_RULES}) i""")
    insert_s = time.time() - t0
    load_s = cpu_until_quiet(pid, cpu0)
    memory_full = private_memory_kb(pid)
    per_rule = (memory_full - memory_empty) * 1024 / C_RULES
    print(f"  {C_RULES:,} rules inserted in {insert_s:.1f} s; first load {load_s * 1000:.0f} ms of the "
          f"scheduler's CPU; {per_rule:.0f} bytes per rule", flush=True)

    cpu0, t0 = cpu_seconds(pid), time.time()
    time.sleep(60)
    idle_rate = (cpu_seconds(pid) - cpu0) / (time.time() - t0)
    print(f"  idle: {idle_rate * 100:.4f}% of a core", flush=True)

    # One rule changes at a time: what the reload costs the scheduler (its CPU over the 1.5 s that
    # follow, less what it spends idle), and whether the change reached it (its next run moves).
    change_ms = []
    for k in range(C_CHANGES):
        cpu0 = cpu_seconds(pid)
        psql(f"UPDATE token_cleanup.rules SET schedule = '{k} 30 {hour} * * *' WHERE name = 'c_{1 + k * 4999 % C_RULES}'")
        time.sleep(1.5)
        change_ms.append(max(0.0, cpu_seconds(pid) - cpu0 - idle_rate * 1.5) * 1000)
    print(f"  one rule changed: reload {statistics.median(change_ms):.1f} ms median, "
          f"{max(change_ms):.1f} ms max of the scheduler's CPU", flush=True)

    # C_DUE of them due every minute, spread over the seconds, for two minutes.
    psql(f"UPDATE token_cleanup.rules SET schedule = (split_part(name, '_', 2)::int % 60) || ' * * * * *' "
         f"WHERE split_part(name, '_', 2)::int <= {C_DUE}")
    mark = time.time()
    cpu0 = cpu_seconds(pid)
    time.sleep(125)
    busy_rate = (cpu_seconds(pid) - cpu0) / (time.time() - mark)
    delays = psql(f"SELECT extract(epoch FROM started_at - scheduled_for) FROM token_cleanup.runs "
                  f"WHERE trigger = 'schedule' AND started_at > to_timestamp({mark + 5})").split()
    delays = [float(d) * 1000 for d in delays]
    psql("ALTER SYSTEM SET pg_token_cleanup.enabled = off")
    psql("SELECT pg_reload_conf()")
    results["C"] = {"rules": C_RULES, "due_per_minute": C_DUE, "insert_s": insert_s, "load_ms": load_s * 1000,
                    "bytes_per_rule": per_rule, "idle_cpu_pct": idle_rate * 100,
                    "change_ms_median": statistics.median(change_ms), "change_ms_max": max(change_ms),
                    "busy_cpu_pct": busy_rate * 100, "runs": len(delays), "p50": percentile(delays, 50),
                    "p99": percentile(delays, 99), "max": max(delays) if delays else float("nan"),
                    "delays": delays}
    print(f"  {len(delays)} runs, start delay p50 {results['C']['p50']:.0f} ms, p99 {results['C']['p99']:.0f} ms, "
          f"max {results['C']['max']:.0f} ms; scheduler {busy_rate * 100:.1f}% of a core", flush=True)


# --- report ---------------------------------------------------------------------------------------

def charts(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    if "A_timelines" in results:
        names = list(results["A_timelines"])
        fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.4 * len(names)), sharey=True)
        for ax, name in zip(axes, names):
            samples, t0, t1 = results["A_timelines"][name]
            base = samples[0][0] if samples else t0
            ax.plot([t - base for t, _ in samples], [l for _, l in samples], ".", markersize=1.5)
            ax.axvspan(t0 - base, t1 - base, color="orange", alpha=0.25, label="purge")
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("latency (ms)")
            ax.set_yscale("log")
        axes[-1].set_xlabel("seconds since the workload started")
        fig.tight_layout()
        fig.savefig(img / "purge_latency_timeline.png", dpi=110)
        plt.close(fig)
    if "A" in results and any(r["name"].startswith("pg_token_cleanup run(), ") for r in results["A"]):
        fig, ax = plt.subplots(figsize=(7, 4))
        series = [("no pacing", lambda n: n == "pg_token_cleanup run()", "o"),
                  ("max_rows_per_second", lambda n: "max_rows_per_second" in n, "s-"),
                  ("max_wal_rate", lambda n: "max_wal_rate" in n, "^-"),
                  ("yield_to_waiters", lambda n: "yield_to_waiters" in n, "D"),
                  ("plain DELETE", lambda n: n == "plain DELETE", "x")]
        for label, match, style in series:
            rs = sorted((r for r in results["A"] if match(r["name"])), key=lambda r: r["seconds"])
            if rs:
                ax.plot([r["seconds"] for r in rs], [r["p99"] / r["idle_p99"] for r in rs], style, label=label)
                for r in rs:
                    if ", " in r["name"]:
                        ax.annotate(r["name"].split(", ", 1)[1].split(" ", 1)[-1], (r["seconds"], r["p99"] / r["idle_p99"]),
                                    fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.axhline(1.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("purge time (s)")
        ax.set_ylabel("workload p99 during the purge / idle p99")
        ax.set_title("Pacing a run: the workload's p99 against the purge's time", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img / "pacing.png", dpi=110)
        plt.close(fig)
    if "B" in results:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for layout in STEADY_LAYOUTS:
            rows = [r for r in results["B"] if r["layout"] == layout]
            for name in ["pg_token_cleanup run()", "full-scan DELETE"]:
                ax.plot([r["size"] / 1e6 for r in rows], [r[name] for r in rows], "o-",
                        label=f"{name}, {LAYOUT_NAMES[layout]}")
        ax.set_xlabel("table size (million rows)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{STEADY_PURGEABLE:,} purgeable rows at every size")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img / "steady_state.png", dpi=110)
        plt.close(fig)
    if "C" in results and results["C"]["delays"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(results["C"]["delays"], bins=50)
        ax.set_xlabel("start delay (ms): started_at - due time")
        ax.set_ylabel("runs")
        ax.set_title(f"{results['C'].get('rules', 10000):,} rules, {results['C'].get('due_per_minute', 1000):,} due every minute")
        fig.tight_layout()
        fig.savefig(img / "start_delay.png", dpi=110)
        plt.close(fig)


def report_a(runs, measured, title, timeline=True):
    """Scenario A's section (or a larger variant's)."""
    lines = []
    plain = [r for r in runs if r["name"] == "plain DELETE"]
    ours = [r for r in runs if r["name"] == "pg_token_cleanup run()"]
    base = statistics.median(r["seconds"] for r in plain)
    rows = runs[0].get("table_rows", DEFAULT_ROWS)
    repeat = len(ours)
    lines += [f"## {title}: {rows:,} rows, half of them `{CONDITION}`", "",
              f"Each contender on a fresh copy of the same table (indexes on `expires_at` and `user_id`), while "
              f"pgbench runs a token-refresh workload at {RATE} transactions/s (revoke one live token of a random "
              "user, insert a new one). Latency is that workload's, during the purge, against its idle baseline "
              f"(the {IDLE_S} s before the purge). Batch size {BATCH} for the batched contenders. The plain DELETE "
              f"and pg_token_cleanup ran {repeat} times each, alternating; ratios are to the plain DELETE's median "
              f"time ({base:.2f} s). A pg_token_cleanup time is `token_cleanup.run()`'s, as the caller sees it: it "
              "includes starting the background worker and recording the run; \"the run itself\" is "
              "`finished_at - started_at` of its record.", "",
              measured, "", "### Medians of the repeated runs", "",
              "| contender | runs | time (s) | × plain DELETE | longest batch (ms) | workload p99 × idle p99 |",
              "|---|---:|---:|---:|---:|---:|"]
    parallel = [r for r in runs if r["name"] == PARALLEL]
    for name, group in [("plain DELETE", plain), ("pg_token_cleanup run()", ours), (PARALLEL, parallel)]:
        if group:
            t = statistics.median(r["seconds"] for r in group)
            lines.append(f"| {name} | {len(group)} | {t:.2f} | {t / base:.2f} | "
                         f"{statistics.median(r['longest_batch_ms'] for r in group):.0f} | "
                         f"{statistics.median(r['p99'] / r['idle_p99'] for r in group):.2f} |")
    lines += ["", "### Every run", "",
              "| contender | time (s) | × plain DELETE | of which the run itself (s) | rows deleted | rows/s | WAL | longest batch (ms) | workload p50 / p99 / max (ms) | idle p99 (ms) | p99 × idle |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in runs:
        inside = f"{r['inside_s']:.2f}" if r.get("inside_s") is not None else ""
        lines.append(
            f"| {r['name']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {inside} | {r['deleted']:,} | "
            f"{r['deleted'] / r['seconds']:,.0f} | "
            f"{r['wal'] / 2**20:.0f} MB | {r['longest_batch_ms']:.0f} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | "
            f"{r['idle_p99']:.1f} | {r['p99'] / r['idle_p99']:.2f} |")
    lines += ["", "![latency timeline](img/purge_latency_timeline.png)", ""] if timeline else [""]
    return lines


def report_pacing(runs):
    """The workload's p99 against the purge's time, for each way of pacing a run."""
    unpaced = [r for r in runs if r["name"] == "pg_token_cleanup run()"]
    paced = [r for r in runs if r["name"].startswith("pg_token_cleanup run(), ")]
    if not paced:
        return []
    lines = ["### Pacing: the workload's p99 against the purge's time", "",
             "Each way of pacing a run, on the same table under the same workload: a blind rate "
             "(`max_rows_per_second`), a WAL rate (`max_wal_rate`, MB/s averaged over the last second), and "
             "giving way to sessions that wait on the run's locks (`yield_to_waiters`). The workload's p99 is "
             "divided by its own idle p99 of the 5 s before (the machine's noise differs between runs).", "",
             "![pacing](img/pacing.png)", "",
             "| run | time (s) | paused (s) | workload p99 (ms) | p99 × idle |", "|---|---:|---:|---:|---:|"]
    for r in unpaced + paced:
        paused = f"{r['paused_s']:.2f}" if r.get("paused_s") is not None else ""
        lines.append(f"| {r['name']} | {r['seconds']:.2f} | {paused} | {r['p99']:.1f} | {r['p99'] / r['idle_p99']:.2f} |")
    return lines + [""]


def a_variants(results):
    """Larger runs of scenario A recorded beside it (`ROWS=20000000` gives `A20M`)."""
    return sorted(k for k in results if k.startswith("A") and k.endswith("M") and k[1:-1].isdigit())


def report(results):
    lines = ["# Benchmarks", "",
             f"Generated by `bash bench/run.sh` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}, "
             "PostgreSQL 15, the extension built in release mode. Every comparison ran side by side in one "
             "invocation on one cluster; rerun it to check. Each scenario names the commit it was measured at "
             "(`SKIP` reruns some scenarios and keeps the others' figures from `bench/out/benchmarks.json`, which is not committed).", ""]
    def measured(scenario):
        w = results.get(f"{scenario}_with", {})
        return f"_Measured at commit {w.get('commit', '?')}, {w.get('date', '?')}._"

    if "A" in results:
        lines += report_a(results["A"], measured("A"), "A. Bulk purge")
        lines += report_pacing(results["A"])
    for variant in a_variants(results):
        lines += report_a(results[variant], measured(variant), f"{variant}. The bulk purge of A, larger, run once",
                          timeline=False)
    if "B" in results:
        lines += [f"## B. Steady state: {STEADY_PURGEABLE:,} purgeable rows in tables of growing size", "",
                  "Index on `expires_at`; rule condition `expires_at < now()`. The full-scan DELETE is the same "
                  "DELETE with index scans disabled. Two layouts: the oldest tokens expired (they expire in about "
                  "the order they were issued, so expired rows share pages), and expired rows spread evenly over the "
                  "table (one in every N rows: the worst case, one expired row per page at 10M rows).", "",
                  measured("B"), "",
                  "| layout | table rows | purgeable | pg_token_cleanup run() (s) | full-scan DELETE (s) | ratio |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in results["B"]:
            ours, full = r["pg_token_cleanup run()"], r["full-scan DELETE"]
            lines.append(f"| {LAYOUT_NAMES[r['layout']]} | {r['size']:,} | {r['purgeable']:,} | {ours:.2f} | {full:.2f} | {ours / full:.2f} |")
        lines += ["", "![steady state](img/steady_state.png)", ""]
    if "C" in results:
        c = results["C"]
        rules, due = c.get("rules", 10000), c.get("due_per_minute", 1000)
        lines += [f"## C. Scheduler: {rules:,} rules", "", measured("C"), ""]
        if "bytes_per_rule" in c:
            lines += [f"- {rules:,} rules inserted (each validated by the rules trigger) in {c['insert_s']:.1f} s; the "
                      f"scheduler's first load of them took {c['load_ms']:.0f} ms of its CPU, and its private memory "
                      f"grew by **{c['bytes_per_rule']:.0f} bytes per rule**.",
                      f"- A reload after one rule changed: **{c['change_ms_median']:.1f} ms** of the scheduler's CPU "
                      f"(median of {C_CHANGES}, max {c['change_ms_max']:.1f} ms): it reads each rule's version and "
                      f"loads only the changed one."]
        lines += [f"- CPU of the scheduler over 60 s with {rules:,} enabled rules and none due: "
                  f"**{c['idle_cpu_pct']:.3f}%** of one core.",
                  f"- Start delay (due time to start) with {due:,} of them due every minute, over two minutes: "
                  f"{c['runs']} runs, p50 {c['p50']:.0f} ms, p99 {c['p99']:.0f} ms, max {c['max']:.0f} ms"
                  + (f"; the scheduler used {c['busy_cpu_pct']:.1f}% of a core." if "busy_cpu_pct" in c else "."),
                  "", "![start delay](img/start_delay.png)", ""]
    lines += targets(results)
    lines += included_reports()
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines) + "\n")


# The reports of the other scripts bench/run.sh runs before this one, as letter, file, title.
INCLUDED = [("S", "scale.md", "Scale: one run and a parallel run against one plain DELETE, 2M and 20M rows"),
            ("D", "overhead.md", "Where a run's time goes, next to the plain DELETE"),
            ("E", "offcpu.md", "Where a run's off-CPU time goes"),
            ("F", "oncpu.md", "Where a run's CPU time goes"),
            ("G", "replica_lag.md", "Replica lag during a purge")]


def included_reports():
    """docs/overhead.md, offcpu.md, oncpu.md and replica_lag.md, one level down, so that every
    figure of a `bash bench/run.sh` is in this one file (each keeps its own file too)."""
    lines = []
    for letter, name, title in INCLUDED:
        path = ROOT / "docs" / name
        if not path.exists():
            continue
        body = path.read_text().split("\n")
        if body and body[0].startswith("# "):
            body = body[1:]
        lines += [f"## {letter}. {title}", "", f"_From [{name}]({name})._"]
        lines += [("#" + l) if l.startswith("#") else l for l in body]
    return lines


def targets(results):
    """The targets of issues 4 and 13 against this run's figures (the commentary is in docs/performance.md)."""
    rows = []

    def row(target, measured, met):
        rows.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")

    if "A" in results:
        runs = results["A"]
        plain = statistics.median(r["seconds"] for r in runs if r["name"] == "plain DELETE")
        ours = [r for r in runs if r["name"] == "pg_token_cleanup run()"]
        if ours:
            ratio = statistics.median(r["seconds"] for r in ours) / plain
            row("A: a run takes ≤ 1.3× one plain DELETE", f"{ratio:.2f}× (medians of {len(ours)} runs each)", ratio <= 1.3)
            longest = max(r["longest_batch_ms"] for r in ours)
            row("A: no batch holds its locks > 100 ms", f"longest batch {longest:.0f} ms over {len(ours)} runs", longest <= 100)
            p99 = statistics.median(r["p99"] / r["idle_p99"] for r in ours)
            row("A: workload p99 during the purge ≤ 1.5× idle p99", f"{p99:.2f}× (median of {len(ours)} runs)", p99 <= 1.5)
        paced = [r for r in runs if r["name"].startswith("pg_token_cleanup run(), ")]
        both = [r for r in paced if r["seconds"] / plain <= 1.3 and r["p99"] / r["idle_p99"] <= 1.5]
        if paced:
            row("A: both at once, with pacing", ", ".join(r["name"].split(", ")[1] for r in both) or "no pacing tried met both",
                bool(both))
    for variant in ["A", *a_variants(results)]:
        runs = results.get(variant)
        if not runs:
            continue
        plain = [r for r in runs if r["name"] == "plain DELETE"]
        ours = [r for r in runs if r["name"] == "pg_token_cleanup run()"]
        parallel = [r for r in runs if r["name"] == PARALLEL]
        if plain and ours and parallel:
            base = statistics.median(r["seconds"] for r in plain)
            ratio = statistics.median(r["seconds"] for r in parallel) / base
            # Issue 24's 0.8× is without a workload (S); beside one, on 2 cores, shown for what it costs.
            row(f"{variant} (beyond 24's target, which is without a workload): a run with parallel_workers = 2 "
                "≤ 0.8× the plain DELETE under the workload",
                f"{ratio:.2f}× (medians of {len(parallel)} runs each)", ratio <= 0.8)
            # The workload's p99 against its own idle p99 of the seconds before (the machine's noise
            # differs between runs), as everywhere in this report; the raw medians beside it.
            delete_p99 = statistics.median(r["p99"] / r["idle_p99"] for r in plain)
            delete_raw = statistics.median(r["p99"] for r in plain)
            for name, group in [("a run", ours), ("a parallel run", parallel)]:
                p99 = statistics.median(r["p99"] / r["idle_p99"] for r in group)
                raw = statistics.median(r["p99"] for r in group)
                row(f"{variant} (24): the workload's p99 (× its idle p99) during {name} ≤ during the plain DELETE",
                    f"{p99:.2f}× against {delete_p99:.2f}× ({raw:.1f} ms against {delete_raw:.1f} ms; medians)",
                    p99 <= delete_p99)
    if "B" in results:
        spread = sorted((r for r in results["B"] if r["layout"] == "spread"), key=lambda r: r["size"])
        for r in spread:
            if r["size"] >= 10000000:
                ratio = r["pg_token_cleanup run()"] / r["full-scan DELETE"]
                row(f"B (24): spread-out expiry at {r['size'] // 1000000}M rows no slower than the full-scan DELETE",
                    f"{ratio:.2f}× ({r['pg_token_cleanup run()']:.2f} s against {r['full-scan DELETE']:.2f} s)", ratio <= 1.0)
        for layout in STEADY_LAYOUTS:
            rs = sorted((r for r in results["B"] if r["layout"] == layout), key=lambda r: r["size"])
            if len(rs) >= 2:
                grow = rs[-1]["pg_token_cleanup run()"] / rs[0]["pg_token_cleanup run()"]
                size = rs[-1]["size"] / rs[0]["size"]
                full = rs[-1]["full-scan DELETE"] / rs[0]["full-scan DELETE"]
                row(f"B: run time ∝ rows deleted, not table size ({LAYOUT_NAMES[layout]})",
                    f"table ×{size:.0f}: run time ×{grow:.1f} (full scan ×{full:.1f})", grow <= 2)
    if "C" in results:
        c = results["C"]
        row(f"C: scheduler idle CPU < 0.1% of a core ({c.get('rules', 10000):,} rules)", f"{c['idle_cpu_pct']:.3f}%", c["idle_cpu_pct"] < 0.1)
        row("C: start delay p99 < 1 s", f"p99 {c['p99']:.0f} ms, max {c['max']:.0f} ms", c["p99"] < 1000)
        if "change_ms_max" in c:
            row("C: a reload after one rule changed < 1 s", f"{c['change_ms_max']:.0f} ms (max of {C_CHANGES})",
                c["change_ms_max"] < 1000)
    # Issue 24's targets without a workload, from bench/scale.sh's report (medians; ratio column 2).
    for size, side, limit in [("20,000,000", "run(), one runner", 1.2), ("20,000,000", "run(), parallel_workers = 2", 0.8)]:
        ratio = scale_ratio(size, side)
        if ratio is not None:
            row(f"S (24): {side} at {size} rows without a workload ≤ {limit}× the plain DELETE", f"{ratio:.2f}×", ratio <= limit)
    # Issue 13's targets measured by the scripts bench/run.sh runs before this one, from their reports.
    walk = report_cell("overhead.md", "PL/pgSQL walk, same batches", 1)
    run = report_cell("overhead.md", "pg_token_cleanup run(), wal_compression = server", 1)
    if walk and run:
        row("D: run() ≤ 1.1× the PL/pgSQL walk under the workload (both with the server's wal_compression)",
            f"{run / walk:.2f}× ({run:.2f} s against {walk:.2f} s, medians)", run / walk <= 1.1)
    paced = report_cell("replica_lag.md", "run(), max_replica_lag = 1 s", 3)
    plain = report_cell("replica_lag.md", "plain DELETE", 3)
    if paced and plain:
        row("G: with max_replica_lag = 1 s a standby's lag stays < 1.5 s (replaying at a twentieth of its speed)",
            f"max lag {paced:.2f} s (the plain DELETE: {plain:.2f} s)", paced < 1.5)
    if not rows:
        return []
    return ["## Against the targets (issues 4, 13 and 24)", "",
            "Judged by this run's figures. What each design choice bought, and why a target is missed where "
            "it is, is in [performance.md](performance.md).", "",
            "| target | measured | met? |", "|---|---|---|", *rows, ""]


def scale_ratio(rows, side):
    """The × plain DELETE of docs/scale.md's row for `rows` and `side`; None if there is none."""
    path = ROOT / "docs" / "scale.md"
    if not path.exists():
        return None
    for line in path.read_text().split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] == rows and cells[1] == side:
            return float(cells[3].rstrip("×"))
    return None


def report_cell(name, row_start, column):
    """The number in column `column` (1: the first after the row's name) of the row of docs/`name`
    whose first cell starts with `row_start`; None if there is none."""
    path = ROOT / "docs" / name
    if not path.exists():
        return None
    for line in path.read_text().split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > column and cells[0].startswith(row_start):
            try:
                return float(cells[column])
            except ValueError:
                return None
    return None


# Kept between runs for SKIP, not committed (a cache of figures, not documentation).
SAVED = ROOT / "bench" / "out" / "benchmarks.json"


def measured_with():
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "sql"],
                           capture_output=True, text=True).stdout.strip()
    return {"commit": commit + ("+changes" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def keep(results):
    """Saves this run's figures (all but the latency samples) with the commit they were measured
    at, and fills in skipped scenarios from the previous save, so `SKIP=BC` reruns A alone."""
    import json
    saved = json.loads(SAVED.read_text()) if SAVED.exists() else {}
    for scenario in ["A", "B", "C", *a_variants({**saved, **results})]:
        if scenario in results:
            saved[scenario] = {"results": results[scenario], **results[f"{scenario}_with"]}
        elif scenario in saved:
            results[scenario] = saved[scenario]["results"]
            results[f"{scenario}_with"] = {k: saved[scenario][k] for k in ("commit", "date")}
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    SAVED.write_text(json.dumps(saved, indent=1) + "\n")


def main():
    results = {}
    start_cluster()
    try:
        if "A" not in SKIP:
            print("==> A: bulk purge under a token-refresh workload", flush=True)
            scenario_a(results)
            results["A_with"] = measured_with()
            if ROWS != DEFAULT_ROWS:
                # Recorded beside scenario A, not instead of it.
                variant = f"A{ROWS // 1000000}M"
                results[variant], results[f"{variant}_with"] = results.pop("A"), results.pop("A_with")
                results.pop("A_timelines")
        if "B" not in SKIP:
            print("==> B: steady state", flush=True)
            psql("DELETE FROM token_cleanup.rules")
            make_source("source_b", STEADY_SIZES[0], every=STEADY_PURGEABLE and STEADY_SIZES[0] // STEADY_PURGEABLE)
            fresh_table("source_b")
            scenario_b_rule()
            scenario_b(results)
            results["B_with"] = measured_with()
        if "C" not in SKIP:
            print(f"==> C: scheduler with {C_RULES:,} rules", flush=True)
            scenario_c(results)
            results["C_with"] = measured_with()
    finally:
        stop_cluster()
    keep(results)
    charts(results)
    report(results)
    print((ROOT / "docs" / "benchmarks.md").read_text())


if __name__ == "__main__":
    main()
