//! Which due rules start now, when fewer runner slots are free than rules are due. Pure Rust (no
//! pgrx), tested with plain `#[test]`.
//!
//! - Round-robin by owner: each owner in turn gets one rule started (its earliest due), starting
//!   after the owner served last, so one role's hundred due rules cannot take every slot while
//!   another role's rule waits.
//! - Two rules on the same table never run at once: a rule whose table is busy waits.
//! - A rule that is not started stays due and starts as soon as a slot frees (never lost, never
//!   doubled: the agenda moves it on only when its run ends).

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A due rule, as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: i64,
    pub due_at: DateTime<Utc>,
    pub owner: String,
    pub table: String,
}

/// Whose turn it is.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last_owner: Option<String>,
}

/// Chooses up to `free` of the `due` rules to start now. `busy_tables` are the tables of runs
/// going on. Returns rule ids in the order to start them.
pub fn choose(
    due: &[Candidate],
    busy_tables: &HashSet<String>,
    free: usize,
    turn: &mut RoundRobin,
) -> Vec<i64> {
    // Each owner's due rules, earliest first; owners in name order.
    let mut by_owner: BTreeMap<&str, VecDeque<&Candidate>> = BTreeMap::new();
    let mut sorted: Vec<&Candidate> = due.iter().collect();
    sorted.sort_by_key(|c| (c.due_at, c.id));
    for c in sorted {
        by_owner.entry(c.owner.as_str()).or_default().push_back(c);
    }
    let owners: Vec<&str> = by_owner.keys().copied().collect();
    if owners.is_empty() || free == 0 {
        return Vec::new();
    }
    // Start with the first owner after the one served last.
    let start = turn
        .last_owner
        .as_deref()
        .map_or(0, |last| owners.iter().position(|o| *o > last).unwrap_or(0));
    let mut tables: HashSet<&str> = busy_tables.iter().map(String::as_str).collect();
    let mut chosen = Vec::new();
    loop {
        let mut picked_this_round = false;
        for i in 0..owners.len() {
            if chosen.len() == free {
                return chosen;
            }
            let owner = owners[(start + i) % owners.len()];
            let queue = by_owner.get_mut(owner).expect("an owner's queue");
            if let Some(at) = queue
                .iter()
                .position(|c| !tables.contains(c.table.as_str()))
            {
                let c = queue.remove(at).expect("a candidate");
                tables.insert(c.table.as_str());
                chosen.push(c.id);
                turn.last_owner = Some(owner.to_string());
                picked_this_round = true;
            }
        }
        if !picked_this_round {
            return chosen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn c(id: i64, second: u32, owner: &str, table: &str) -> Candidate {
        Candidate {
            id,
            due_at: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, second).unwrap(),
            owner: owner.into(),
            table: table.into(),
        }
    }

    #[test]
    fn one_owner_cannot_take_every_slot() {
        // alice has six rules due before bob's one; two slots: one each.
        let mut due: Vec<Candidate> = (1..=6)
            .map(|i| c(i, i as u32, "alice", &format!("t{i}")))
            .collect();
        due.push(c(7, 30, "bob", "b"));
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &HashSet::new(), 2, &mut turn), vec![1, 7]);
    }

    #[test]
    fn turns_rotate_between_calls() {
        let due = vec![
            c(1, 1, "alice", "a1"),
            c(2, 2, "alice", "a2"),
            c(3, 3, "bob", "b1"),
            c(4, 4, "carol", "c1"),
        ];
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &HashSet::new(), 1, &mut turn), vec![1]);
        let rest: Vec<Candidate> = due.iter().filter(|x| x.id != 1).cloned().collect();
        assert_eq!(choose(&rest, &HashSet::new(), 1, &mut turn), vec![3]);
        let rest: Vec<Candidate> = rest.into_iter().filter(|x| x.id != 3).collect();
        assert_eq!(choose(&rest, &HashSet::new(), 1, &mut turn), vec![4]);
        let rest: Vec<Candidate> = rest.into_iter().filter(|x| x.id != 4).collect();
        assert_eq!(choose(&rest, &HashSet::new(), 1, &mut turn), vec![2]);
    }

    #[test]
    fn free_slots_fill_in_rounds_earliest_first() {
        let due = vec![
            c(1, 5, "alice", "a1"),
            c(2, 1, "alice", "a2"),
            c(3, 3, "bob", "b1"),
        ];
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &HashSet::new(), 3, &mut turn), vec![2, 3, 1]);
    }

    #[test]
    fn two_rules_on_one_table_never_start_together() {
        let due = vec![
            c(1, 1, "alice", "t"),
            c(2, 2, "bob", "t"),
            c(3, 3, "bob", "u"),
        ];
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &HashSet::new(), 4, &mut turn), vec![1, 3]);
        let busy: HashSet<String> = ["t".to_string()].into();
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due[1..], &busy, 4, &mut turn), vec![3]);
    }

    #[test]
    fn no_slot_no_start() {
        let due = vec![c(1, 1, "alice", "t")];
        assert!(choose(&due, &HashSet::new(), 0, &mut RoundRobin::default()).is_empty());
        assert!(choose(&[], &HashSet::new(), 3, &mut RoundRobin::default()).is_empty());
    }
}
