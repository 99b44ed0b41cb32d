//! Monitoring end to end, with what an operator installs: Debian's prometheus-sql-exporter and
//! Prometheus (scripts/setup.sh), started here on free ports with the shipped configuration
//! (docs/monitoring/: sql_exporter.yml, prometheus.yml, alerts.yml, dashboard.json), reading a
//! cluster where one rule purges and one fails. Asserted over Prometheus's HTTP API: the counters
//! move with the runs, the failing rule's alert fires and the healthy rule's does not, and every
//! expression of the Grafana dashboard returns series. The alerts' own unit tests run through
//! `promtool test rules`.

use crate::common::{count, free_port, wait_for, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring");

/// A process that is killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, args: &[String], log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    Running(
        Command::new(program)
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)")),
    )
}

/// `query` evaluated now by the Prometheus at `port`: its result vector. Waits for Prometheus to
/// answer at all (it starts with the test).
fn query(port: u16, query: &str) -> Vec<Value> {
    let output = wait_for("Prometheus to answer", Duration::from_secs(30), || {
        let output = Command::new("curl")
            .args(["-s", "-G", &format!("http://127.0.0.1:{port}/api/v1/query")])
            .args(["--data-urlencode", &format!("query={query}")])
            .output()
            .expect("curl");
        (output.status.success() && !output.stdout.is_empty()).then_some(output)
    });
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "Prometheus answered {query} with {}: {e}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(reply["status"], "success", "{query}: {reply}");
    reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of the one series `expr` selects, when there is one.
fn value(port: u16, expr: &str) -> Option<f64> {
    let result = query(port, expr);
    (result.len() == 1).then(|| result[0]["value"][1].as_str().unwrap().parse().unwrap())
}

/// The shipped files, with this test's ports, connection and a one-second pace.
fn configure(dir: &Path, cluster_port: u16, exporter_port: u16) -> PathBuf {
    let exporter = std::fs::read_to_string(Path::new(MONITORING).join("sql_exporter.yml"))
        .unwrap()
        .replace(
            "postgres://token_cleanup_monitor@localhost:5432/app",
            &format!("postgres://token_cleanup_monitor@127.0.0.1:{cluster_port}/app"),
        )
        .replace("interval: 30s", "interval: 1s");
    assert!(exporter.contains(&format!("127.0.0.1:{cluster_port}/app")));
    std::fs::write(dir.join("sql_exporter.yml"), exporter).unwrap();
    let prometheus = std::fs::read_to_string(Path::new(MONITORING).join("prometheus.yml"))
        .unwrap()
        .replace("localhost:9237", &format!("127.0.0.1:{exporter_port}"))
        .replace("scrape_interval: 30s", "scrape_interval: 1s")
        .replace("evaluation_interval: 30s", "evaluation_interval: 1s")
        .replace("  - alerts.yml", &format!("  - {MONITORING}/alerts.yml"));
    assert!(prometheus.contains(&format!("127.0.0.1:{exporter_port}")));
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus).unwrap();
    config
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    let output = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(MONITORING)
        .output()
        .expect("promtool (scripts/setup.sh installs prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("SUCCESS"),
        "{text}"
    );
}

