#!/usr/bin/env bash
# docs/img/monitoring.png: the Grafana dashboard's panels (docs/monitoring/dashboard.json) drawn with
# matplotlib from the series the monitoring test's own Prometheus recorded. Runs that test with
# MONITORING_SERIES set (it writes every panel's range query result there), then draws them.
#   bash scripts/monitoring_picture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(bash scripts/migration_tools.sh)
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.10.*' >&2
series=$PWD/target/monitoring_series.json
rm -f "$series"
MONITORING_SERIES=$series MONITORING_SECONDS=${MONITORING_SECONDS:-90} \
    cargo test --test e2e -- monitoring::prometheus_sees --nocapture >&2
mkdir -p docs/img
"$tools/venv/bin/python" - "$series" docs/img/monitoring.png <<'PY'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

panels = json.load(open(sys.argv[1]))
fig, axes = plt.subplots(4, 2, figsize=(14, 13))
for ax, panel in zip(axes.flat, panels):
    start = min((float(v[0]) for t in panel["targets"] for s in t["result"] for v in s["values"]), default=0)
    for target in panel["targets"]:
        for s in target["result"]:
            label = target["legend"]
            for key, val in s["metric"].items():
                label = label.replace("{{" + key + "}}", val)
            xs = [float(v[0]) - start for v in s["values"]]
            ys = [float(v[1]) for v in s["values"]]
            ax.plot(xs, ys, label=label)
    ax.set_title(panel["title"])
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
fig.suptitle("pg_token_cleanup dashboard (docs/monitoring/dashboard.json): the monitoring test's series")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
print(sys.argv[2])
PY
