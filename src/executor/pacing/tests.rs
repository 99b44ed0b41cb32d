//! The gate's decisions, with a clock the test moves and a server whose looks the test scripts.

use super::*;
use crate::clock::FakeClock;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// A server whose looks come from a script (the last one repeats), and whose reports are kept.
#[derive(Clone, Default)]
struct ScriptedServer {
    looks: Rc<RefCell<VecDeque<Look>>>,
    reports: Rc<RefCell<Vec<String>>>,
}

impl ScriptedServer {
    fn with(looks: Vec<Look>) -> ScriptedServer {
        ScriptedServer {
            looks: Rc::new(RefCell::new(looks.into())),
            reports: Rc::default(),
        }
    }
}

impl Server for ScriptedServer {
    fn look(&mut self, _limits: &PaceLimits, _table: pg_sys::Oid, _probe: bool) -> Look {
        let mut looks = self.looks.borrow_mut();
        if looks.len() > 1 {
            looks.pop_front().unwrap()
        } else {
            looks.front().cloned().unwrap_or_default()
        }
    }

    fn process_wal_bytes(&self) -> u64 {
        0
    }

    fn insert_lsn(&self) -> u64 {
        0
    }

    fn report(&self, what: &str) {
        self.reports.borrow_mut().push(what.to_string());
    }
}

/// A clock shared by the gate and the test.
#[derive(Clone)]
struct SharedClock(Rc<FakeClock>);

impl Clock for SharedClock {
    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, how_long: Duration) {
        self.0.sleep(how_long)
    }
}

fn gate(limits: PaceLimits, server: &ScriptedServer) -> (Gate, Rc<FakeClock>) {
    let clock = Rc::new(FakeClock::new());
    let gate = Gate::new(
        limits,
        Box::new(SharedClock(clock.clone())),
        Box::new(server.clone()),
    );
    (gate, clock)
}

fn never_stop() -> Result<(), String> {
    Ok(())
}

fn too_long(paused: Duration, reason: Reason) -> String {
    format!(
        "too long: {} after {:.1} s",
        reason.as_str(),
        paused.as_secs_f64()
    )
}

fn waiting(waiting: bool) -> Look {
    Look {
        waiting,
        ..Look::default()
    }
}

#[test]
fn a_run_ahead_of_its_rows_per_second_waits_until_it_is_within_the_rate() {
    let server = ScriptedServer::default();
    let limits = PaceLimits {
        max_rows_per_second: 100,
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), Duration::ZERO, "nothing deleted yet");
    gate.before_batch("r", 500, never_stop, too_long).unwrap();
    assert_eq!(
        clock.slept.get(),
        Duration::from_secs(5),
        "500 rows at 100/s"
    );
    // Within the rate already: no wait. Not a pause either.
    gate.before_batch("r", 450, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), Duration::from_secs(5));
    assert_eq!(gate.paused, Duration::ZERO);
    assert_eq!(gate.reasons_json(), None);
}

#[test]
fn a_stop_ends_any_wait_with_its_own_error() {
    let server = ScriptedServer::with(vec![waiting(true)]);
    let limits = PaceLimits {
        max_rows_per_second: 10,
        yield_to_waiters: true,
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    let mut checks = 0;
    let stopped = gate.before_batch(
        "r",
        1_000,
        || {
            checks += 1;
            if checks > 3 {
                Err("stopped".to_string())
            } else {
                Ok(())
            }
        },
        too_long,
    );
    assert_eq!(stopped, Err("stopped".to_string()));
    assert_eq!(
        clock.slept.get(),
        3 * RECHECK,
        "three rechecks of the rate, then the stop"
    );
}

#[test]
fn waiters_pause_the_run_until_they_are_gone_and_the_pause_is_recorded() {
    let server = ScriptedServer::with(vec![waiting(true), waiting(true), waiting(false)]);
    let limits = PaceLimits {
        yield_to_waiters: true,
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    gate.set_table(pg_sys::Oid::from(42));
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), 2 * RECHECK);
    assert_eq!(gate.paused, 2 * RECHECK);
    assert_eq!(gate.reasons_json().as_deref(), Some(r#"{"waiters":0.2}"#));
    assert_eq!(
        server.reports.borrow().last().map(String::as_str),
        Some("pg_token_cleanup: rule r: paused (waiters)")
    );
}

#[test]
fn a_batch_that_held_a_session_up_gives_way_as_long_as_it_took_at_most_a_second() {
    let server = ScriptedServer::with(vec![waiting(false)]);
    let limits = PaceLimits {
        yield_to_waiters: true,
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    gate.give_way_after(Duration::from_millis(300));
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), Duration::from_millis(300));
    gate.give_way_after(Duration::from_secs(5));
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), Duration::from_millis(1_300));
    assert_eq!(gate.paused, Duration::from_millis(1_300));
}

#[test]
fn one_stretch_of_pauses_past_max_pause_ends_the_run_with_its_reason() {
    let server = ScriptedServer::with(vec![waiting(true)]);
    let limits = PaceLimits {
        yield_to_waiters: true,
        max_pause: Some(Duration::from_secs(2)),
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    let ended = gate.before_batch("r", 0, never_stop, too_long);
    assert_eq!(ended, Err("too long: waiters after 2.0 s".to_string()));
    assert_eq!(clock.slept.get(), Duration::from_secs(2));
}

#[test]
fn wal_written_over_the_rate_pauses_the_run_until_the_last_second_is_under_it() {
    let mb = 1024 * 1024;
    let wal = |total: u64| Look {
        wal_total: Some(total),
        ..Look::default()
    };
    // 3 MB written before the second look, nothing after.
    let server = ScriptedServer::with(vec![wal(0), wal(3 * mb)]);
    let limits = PaceLimits {
        max_wal_rate: Some(mb as f64),
        ..PaceLimits::default()
    };
    let (mut gate, clock) = gate(limits, &server);
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    assert_eq!(clock.slept.get(), Duration::ZERO, "nothing written yet");
    gate.before_batch("r", 0, never_stop, too_long).unwrap();
    // Paused until the 3 MB are more than a second old.
    assert_eq!(clock.slept.get(), Duration::from_secs(1));
    assert_eq!(gate.reasons_json().as_deref(), Some(r#"{"wal_rate":1.0}"#));
}

#[test]
fn no_limit_no_look_and_no_wait() {
    let server = ScriptedServer::with(vec![waiting(true)]);
    let (mut gate, clock) = gate(PaceLimits::default(), &server);
    gate.before_batch("r", 1_000_000, never_stop, too_long)
        .unwrap();
    assert_eq!(clock.slept.get(), Duration::ZERO);
    assert_eq!(
        server.looks.borrow().len(),
        1,
        "the server was not looked at"
    );
}

#[test]
fn the_runners_of_one_run_share_its_rates_and_each_watch_the_server() {
    let limits = PaceLimits {
        max_replica_lag: Some(Duration::from_secs(1)),
        max_wal_rate: Some(30.0),
        yield_to_waiters: true,
        max_rows_per_second: 1001,
        max_pause: None,
    };
    let shared = limits.shared_by(2);
    assert_eq!(shared.max_wal_rate, Some(15.0));
    assert_eq!(shared.max_rows_per_second, 501);
    assert_eq!(shared.max_replica_lag, limits.max_replica_lag);
    assert!(shared.yield_to_waiters);
    // No limit stays no limit; no runners counts as one.
    assert_eq!(PaceLimits::default().shared_by(3), PaceLimits::default());
    assert_eq!(limits.shared_by(0), limits);
}