#[test]
fn prometheus_sees_the_runs_alerts_on_the_failing_rule_and_serves_the_dashboard() {
    let cluster = Cluster::start("monitoring", &[]);
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN;
             CREATE ROLE token_cleanup_monitor LOGIN BYPASSRLS;
             CREATE TABLE public.tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
             ALTER TABLE public.tokens OWNER TO app;
             CREATE TABLE public.sessions (id bigint PRIMARY KEY);
             INSERT INTO public.sessions SELECT generate_series(1, 10);
             ALTER TABLE public.sessions OWNER TO app;",
        )
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute(
        "INSERT INTO tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, 500);
         SELECT token_cleanup.add_rule('expired_tokens', 'tokens', 'expires_at < now()', schedule => '* * * * * *');
         -- fails at every run: a division by zero on each of its table's rows
         SELECT token_cleanup.add_rule('broken', 'sessions', 'id / (id - id) = 1', schedule => '*/2 * * * * *');",
    )
    .unwrap();

    let dir = cluster.dir.join("monitoring");
    std::fs::create_dir_all(&dir).unwrap();
    let (exporter_port, prometheus_port) = (free_port(), free_port());
    let config = configure(&dir, cluster.port, exporter_port);
    let _exporter = start(
        "prometheus-sql-exporter",
        &[
            format!("-config.file={}", dir.join("sql_exporter.yml").display()),
            format!("-web.listen-address=127.0.0.1:{exporter_port}"),
        ],
        &dir.join("sql_exporter.log"),
    );
    let _prometheus = start(
        "prometheus",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        &dir.join("prometheus.log"),
    );

    // The counters move with the runs: the first purge, then more rows and the next purge.
    let deleted = "pg_token_cleanup_rows_deleted_total{database=\"app\",rule=\"expired_tokens\"}";
    wait_for(
        "Prometheus to see the first purge",
        Duration::from_secs(60),
        || value(prometheus_port, deleted).filter(|v| *v >= 500.0),
    );
    app.batch_execute(
        "INSERT INTO tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, 300)",
    )
    .unwrap();
    wait_for(
        "Prometheus to see the second purge",
        Duration::from_secs(60),
        || value(prometheus_port, deleted).filter(|v| *v >= 800.0),
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM tokens"), 0);
    let succeeded = value(
        prometheus_port,
        "pg_token_cleanup_runs_total{rule=\"expired_tokens\",status=\"succeeded\"}",
    )
    .expect("runs_total of the healthy rule");
    assert!(succeeded >= 2.0, "{succeeded}");
    let failed = value(
        prometheus_port,
        "pg_token_cleanup_runs_total{rule=\"broken\",status=\"failed\"}",
    )
    .expect("runs_total of the failing rule");
    assert!(failed >= 1.0, "{failed}");
    // Labels as documented, and nothing of the exporter's own.
    let series = query(prometheus_port, deleted);
    let labels: Vec<&str> = series[0]["metric"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        labels,
        ["__name__", "database", "instance", "job", "owner", "rule", "table"]
    );
    assert_eq!(series[0]["metric"]["table"], "public.tokens");
    assert_eq!(series[0]["metric"]["owner"], "app");

    // The failing rule's alert fires; the healthy rule's does not (the control).
    wait_for(
        "the failing rule's alert to fire",
        Duration::from_secs(60),
        || {
            (!query(
            prometheus_port,
            "ALERTS{alertname=\"TokenCleanupRuleFailing\",rule=\"broken\",alertstate=\"firing\"}",
        )
        .is_empty())
        .then_some(())
        },
    );
    assert!(query(
        prometheus_port,
        "ALERTS{alertname=\"TokenCleanupRuleFailing\",rule=\"expired_tokens\"}"
    )
    .is_empty());

    // Every expression of the dashboard returns series (Grafana's variables as "all" and a minute).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(MONITORING).join("dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$database", ".*")
                .replace("$rule", ".*");
            wait_for(
                &format!("series for {expr} (panel {})", panel["title"]),
                Duration::from_secs(30),
                || (!query(prometheus_port, &expr).is_empty()).then_some(()),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);

    // For the picture in docs/monitoring.md (scripts/monitoring_picture.sh): more purges for a
    // while, then every panel's series over the test, written as JSON.
    if let Ok(out) = std::env::var("MONITORING_SERIES") {
        let seconds: u64 = std::env::var("MONITORING_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90);
        let started = std::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            n += 1;
            app.batch_execute(&format!(
                "INSERT INTO tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, {})",
                200 * (1 + n % 5)
            ))
            .unwrap();
            std::thread::sleep(Duration::from_secs(3));
        }
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let begin = end - seconds - 30;
        let mut panels = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let mut targets = Vec::new();
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "15s")
                    .replace("$database", ".*")
                    .replace("$rule", ".*");
                let output = Command::new("curl")
                    .args([
                        "-s",
                        "-G",
                        &format!("http://127.0.0.1:{prometheus_port}/api/v1/query_range"),
                    ])
                    .args(["--data-urlencode", &format!("query={expr}")])
                    .args(["--data-urlencode", &format!("start={begin}")])
                    .args(["--data-urlencode", &format!("end={end}")])
                    .args(["--data-urlencode", "step=2"])
                    .output()
                    .unwrap();
                let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
                targets.push(serde_json::json!({
                    "legend": target["legendFormat"],
                    "result": reply["data"]["result"],
                }));
            }
            panels.push(serde_json::json!({"title": panel["title"], "targets": targets}));
        }
        std::fs::write(&out, serde_json::to_string(&panels).unwrap()).unwrap();
    }
}

/// What Grafana needs of a dashboard, checked offline: its identity, a schema version, and panels
/// that each have a type, a place on the grid that overlaps no other, a data source and targets
/// with expressions.
#[test]
fn the_dashboard_is_a_well_formed_grafana_dashboard() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(MONITORING).join("dashboard.json")).unwrap(),
    )
    .expect("dashboard.json is JSON");
    for field in ["title", "uid"] {
        assert!(
            dashboard[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().unwrap();
    let mut cells = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids unique"
        );
        assert_eq!(panel["type"], "timeseries");
        assert!(panel["title"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(panel["datasource"]["type"], "prometheus");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{}", panel["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{} overlaps", panel["title"]);
            }
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            assert!(target["refId"].as_str().is_some());
            assert!(target["expr"]
                .as_str()
                .is_some_and(|e| e.contains("pg_token_cleanup_")));
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "database", "rule"]);
}
