//! The probes pacing reads the server with: this process's WAL, the insert position, streaming
//! replicas' positions, sessions waiting on a table or on this process's locks; and the
//! [`LiveServer`] that the gate reads them through.

use super::{Look, PaceLimits, Replica, Server};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::Duration;

/// The server the run is on, as the gate sees it.
pub struct LiveServer;

impl Server for LiveServer {
    /// Read in a short transaction of its own.
    fn look(&mut self, limits: &PaceLimits, table: pg_sys::Oid, probe: bool) -> Look {
        let limits = *limits;
        BackgroundWorker::transaction(move || Look {
            position: limits.max_replica_lag.map(|_| {
                let seen = (insert_lsn(), streaming_replicas());
                // After reading: this look's position is behind the probe, which standbys replay
                // in time for the next look.
                if probe {
                    ask_replicas_for_their_position();
                }
                seen
            }),
            wal_total: limits.max_wal_rate.map(|_| process_wal_bytes()),
            waiting: limits.yield_to_waiters && sessions_waiting_on(table),
        })
    }

    fn process_wal_bytes(&self) -> u64 {
        process_wal_bytes()
    }

    fn insert_lsn(&self) -> u64 {
        insert_lsn()
    }

    fn report(&self, what: &str) {
        crate::executor::report_activity(what);
    }
}

/// The WAL this process has written.
fn process_wal_bytes() -> u64 {
    // SAFETY: this process's own WAL counters.
    unsafe { pg_sys::pgWalUsage.wal_bytes }
}

/// Writes a tiny WAL record and flushes it, so that streaming standbys receive new WAL and answer
/// with their replay position now (see the module's header).
fn ask_replicas_for_their_position() {
    let lsn = Spi::get_one::<i64>(
        "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_logical_emit_message(false, \
                'pg_token_cleanup', 'replica lag probe'), '0/0')::int8",
    );
    if let Ok(Some(lsn)) = lsn {
        // SAFETY: flushes WAL up to a position already inserted.
        unsafe { pg_sys::XLogFlush(lsn as u64) };
    }
}

/// Where the primary inserts WAL now.
fn insert_lsn() -> u64 {
    // SAFETY: reads the shared insert position; valid outside recovery, where runs happen.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

/// Replicas that are streaming (catching up, backing up or stopping ones are ignored).
fn streaming_replicas() -> Vec<Replica> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT pid, pg_catalog.pg_wal_lsn_diff(replay_lsn, '0/0')::int8, \
                    pg_catalog.pg_wal_lsn_diff(coalesce(flush_lsn, replay_lsn), '0/0')::int8, \
                    coalesce(extract(epoch FROM replay_lag), 0)::float8 \
               FROM pg_catalog.pg_stat_replication \
              WHERE state = 'streaming' AND replay_lsn IS NOT NULL",
            None,
            &[],
        )?;
        let mut replicas = Vec::new();
        for row in rows {
            let pid: i32 = row.get(1)?.unwrap_or(0);
            let replay: i64 = row.get(2)?.unwrap_or(0);
            let flush: i64 = row.get(3)?.unwrap_or(0);
            let reported: f64 = row.get(4)?.unwrap_or(0.0);
            replicas.push(Replica {
                pid,
                flush_lsn: flush.max(replay).max(0) as u64,
                replay_lsn: replay.max(0) as u64,
                reported_lag: Duration::from_secs_f64(reported.max(0.0)),
            });
        }
        Ok::<_, pgrx::spi::Error>(replicas)
    })
    .unwrap_or_default()
}

/// Inside a batch's transaction, after its DELETE: whether a session waits for a lock this process
/// holds.
pub fn blocking_sessions() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a \
                         WHERE pg_catalog.pg_backend_pid() = ANY (pg_catalog.pg_blocking_pids(a.pid)))",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Whether a session waits for a lock on `table` (the relation or one of its rows).
fn sessions_waiting_on(table: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l \
                         WHERE NOT l.granted AND l.relation = $1 AND l.database = $2)",
        // SAFETY: this backend's database, set once it connected.
        &[table.into(), unsafe { pg_sys::MyDatabaseId }.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}
