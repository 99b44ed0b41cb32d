//! Reading the runs table: how a run ended (for `run()` when its runner could not hand it back),
//! which runs go on, and a new run id.

use crate::errors::Error;
use pgrx::prelude::*;

/// How a run ended: what its runner hands back to whoever asked for the run, and what the runs
/// table holds of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// 0: no run was recorded (a scheduled slot skipped because the rule was busy).
    pub run_id: i64,
    pub status: String,
    pub rows_deleted: i64,
    pub batches: i32,
    /// As the runs table has them (PostgreSQL timestamps); `finished_at` is 0 for a run still going.
    pub started_at: pg_sys::TimestampTz,
    pub finished_at: pg_sys::TimestampTz,
    /// The error of a run that neither succeeded nor stopped.
    pub error: Option<Error>,
}

impl RunResult {
    /// A scheduled slot that recorded no run.
    pub fn skipped() -> RunResult {
        RunResult {
            run_id: 0,
            status: String::new(),
            rows_deleted: 0,
            batches: 0,
            started_at: 0,
            finished_at: 0,
            error: None,
        }
    }

    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

/// Run `run_id` as recorded (for a run whose runner ended without handing its result back);
/// `None`: there is no such run.
pub fn recorded(run_id: i64) -> Option<RunResult> {
    // update() rather than select(): a read-write SPI call takes a fresh snapshot, which sees the
    // runner's commits (a read-only one would reuse the calling statement's snapshot).
    Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT status, rows_deleted, batches, started_at, finished_at, error, sqlstate, error_detail, error_hint \
               FROM token_cleanup.runs WHERE id = $1",
            Some(1),
            &[run_id.into()],
        )?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let status = r.get::<String>(1)?.unwrap_or_default();
        let error = (status != "succeeded" && status != "stopped").then(|| {
            Ok::<_, pgrx::spi::Error>(Error::from_recorded(
                r.get::<String>(7)?.as_deref(),
                r.get::<String>(6)?.unwrap_or_else(|| "no error recorded".into()),
                r.get::<String>(8)?,
                r.get::<String>(9)?,
            ))
        });
        let timestamp = |t: Option<TimestampWithTimeZone>| t.map_or(0, Into::into);
        Ok::<_, pgrx::spi::Error>(Some(RunResult {
            run_id,
            status,
            rows_deleted: r.get::<i64>(2)?.unwrap_or(0),
            batches: r.get::<i32>(3)?.unwrap_or(0),
            started_at: timestamp(r.get::<TimestampWithTimeZone>(4)?),
            finished_at: timestamp(r.get::<TimestampWithTimeZone>(5)?),
            error: error.transpose()?,
        }))
    })
    .expect("reading token_cleanup.runs")
}

extern "C-unwind" {
    // commands/sequence.h, not in pgrx's bindings; called through `guarded` (it raises ERRORs).
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// A new run id, for a caller that names its run before a runner records it (`run()`).
pub fn allocate_run_id() -> i64 {
    let seq = crate::target::lookup_table("token_cleanup.runs_id_seq")
        .ok()
        .flatten()
        .expect("token_cleanup.runs_id_seq exists");
    // SAFETY: nextval on our own sequence; the caller need not hold USAGE on it.
    unsafe { crate::errors::guarded(|| nextval_internal(seq.oid, false)) }
}

/// Which of `ids` are runs going on that the caller may see (row-level security decides).
pub fn visible_running(ids: Vec<i64>) -> Vec<i64> {
    if ids.is_empty() {
        return ids;
    }
    Spi::connect(|client| {
        client
            .select(
                "SELECT id FROM token_cleanup.runs WHERE id = ANY($1) AND status = 'running'",
                None,
                &[ids.into()],
            )?
            .map(|r| r.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
    })
    .expect("reading token_cleanup.runs")
}

/// A scalar subquery giving, for the rule whose id is the SQL expression `rule_id`, when its last
/// scheduled run (or retry) started, as epoch seconds (NULL: none): the scheduler's agenda counts
/// fire times from it.
pub fn last_scheduled_start_sql(rule_id: &str) -> String {
    format!(
        "(SELECT extract(epoch FROM h.started_at)::float8 \
            FROM token_cleanup.runs h WHERE h.rule_id = {rule_id} AND h.trigger IN ('schedule', 'retry') \
           ORDER BY h.started_at DESC LIMIT 1)"
    )
}
