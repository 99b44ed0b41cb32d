#!/usr/bin/env python3
"""Purging a Citus distributed table, side by side (writes docs/citus_benchmark.md): a coordinator
and two workers on this machine (Citus 13.2.2, PostgreSQL 15, built by scripts/citus.sh), a
hash-distributed token table of ROWS rows (default 1,000,000; 32 shards), half of them expired.
Each contender purges a fresh copy of the same table (copied shard to shard, analyzed), once right
after a checkpoint on every node and once without one, REPEAT times (default 2), the contenders
alternating:

- the plain distributed DELETE on the coordinator (one statement; Citus deletes on every shard at
  once and commits on both workers in two phases);
- the same DELETE as a pg_cron job (pg_cron 1.4 from Debian, which schedules by the minute: the job
  is scheduled for the next minute and timed by its own start and end in cron.job_run_details);
- the hand-written loop `DELETE … WHERE id IN (SELECT id … LIMIT 10000)` until nothing is left;
- a pg_token_cleanup run (`token_cleanup.run()`, default batch size 5,000).

For each: the wall time, the rows deleted, and the longest batch (the loop's longest statement; the
plain DELETE is one batch; a run's longest shard batch). Run `bash bench/citus.sh`.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ["CITUS_BIN"]  # set by bench/citus.sh
DIR = Path("/tmp/pg_token_cleanup_citus_bench")
PORTS = [54340, 54341, 54342]  # coordinator, workers
ROWS = int(os.environ.get("ROWS", "1000000"))
REPEAT = int(os.environ.get("REPEAT", "2"))
LOOP_LIMIT = 10000
CONDITION = "expires_at < now()"


def as_postgres(args):
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def psql(sql, port=PORTS[0], db="bench"):
    out = subprocess.run(
        [f"{BIN}/psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
         "-d", db, "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}\n{sql}")
    return out.stdout.strip()


def start():
    stop()
    subprocess.run(["rm", "-rf", str(DIR)], check=True)
    DIR.mkdir(parents=True)
    if os.geteuid() == 0:
        subprocess.run(["chown", "postgres", str(DIR)], check=True)
    for port in PORTS:
        data = DIR / str(port)
        subprocess.run(as_postgres([f"{BIN}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, capture_output=True)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"""
