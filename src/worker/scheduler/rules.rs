//! The scheduler's rules: reloading the ones whose rows changed (see `reload`), putting them in
//! service in the agenda, and serving none while the database's extension is older than the
//! library.

use super::{Scheduler, Served, OUTDATED_RECHECK, OWN_LOCK_TIMEOUT, RELOAD_GAP, RULES_OID};
use crate::errors::in_subtransaction;
use crate::gucs;
use crate::history;
use crate::rules::{self, LoadedRule};
use crate::worker::agenda::AgendaRule;
use crate::worker::reload::{self, Load, Plan};
use crate::worker::{extension_present, registry};
use chrono::Utc;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Scheduler {
    /// Reloads the enabled rules that changed (see `reload`). `None`: the extension is gone.
    /// `Some(false)`: the rules could not be read (a lock held on them, say); the ones already
    /// loaded stay in service.
    pub(super) fn reload_rules(&mut self) -> Option<bool> {
        self.next_reload_at = Some(Instant::now() + RELOAD_GAP);
        // A new pg_token_cleanup.timezone moves every rule without its own: read them all.
        let everything = self.agenda.timezone() != gucs::timezone();
        let known = &self.rules;
        let database = self.database;
        let wakes = registry::launcher_wakes();
        let loaded = BackgroundWorker::transaction(|| {
            if !extension_present() {
                registry::looked_for_extension(database, wakes);
                return None;
            }
            crate::owner::set_for_transaction("lock_timeout", OWN_LOCK_TIMEOUT);
            if let Ok(Some(t)) = crate::target::lookup_table("token_cleanup.rules") {
                RULES_OID.store(u32::from(t.oid), Ordering::SeqCst);
            }
            if let Some(installed) = rules::outdated_sql_version() {
                return Some(Err(installed));
            }
            Some(Ok(in_subtransaction(|| {
                let plan = if everything {
                    Plan::everything()
                } else {
                    reload::plan(known, |s| s.version, &rules::enabled_rule_versions())
                };
                let rules = match &plan.load {
                    Load::All => rules::load_enabled_rules(None),
                    Load::Only(ids) if ids.is_empty() => Vec::new(),
                    Load::Only(ids) => rules::load_enabled_rules(Some(ids)),
                };
                (plan, rules)
            })))
        })?;
        let loaded = match loaded {
            Err(installed) => {
                self.serve_nothing_until_updated(installed);
                return Some(false);
            }
            Ok(loaded) => loaded,
        };
        if self.outdated.take().is_some() {
            log!(
                "pg_token_cleanup: extension updated to {}; serving its rules",
                env!("CARGO_PKG_VERSION")
            );
        }
        // At the first reload, once the tables are this version's: runs a crash left `running`.
        if !self.orphans_marked {
            self.orphans_marked = true;
            let marked = BackgroundWorker::transaction(history::mark_interrupted);
            if marked > 0 {
                log!("pg_token_cleanup: marked {marked} unfinished run(s) as interrupted");
            }
        }
        let (plan, loaded) = match loaded {
            Ok(loaded) => loaded,
            // Read while DROP EXTENSION was committing.
            Err(_) if !super::looked_for_extension(self.database) => return None,
            Err(e) => {
                self.warn(&format!(
                    "pg_token_cleanup: could not read token_cleanup.rules ({e}); serving the {} rule(s) loaded before, trying again",
                    self.rules.len()
                ));
                return Some(false);
            }
        };
        self.reload_due = false;
        self.take_rules(&plan, loaded);
        Some(true)
    }

    /// Puts freshly loaded rules in service: all of them (`Load::All`), or the changed ones beside
    /// those loaded before, less the ones gone.
    fn take_rules(&mut self, plan: &Plan, loaded: Vec<LoadedRule>) {
        let agenda_rules: Vec<AgendaRule> = loaded
            .iter()
            .map(|l| AgendaRule {
                id: l.rule.id,
                schedule: l.rule.schedule.clone(),
                timezone: l.rule.timezone.clone(),
                updated_at: l.rule.updated_at,
                last_scheduled: l.last_scheduled,
            })
            .collect();
        let now = Utc::now();
        let rejected = match plan.load {
            Load::All => {
                self.rules.clear();
                self.agenda.sync(&agenda_rules, gucs::timezone(), now)
            }
            Load::Only(_) => {
                let ids: HashSet<i64> = loaded.iter().map(|l| l.rule.id).collect();
                let gone = reload::gone_after_load(plan, &ids);
                for id in &gone {
                    self.rules.remove(id);
                }
                self.agenda.update(&agenda_rules, &gone, now)
            }
        };
        for rejected in rejected {
            warning!(
                "pg_token_cleanup: rule {} skipped: {}",
                rejected.id,
                rejected.reason
            );
        }
        let changed = loaded.len();
        for l in loaded {
            let served = Served {
                rule: l.rule,
                version: l.version,
            };
            self.rules.insert(served.rule.id, served);
        }
        self.owners = self
            .rules
            .values()
            .map(|s| s.rule.owner.as_str())
            .collect::<HashSet<_>>()
            .len();
        debug1!(
            "pg_token_cleanup: read {changed} new or changed rule(s); {} enabled",
            self.rules.len()
        );
        if plan.load == Load::All {
            // A full load briefly holds two copies and the query's result; give the freed memory
            // back to the system so the worker's footprint follows its live data.
            // SAFETY: glibc's malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// The database's extension is older than the library (new files installed, server restarted,
    /// `ALTER EXTENSION … UPDATE` not run yet): its tables lack what this version reads, so no rule
    /// runs until the update, which wakes the scheduler; the version is also read again now and then.
    fn serve_nothing_until_updated(&mut self, installed: String) {
        if self.outdated.as_deref() != Some(installed.as_str()) {
            warning!(
                "pg_token_cleanup: database \"{}\" has the extension at version {installed}, the library is {}: its rules do not run until ALTER EXTENSION pg_token_cleanup UPDATE",
                self.database_name,
                env!("CARGO_PKG_VERSION")
            );
        }
        self.outdated = Some(installed);
        self.rules.clear();
        self.owners = 0;
        self.agenda.sync(&[], gucs::timezone(), Utc::now());
        self.next_reload_at = Some(Instant::now() + OUTDATED_RECHECK);
    }
}
