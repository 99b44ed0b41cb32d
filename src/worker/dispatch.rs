//! Which due rules start now, when fewer runner slots are free than rules are due. Pure Rust (no
//! pgrx), tested with plain `#[test]`.
//!
//! - Round-robin by owner: each owner in turn gets one rule started (its earliest due), starting
//!   after the owner served last, so one role's hundred due rules cannot take every slot while
//!   another role's rule waits.
//! - No owner holds more than its share of the slots: `slots / owners` (at least one), owners
//!   counted over every rule in service. A role whose runs never end keeps at most that many slots,
//!   and every other owner's due rules still find one.
//! - Two rules on the same table never run at once: a rule whose table is busy waits.
//! - A rule that is not started stays due and starts as soon as a slot frees (never lost, never
//!   doubled: the agenda moves it on only when its run ends).

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

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

/// What is going on: the tables of runs going on, and how many runs each owner has going.
#[derive(Debug, Default)]
pub struct Running {
    pub tables: HashSet<String>,
    pub by_owner: HashMap<String, usize>,
}

/// An owner's share of `slots` when `owners` own the rules in service.
pub fn share(slots: usize, owners: usize) -> usize {
    (slots / owners.max(1)).max(1)
}

/// Chooses up to `free` of the `due` rules to start now, none for an owner already at `share`.
/// Returns rule ids in the order to start them.
pub fn choose(
    due: &[Candidate],
    running: &Running,
    free: usize,
    share: usize,
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
    let mut tables: HashSet<&str> = running.tables.iter().map(String::as_str).collect();
    let mut held: HashMap<&str, usize> = running
        .by_owner
        .iter()
        .map(|(o, n)| (o.as_str(), *n))
        .collect();
    let mut chosen = Vec::new();
    loop {
        let mut picked_this_round = false;
        for i in 0..owners.len() {
            if chosen.len() == free {
                return chosen;
            }
            let owner = owners[(start + i) % owners.len()];
            if held.get(owner).copied().unwrap_or(0) >= share {
                continue;
            }
            let queue = by_owner.get_mut(owner).expect("an owner's queue");
            if let Some(at) = queue
                .iter()
                .position(|c| !tables.contains(c.table.as_str()))
            {
                let c = queue.remove(at).expect("a candidate");
                tables.insert(c.table.as_str());
                *held.entry(owner).or_default() += 1;
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
        assert_eq!(choose(&due, &idle(), 2, 2, &mut turn), vec![1, 7]);
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
        assert_eq!(choose(&due, &idle(), 1, 4, &mut turn), vec![1]);
        let rest: Vec<Candidate> = due.iter().filter(|x| x.id != 1).cloned().collect();
        assert_eq!(choose(&rest, &idle(), 1, 4, &mut turn), vec![3]);
        let rest: Vec<Candidate> = rest.into_iter().filter(|x| x.id != 3).collect();
        assert_eq!(choose(&rest, &idle(), 1, 4, &mut turn), vec![4]);
        let rest: Vec<Candidate> = rest.into_iter().filter(|x| x.id != 4).collect();
        assert_eq!(choose(&rest, &idle(), 1, 4, &mut turn), vec![2]);
    }

    #[test]
    fn free_slots_fill_in_rounds_earliest_first() {
        let due = vec![
            c(1, 5, "alice", "a1"),
            c(2, 1, "alice", "a2"),
            c(3, 3, "bob", "b1"),
        ];
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &idle(), 3, 4, &mut turn), vec![2, 3, 1]);
    }

    #[test]
    fn two_rules_on_one_table_never_start_together() {
        let due = vec![
            c(1, 1, "alice", "t"),
            c(2, 2, "bob", "t"),
            c(3, 3, "bob", "u"),
        ];
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due, &idle(), 4, 4, &mut turn), vec![1, 3]);
        let busy = Running {
            tables: ["t".to_string()].into(),
            by_owner: [("alice".to_string(), 1)].into(),
        };
        let mut turn = RoundRobin::default();
        assert_eq!(choose(&due[1..], &busy, 4, 4, &mut turn), vec![3]);
    }

    #[test]
    fn no_slot_no_start() {
        let due = vec![c(1, 1, "alice", "t")];
        assert!(choose(&due, &idle(), 0, 4, &mut RoundRobin::default()).is_empty());
        assert!(choose(&[], &idle(), 3, 4, &mut RoundRobin::default()).is_empty());
    }

    #[test]
    fn an_owner_at_its_share_waits_while_slots_stay_free_for_others() {
        // Four slots, two owners: alice's two never-ending runs are her share.
        let going = Running {
            tables: ["a1".to_string(), "a2".to_string()].into(),
            by_owner: [("alice".to_string(), 2)].into(),
        };
        let due = vec![c(3, 1, "alice", "a3"), c(4, 1, "alice", "a4")];
        let mut turn = RoundRobin::default();
        assert!(choose(&due, &going, 2, share(4, 2), &mut turn).is_empty());
        // bob's rule, due later, still starts.
        let mut due = due;
        due.push(c(5, 9, "bob", "b"));
        assert_eq!(choose(&due, &going, 2, share(4, 2), &mut turn), vec![5]);
    }

    #[test]
    fn a_share_is_at_least_one_slot() {
        assert_eq!(share(4, 2), 2);
        assert_eq!(share(4, 3), 1);
        assert_eq!(share(2, 5), 1);
        assert_eq!(share(4, 0), 4);
    }

    fn idle() -> Running {
        Running::default()
    }
}
