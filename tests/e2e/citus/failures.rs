//! A run on a Citus table when something fails under it: a worker stops, the runner is killed, the
//! rebalancer moves a shard.

use super::*;
use std::time::Duration;

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_worker_that_stops_mid_run_ends_the_run_naming_it_and_the_next_run_finishes() {
    let citus = Citus::start("citus_node_down");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    slow_purge_rule(&mut app);
    let run = run_in_background(&citus, "purge");
    wait_for("the run under way", Duration::from_secs(20), || {
        (count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) < 9_000)
            .then_some(())
    });
    citus.workers[1].pg_ctl_stop("immediate");
    let error = run.join().unwrap();
    assert!(
        error.contains(&format!("on node 127.0.0.1:{}", citus.workers[1].port)),
        "{error}"
    );
    let mut admin = citus.admin();
    let row = admin
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.runs WHERE rule_name = 'purge'",
            &[],
        )
        .unwrap();
    let (status, rows): (String, i64) = (row.get(0), row.get(1));
    assert_eq!(status, "failed");
    assert!(
        rows > 1_000 && rows < 10_000,
        "{rows} rows deleted before the node stopped"
    );
    citus.workers[1].pg_ctl_start();
    let mut reconnected = citus.app();
    wait_for("the worker back", Duration::from_secs(30), || {
        reconnected
            .query_one("SELECT count(*) FROM tokens", &[])
            .ok()
            .map(|_| ())
    });
    let (status, _, _, _) = run_rule(&mut reconnected, "purge");
    assert_eq!(status, "succeeded");
    assert_eq!(
        count(
            &mut reconnected,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut reconnected, "tokens"), before);
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_runner_killed_mid_run_loses_no_row_it_should_keep_and_the_next_run_finishes() {
    let citus = Citus::start("citus_kill");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    slow_purge_rule(&mut app);
    let port = citus.coordinator.port;
    let run = run_in_background(&citus, "purge");
    let mut admin = citus.admin();
    let runner: i32 = wait_for("the run under way", Duration::from_secs(20), || {
        if count(
            &mut admin,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) >= 9_000
        {
            return None;
        }
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup runner'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    });
    let killed = std::process::Command::new("kill")
        .args(["-9", &runner.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The postmaster restarts every backend after a crash: the caller's connection goes too.
    let error = run.join().unwrap();
    assert!(!error.is_empty());
    let mut app = wait_for("the coordinator back", Duration::from_secs(60), || {
        Client::connect(
            &format!("host=127.0.0.1 port={port} user=app dbname=app"),
            postgres::NoTls,
        )
        .ok()
    });
    wait_for(
        "the killed run marked interrupted",
        Duration::from_secs(30),
        || {
            (count(
            &mut app,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'purge' AND status = 'interrupted'",
        ) == 1)
            .then_some(())
        },
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
    let (status, _, _, _) = run_rule(&mut app, "purge");
    assert_eq!(status, "succeeded");
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
fn a_shard_the_rebalancer_moves_mid_run_is_purged_on_its_new_node() {
    let citus = Citus::start("citus_move");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    // The shards are taken in order of their ids.
    slow_purge_rule(&mut app);
    let mut admin = citus.admin();
    let (w1, w2) = (
        i32::from(citus.workers[0].port),
        i32::from(citus.workers[1].port),
    );
    // The last shard on the first worker: the run reaches it last.
    let shard: i64 = admin
        .query_one(
            "SELECT max(shardid) FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid)
              WHERE logicalrelid = 'tokens'::regclass AND nodeport = $1",
            &[&w1],
        )
        .unwrap()
        .get(0);
    let run = run_in_background(&citus, "purge");
    wait_for("the run under way", Duration::from_secs(20), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) < 9_500)
            .then_some(())
    });
    admin
        .execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'block_writes')",
            &[&shard, &w1, &w2],
        )
        .unwrap();
    assert_eq!(run.join().unwrap(), "no error");
    // Positive control: the run saw the move.
    assert!(
        citus
            .coordinator
            .log()
            .contains(&format!("moved to node 127.0.0.1:{w2} during the run")),
        "the run did not meet the move"
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
}
