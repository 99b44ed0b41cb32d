//! Purges on Citus tables: exact rows shard by shard without two-phase commits, through the
//! shards' indexes, on a schedule, partitioned and Citus-local tables, a co-located archive.

use super::*;
use std::time::Duration;

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_rule_on_a_distributed_table_deletes_exactly_the_expired_rows_shard_by_shard_without_two_phase_commits(
) {
    let citus = Citus::start("citus_exact");
    let mut admin = citus.admin();
    // Recovery of two-phase commits would empty pg_dist_transaction behind the test's back.
    each(
        &mut admin,
        &[
            "ALTER SYSTEM SET citus.recover_2pc_interval = -1",
            "SELECT pg_reload_conf()",
        ],
    );
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 100_000, 2);
    distributed_tokens(&mut app, "control", 100_000, 2);
    let before = survivors(&mut app, "tokens");
    assert_eq!(before.0, 50_000);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(2_000),
    );

    // Positive control: the plain distributed DELETE commits on both workers in two phases.
    let recorded = two_phase_commits(&mut admin);
    app.batch_execute("DELETE FROM control WHERE expires_at < now()")
        .unwrap();
    assert!(
        two_phase_commits(&mut admin) > recorded,
        "the plain DELETE should have used two-phase commit (the control of this test)"
    );

    // What a run would do: the whole table's figures, from its shards.
    assert_eq!(
        count(
            &mut app,
            "SELECT matching_rows FROM token_cleanup.preview('purge')"
        ),
        50_000
    );
    let row = app
        .query_one(
            "SELECT method, reason, estimated_rows, live_rows, table_pages FROM token_cleanup.explain('purge')",
            &[],
        )
        .unwrap();
    let (method, reason, estimated, live, pages): (String, String, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(method, "per shard");
    assert!(
        reason.starts_with("a Citus distributed table in 32 shards on 2 nodes"),
        "{reason}"
    );
    assert!((40_000..=60_000).contains(&estimated), "{estimated}");
    assert!((90_000..=110_000).contains(&live), "{live}");
    assert!(pages > 0);
    let backlog = count(
        &mut app,
        "SELECT value::bigint FROM token_cleanup.metrics WHERE metric = 'pg_token_cleanup_backlog_rows'",
    );
    assert_eq!(backlog, estimated);

    let recorded = two_phase_commits(&mut admin);
    let (status, rows, batches, method) = run_rule(&mut app, "purge");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 50_000, "per shard")
    );
    // 32 shards of about 1,560 expired rows each: at least one batch a shard, none over 2,000.
    assert!(batches >= 32, "{batches} batches");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
    assert_eq!(
        two_phase_commits(&mut admin),
        recorded,
        "the run's batches are local transactions on the workers"
    );
    // The deletes happened in the shards on the workers (Citus hides shards from other sessions'
    // catalog queries unless asked).
    wait_for("the workers' statistics", Duration::from_secs(20), || {
        let deleted: i64 = (0..2)
            .map(|i| {
                let mut worker = citus.worker(i);
                worker
                    .batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'")
                    .unwrap();
                count(
                    &mut worker,
                    "SELECT coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'tokens\\_%'",
                )
            })
            .sum();
        (deleted == 50_000).then_some(())
    });
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_few_expired_rows_are_found_through_each_shards_index() {
    let citus = Citus::start("citus_index");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 100_000, 100);
    each(
        &mut app,
        &["CREATE INDEX ON tokens (expires_at)", "ANALYZE tokens"],
    );
    let before = survivors(&mut app, "tokens");
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(10),
    );
    let (status, rows, batches, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 1_000));
    assert!(batches >= 100, "batches of at most 10 rows: {batches}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_scheduled_rule_runs_from_the_coordinator_and_no_worker_keeps_a_scheduler() {
    let citus = Citus::start("citus_scheduled");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 10_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "* * * * * *",
        None,
    );
    wait_for_count(
        &mut app,
        "the scheduled run to purge the table",
        "SELECT count(*) FROM tokens WHERE expires_at < now()",
        0,
        Duration::from_secs(30),
    );
    // Positive control: the coordinator has its scheduler (seen within a few seconds: it may lend
    // its slot to the launcher's probes of other databases for a moment).
    let mut admin = citus.admin();
    wait_for(
        "the coordinator's scheduler",
        Duration::from_secs(10),
        || {
            (count(
            &mut admin,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = 'app'",
        ) == 1)
            .then_some(())
        },
    );
    // Each worker's launcher looks (every 2 s here) and leaves nothing running in app.
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..2 {
        let mut worker = citus.worker(i);
        let mut seen = 0;
        for _ in 0..20 {
            seen += count(
                &mut worker,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = 'app'",
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            seen <= 2,
            "worker {i}: a scheduler seen {seen} times in 20 looks"
        );
        assert_eq!(
            count(&mut worker, "SELECT count(*) FROM token_cleanup.runs"),
            0
        );
    }
    assert!(!citus.workers[0]
        .log()
        .contains("pg_token_cleanup: scheduler started"));
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_distributed_partitioned_table_drops_its_expired_partition_and_purges_the_rest_and_a_citus_local_table_is_purged_too(
) {
    let citus = Citus::start("citus_partitions");
    let mut app = citus.app();
    each(
        &mut app,
        &[
            "CREATE TABLE sessions (id bigint, expires_at timestamptz NOT NULL, PRIMARY KEY (id, expires_at))
               PARTITION BY RANGE (expires_at)",
            "CREATE TABLE sessions_old PARTITION OF sessions FOR VALUES FROM ('2000-01-01') TO ('2020-01-01')",
            "CREATE TABLE sessions_now PARTITION OF sessions FOR VALUES FROM ('2020-01-01') TO ('2200-01-01')",
            "SELECT create_distributed_table('sessions', 'id')",
            "INSERT INTO sessions SELECT g, timestamptz '2010-01-01' + g * interval '1 minute' FROM generate_series(1, 5000) g",
            "INSERT INTO sessions SELECT g, now() - interval '1 day' FROM generate_series(5001, 10000) g",
            "INSERT INTO sessions SELECT g, now() + interval '1 day' FROM generate_series(10001, 15000) g",
            "ANALYZE sessions",
        ],
    );
    add_rule(
        &mut app,
        "sessions",
        "sessions",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute(
        "UPDATE token_cleanup.rules SET drop_partitions = 'drop' WHERE name = 'sessions'",
    )
    .unwrap();
    let (status, rows, _, method) = run_rule(&mut app, "sessions");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 10_000, "per shard")
    );
    assert_eq!(
        count(&mut app, "SELECT partitions_dropped::bigint FROM token_cleanup.runs WHERE rule_name = 'sessions'"),
        1
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM pg_class WHERE relname = 'sessions_old'"
        ),
        0
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM sessions"), 5_000);
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM sessions WHERE expires_at >= now() AND id > 10000"
        ),
        5_000
    );

    // A Citus-local table: its one shard is on the coordinator, purged there the same way.
    each(
        &mut app,
        &[
            "CREATE TABLE device_codes (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL)",
            "INSERT INTO device_codes SELECT g, now() + CASE WHEN g % 4 = 0 THEN interval '-1 hour' ELSE interval '1 hour' END
               FROM generate_series(1, 4000) g",
            "SELECT citus_add_local_table_to_metadata('device_codes')",
        ],
    );
    add_rule(
        &mut app,
        "codes",
        "device_codes",
        "expires_at < now()",
        "@daily",
        None,
    );
    let (status, rows, _, method) = run_rule(&mut app, "codes");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 1_000, "per shard")
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM device_codes"), 3_000);
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM device_codes WHERE expires_at < now()"
        ),
        0
    );
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn an_archiving_rule_moves_each_shards_rows_into_the_co_located_archive() {
    let citus = Citus::start("citus_archive");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 4);
    each(
        &mut app,
        &[
            "CREATE TABLE tokens_archive (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL)",
            "SELECT create_distributed_table('tokens_archive', 'id', colocate_with => 'tokens')",
            "CREATE INDEX ON tokens (expires_at)",
        ],
    );
    let original: (i64, i64) = {
        let row = app
            .query_one("SELECT count(*), sum(id)::bigint FROM tokens", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    let expired_sum = count(
        &mut app,
        "SELECT sum(id)::bigint FROM tokens WHERE expires_at < now()",
    );
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(500),
    );
    app.batch_execute(
        "UPDATE token_cleanup.rules SET archive_table = 'tokens_archive' WHERE name = 'purge'",
    )
    .unwrap();
    let (status, rows, batches, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 5_000));
    assert!(batches >= 10, "{batches} batches of at most 500 rows");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    // Every expired row is in the archive, once; source ∪ archive is the original table.
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM tokens_archive"),
        5_000
    );
    assert_eq!(
        count(&mut app, "SELECT sum(id)::bigint FROM tokens_archive"),
        expired_sum
    );
    let union = app
        .query_one(
            "SELECT count(*), sum(id)::bigint FROM (SELECT id FROM tokens UNION ALL SELECT id FROM tokens_archive) u",
            &[],
        )
        .unwrap();
    assert_eq!((union.get::<_, i64>(0), union.get::<_, i64>(1)), original);
    // Each archived row is in the archive's shard for its hash: a router query, which reads only
    // that shard, finds it.
    for id in (4..=20_000).step_by(997).filter(|id| id % 4 == 0) {
        assert_eq!(
            count(
                &mut app,
                &format!("SELECT count(*) FROM tokens_archive WHERE id = {id}")
            ),
            1,
            "id {id}"
        );
    }
}