port = {port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{DIR}'
shared_preload_libraries = 'citus,pg_cron,pg_token_cleanup'
cron.database_name = 'bench'
cron.use_background_workers = on
shared_buffers = '512MB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
pg_token_cleanup.enabled = off
pg_token_cleanup.statement_timeout = 0
""")
        subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", str(data), "-l", str(DIR / f"{port}.log"),
                                    "-w", "start"]), check=True, capture_output=True)
        psql("CREATE DATABASE bench", port=port, db="postgres")
        psql("CREATE EXTENSION citus", port=port)
    psql(f"SELECT citus_set_coordinator_host('127.0.0.1', {PORTS[0]})")
    for port in PORTS[1:]:
        psql(f"SELECT citus_add_node('127.0.0.1', {port})")
    psql("CREATE EXTENSION pg_token_cleanup")
    psql("CREATE EXTENSION pg_cron")
    psql(f"""
CREATE TABLE source (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL);
SELECT create_distributed_table('source', 'id');
INSERT INTO source SELECT g, g % 100000,
       CASE WHEN g % 2 = 0 THEN now() - interval '1 day' ELSE now() + interval '30 days' END
  FROM generate_series(1, {ROWS}) g;
""")


def stop():
    for port in PORTS:
        subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", str(DIR / str(port)), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


def fresh_copy(checkpoint):
    """tokens: a copy of source, co-located with it (copied shard to shard on the workers); with
    `checkpoint`, a checkpoint on every node after it, so that the purge's first change to each page
    writes a full-page image, as the first purge after a checkpoint does."""
    psql("""
DROP TABLE IF EXISTS tokens;
CREATE TABLE tokens (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL);
SELECT create_distributed_table('tokens', 'id', colocate_with => 'source');
INSERT INTO tokens SELECT * FROM source;
ANALYZE tokens;
""")
    if checkpoint:
        psql("SELECT run_command_on_all_nodes('CHECKPOINT')")


def timed(sql):
    begun = time.time()
    out = psql(sql)
    return time.time() - begun, out


def plain_delete():
    # Rows counted before and after, untimed: RETURNING would ship every deleted row to the client.
    before = int(psql("SELECT count(*) FROM tokens"))
    seconds, _ = timed(f"DELETE FROM tokens WHERE {CONDITION}")
    rows = before - int(psql("SELECT count(*) FROM tokens"))
    return {"seconds": seconds, "rows": rows, "longest_ms": seconds * 1000}


def pg_cron():
    before = int(psql("SELECT count(*) FROM tokens"))
    psql("DELETE FROM cron.job_run_details; SELECT cron.unschedule(jobid) FROM cron.job;")
    due = (int(time.time()) // 60 + 1) * 60
    if due - time.time() < 3:
        due += 60
    psql(f"SELECT cron.schedule('purge', '{time.gmtime(due).tm_min} * * * *', "
         f"$$DELETE FROM tokens WHERE {CONDITION}$$)")
    while True:
        row = psql("SELECT status, extract(epoch FROM end_time - start_time) FROM cron.job_run_details "
                   "WHERE status IN ('succeeded', 'failed')")
        if row:
            break
        time.sleep(0.2)
    psql("SELECT cron.unschedule('purge')")
    status, seconds = row.split("|")
    assert status == "succeeded", row
    rows = before - int(psql("SELECT count(*) FROM tokens"))
    return {"seconds": float(seconds), "rows": rows, "longest_ms": float(seconds) * 1000}


def loop():
    rows, longest, begun = 0, 0.0, time.time()
    while True:
        seconds, out = timed(f"WITH d AS (DELETE FROM tokens WHERE id IN "
                             f"(SELECT id FROM tokens WHERE {CONDITION} LIMIT {LOOP_LIMIT}) RETURNING 1) "
                             f"SELECT count(*) FROM d")
        longest = max(longest, seconds * 1000)
        if int(out) == 0:
            break
        rows += int(out)
    return {"seconds": time.time() - begun, "rows": rows, "longest_ms": longest}


def run():
    psql("DELETE FROM token_cleanup.rules; DELETE FROM token_cleanup.runs;")
    psql(f"INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) "
         f"VALUES ('bench', 'tokens', '{CONDITION}', '@yearly')")
    seconds, out = timed("SELECT run_id, rows_deleted FROM token_cleanup.run('bench')")
    run_id, rows = out.split("|")
    longest = psql(f"SELECT longest_batch_ms FROM token_cleanup.runs WHERE id = {run_id}")
    return {"seconds": seconds, "rows": int(rows), "longest_ms": float(longest)}


CONTENDERS = [
    ("plain distributed DELETE", plain_delete),
    ("the same DELETE run by pg_cron", pg_cron),
    (f"loop: DELETE … WHERE id IN (SELECT id … LIMIT {LOOP_LIMIT})", loop),
    ("pg_token_cleanup run()", run),
]


MODES = [("after a checkpoint", True), ("no checkpoint since the copy", False)]


def main():
    start()
    try:
        shards = psql("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'source'::regclass")
        results = {(mode, name): [] for mode, _ in MODES for name, _ in CONTENDERS}
        for repeat in range(REPEAT):
            for mode, checkpoint in MODES:
                for name, purge in CONTENDERS:
                    fresh_copy(checkpoint)
                    result = purge()
                    left = int(psql(f"SELECT count(*) FROM tokens WHERE {CONDITION}"))
                    assert left == 0 and result["rows"] == ROWS // 2, (name, result, left)
                    print(f"{repeat + 1}/{REPEAT} {mode}: {name}: {result}", file=sys.stderr)
                    results[(mode, name)].append(result)
    finally:
        stop()
    lines = [
        "# Purging a Citus distributed table",
        "",
        "Written by `bash bench/citus.sh` (bench/citus.py); do not edit. A coordinator and two workers on",
        f"one 2-core machine, Citus 13.2.2 on PostgreSQL 15, a hash-distributed table of {ROWS:,} rows in",
        f"{shards} shards, half of them expired; each purge on a fresh copy, medians of {REPEAT} alternating runs.",
        "A run's batches compress their full-page images (pg_token_cleanup.wal_compression, lz4); the",
        "plain DELETE and the loop write them as the server is set (wal_compression off, the default).",
        "",
        "| | time | × plain DELETE | rows deleted | longest batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, _ in MODES:
        plain = statistics.median(r["seconds"] for r in results[(mode, CONTENDERS[0][0])])
        lines.append(f"| **{mode}** | | | | |")
        for name, _ in CONTENDERS:
            runs = results[(mode, name)]
            seconds = statistics.median(r["seconds"] for r in runs)
            longest = statistics.median(r["longest_ms"] for r in runs)
            lines.append(f"| {name} | {seconds:.2f} s | {seconds / plain:.2f}× | {runs[0]['rows']:,} "
                         f"| {longest:.0f} ms |")
    lines += [
        "",
        "The plain DELETE holds every matching row's lock on every shard until its two-phase commit; a",
        "run's batches are local transactions on the workers, each at most 5,000 rows.",
        "",
    ]
    (ROOT / "docs" / "citus_benchmark.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
