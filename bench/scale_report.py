"""docs/scale.md from bench/scale.sh's measurements: lines of `rows side round seconds deleted
workers`. Medians per size and side, each side's ratio to the plain DELETE's median."""
import statistics
import sys

LABELS = {
    "delete": "plain DELETE (one statement)",
    "run": "run(), one runner",
    "parallel": "run(), parallel_workers = 2",
}

rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
sizes = sorted({int(r[0]) for r in rows})
print("# Scale: one run against one plain DELETE as the table grows\n")
print("Measured by `bash bench/scale.sh` (medians of alternating rounds, each side on a fresh copy of")
print("the same table; scenario A's table, half of every page purged; no workload; default server")
print("settings, so checkpoints come mid-purge at 20M rows; `pg_token_cleanup.wal_compression = server`,")
print("the default since 0.8.0). 2 cores.\n")
print("| rows | side | median s | × plain DELETE | rows deleted | runners |")
print("|---:|---|---:|---:|---:|---:|")
for size in sizes:
    of = {side: [r for r in rows if int(r[0]) == size and r[1] == side] for side in LABELS}
    base = statistics.median(float(r[3]) for r in of["delete"]) if of["delete"] else None
    for side, label in LABELS.items():
        if not of[side]:
            continue
        median = statistics.median(float(r[3]) for r in of[side])
        ratio = f"{median / base:.2f}×" if base else "-"
        deleted = ", ".join(sorted({r[4] for r in of[side]}))
        workers = ", ".join(sorted({r[5] for r in of[side]})) if side != "delete" else "-"
        print(f"| {size:,} | {label} | {median:.2f} | {ratio} | {deleted} | {workers} |")
print("\nEvery time measured (s), in the order run:\n")
for size in sizes:
    times = "; ".join(f"{LABELS[r[1]]} {r[3]}" for r in rows if int(r[0]) == size)
    print(f"- {size:,} rows: {times}")
