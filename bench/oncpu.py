#!/usr/bin/env python3
"""Where a run's CPU time goes (writes docs/oncpu.md): the purges of bench/offcpu.py (a
pg_token_cleanup run() in its runner worker, and the same table walk in PL/pgSQL in a client
backend, under scenario A's token-refresh workload), each sampled by `perf record -e cpu-clock`
(a software clock: this machine kind has no hardware counters) at FREQ Hz, REPEAT times each way.
The report puts the milliseconds of CPU per purge in each function side by side, so that what the
worker does beyond the walk shows as the rows where the two differ.

Run `bash bench/run.sh` once first (it installs what the benchmarks need); this installs Debian's
linux-perf itself. Then `python3 bench/oncpu.py`.
"""

import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402
import offcpu  # noqa: E402

FREQ = int(os.environ.get("FREQ", "4000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
TOP = 25


def ensure_perf():
    if subprocess.run(["which", "perf"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "linux-perf"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def create_walk_returning_procedure():
    """The walk of bench.create_walk_procedure with `RETURNING ctid` on each DELETE (results
    discarded), as a run's batches have it: what that clause alone costs."""
    b.psql(f"""CREATE PROCEDURE walk_returning(pages int) LANGUAGE plpgsql AS $$
DECLARE n int := pg_relation_size('public.refresh_tokens') / current_setting('block_size')::int; p int := 0;
BEGIN
  WHILE p < n LOOP
    SET LOCAL synchronous_commit = off;
    EXECUTE format('DELETE FROM public.refresh_tokens WHERE ctid >= %L::tid AND ctid < %L::tid AND ({b.CONDITION}) RETURNING ctid',
                   '(' || p || ',0)', '(' || (p + pages) || ',0)');
    COMMIT;
    p := p + pages;
  END LOOP;
END $$""")


def walk_returning_purge():
    b.psql(f"SET enable_seqscan = off; CALL walk_returning({offcpu.PAGES_PER_BATCH})")


def profile(pid_query, purge, out):
    """Runs purge() in a thread, finds the purging process and samples it until the purge ends.
    Returns the wall time and the samples per symbol."""
    thread = threading.Thread(target=purge)
    t0 = time.time()
    thread.start()
    pid = offcpu.find_pid(pid_query)
    recorder = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-p", str(pid),
                                 "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    thread.join()
    wall = time.time() - t0
    recorder.send_signal(2)
    recorder.wait(timeout=30)
    report = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "--no-children", "-F",
                             "sample,dso,symbol", "-t", "\t"], capture_output=True, text=True).stdout
    samples = collections.Counter()
    for line in report.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) >= 3 and parts[0].isdigit():
            dso = Path(parts[1]).name
            samples[f"{parts[2].removeprefix('[.] ').removeprefix('[k] ')} ({dso})"] += int(parts[0])
    return wall, samples


def main():
    ensure_perf()
    offcpu.ensure_wait_sampling()
    offcpu.start()
    create_walk_returning_procedure()
    contenders = [("pg_token_cleanup run() (runner worker, wal_compression = server, off as for the walks)", q, p, s)
                  for name, q, p, s in offcpu.CONTENDERS if "= server" in name]
    contenders += [c for c in offcpu.CONTENDERS if c[0].startswith("PL/pgSQL")] + [
        ("PL/pgSQL walk with RETURNING ctid, as run() batches (client backend)",
         "query LIKE '%CALL walk_returning%' AND pid <> pg_backend_pid()", walk_returning_purge, lambda: None)]
    totals = {name: collections.Counter() for name, *_ in contenders}
    walls = {name: [] for name, *_ in contenders}
    try:
        b.make_source("source_a", b.ROWS)
        b.fresh_table("source_a")
        b.psql(f"INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) "
               f"VALUES ('bench', 'public.refresh_tokens', '{b.CONDITION}', '@yearly', {b.BATCH})")
        for i in range(REPEAT):
            for name, query, purge, setup in contenders:
                setup()
                b.fresh_table("source_a")
                box = []
                b.with_workload(15, lambda q=query, p=purge: box.append(
                    profile(q, p, b.DIR / f"perf-{len(walls[name])}.data")))
                wall, samples = box[0]
                walls[name].append(wall)
                totals[name].update(samples)
                print(f"  {name}: {wall:.2f} s, {sum(samples.values()) / FREQ:.2f} s of CPU sampled", flush=True)
    finally:
        b.stop_cluster()
    report(contenders, totals, walls)


def report(contenders, totals, walls):
    names = [name for name, *_ in contenders]
    ms = {name: {sym: n * 1000 / FREQ / REPEAT for sym, n in totals[name].items()} for name in names}
    symbols = sorted(set().union(*ms.values()), key=lambda s: -max(ms[n].get(s, 0) for n in names))[:TOP]
    lines = ["# Where a run's CPU time goes", "",
             f"Generated by `python3 bench/oncpu.py` on {os.cpu_count()} cores: the purges of "
             f"[offcpu.md](offcpu.md) ({b.ROWS:,} rows, half purgeable, under {b.RATE} transactions/s), "
             f"each sampled by `perf record -e cpu-clock -F {FREQ}`, {REPEAT} times each way. "
             "Milliseconds of CPU per purge, by function, the largest first.", "",
             "| function (object) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for sym in symbols:
        lines.append(f"| `{sym}` | " + " | ".join(f"{ms[n].get(sym, 0):.1f}" for n in names) + " |")
    lines.append("| **all functions** | " + " | ".join(f"**{sum(ms[n].values()):.0f}**" for n in names) + " |")
    lines.append("| wall time per purge (ms) | " +
                 " | ".join(f"{sum(walls[n]) / len(walls[n]) * 1000:.0f}" for n in names) + " |")
    by_object = {n: collections.Counter() for n in names}
    for n in names:
        for sym, v in ms[n].items():
            by_object[n][sym.rsplit("(", 1)[1].rstrip(")")] += v
    lines += ["", "By object:", "", "| object | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for obj in sorted(set().union(*by_object.values()), key=lambda o: -max(by_object[n][o] for n in names))[:10]:
        lines.append(f"| {obj} | " + " | ".join(f"{by_object[n][obj]:.1f}" for n in names) + " |")
    (b.ROOT / "docs" / "oncpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
