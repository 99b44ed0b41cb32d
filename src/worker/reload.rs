//! What a reload of the rules reads. Every enabled rule row has a version (its `xmin`, see
//! `rules::enabled_rule_versions`), and the scheduler keeps the version of each rule it loaded.
//! A reload reads the versions (an id and an integer per rule: cheap even for 100,000 rules), then
//! loads only the rules that are new or changed and drops the ones that are gone (deleted or
//! disabled). One changed rule costs the scheduler one row, not all of them.

use std::collections::{HashMap, HashSet};

/// Which rules to load.
#[derive(Debug, PartialEq)]
pub enum Load {
    /// Every enabled rule: the first load, or so many changed that one query for all is cheaper.
    All,
    /// These rules, new or changed (possibly none).
    Only(Vec<i64>),
}

/// A reload: what to load, and which loaded rules are gone.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub load: Load,
    pub gone: Vec<i64>,
}

/// Above this share of the rules changed, loading them all beats a list of ids.
const LOAD_ALL_ABOVE: f64 = 0.5;

impl Plan {
    /// Read every rule (the agenda is rebuilt from them, so nothing is "gone").
    pub fn everything() -> Plan {
        Plan {
            load: Load::All,
            gone: Vec::new(),
        }
    }
}

/// Compares the rules loaded before (`known`, each with the `version` it was read at) with the
/// current versions.
pub fn plan<V>(
    known: &HashMap<i64, V>,
    version: impl Fn(&V) -> i64,
    current: &[(i64, i64)],
) -> Plan {
    let present: HashSet<i64> = current.iter().map(|(id, _)| *id).collect();
    let mut gone: Vec<i64> = known
        .keys()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    gone.sort_unstable();
    let changed: Vec<i64> = current
        .iter()
        .filter(|(id, now)| known.get(id).map(&version) != Some(*now))
        .map(|(id, _)| *id)
        .collect();
    let load = if known.is_empty() || changed.len() as f64 > current.len() as f64 * LOAD_ALL_ABOVE {
        Load::All
    } else {
        Load::Only(changed)
    };
    Plan { load, gone }
}

/// The rules to drop once `wanted` were loaded as `loaded`: those the plan found gone, and those
/// that were wanted but not loaded (deleted or disabled between reading the versions and the rows).
pub fn gone_after_load(plan: &Plan, loaded: &HashSet<i64>) -> Vec<i64> {
    let mut gone = plan.gone.clone();
    if let Load::Only(wanted) = &plan.load {
        gone.extend(wanted.iter().filter(|id| !loaded.contains(id)));
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(pairs: &[(i64, i64)]) -> HashMap<i64, i64> {
        pairs.iter().copied().collect()
    }

    fn plan(known: &HashMap<i64, i64>, current: &[(i64, i64)]) -> Plan {
        super::plan(known, |v| *v, current)
    }

    #[test]
    fn the_first_load_reads_everything() {
        assert_eq!(
            plan(&HashMap::new(), &[(1, 10), (2, 11)]),
            Plan::everything()
        );
    }

    #[test]
    fn one_changed_rule_is_the_only_one_read() {
        let before = known(&[(1, 10), (2, 11), (3, 12), (4, 13)]);
        let now = [(1, 10), (2, 20), (3, 12), (4, 13), (5, 21)];
        assert_eq!(
            plan(&before, &now),
            Plan {
                load: Load::Only(vec![2, 5]),
                gone: vec![]
            }
        );
    }

    #[test]
    fn deleted_or_disabled_rules_are_gone_and_nothing_is_read() {
        let before = known(&[(1, 10), (2, 11), (3, 12)]);
        assert_eq!(
            plan(&before, &[(1, 10), (3, 12)]),
            Plan {
                load: Load::Only(vec![]),
                gone: vec![2]
            }
        );
    }

    #[test]
    fn most_rules_changed_reads_them_all() {
        let before = known(&[(1, 10), (2, 11), (3, 12)]);
        assert_eq!(plan(&before, &[(1, 20), (2, 21), (3, 12)]).load, Load::All);
    }

    #[test]
    fn a_rule_wanted_but_not_loaded_is_gone() {
        let before = known(&[(1, 10), (2, 11), (3, 12), (4, 13)]);
        let p = plan(&before, &[(1, 10), (2, 20), (3, 12)]);
        // Rule 2 was deleted between the two queries.
        assert_eq!(gone_after_load(&p, &HashSet::new()), vec![4, 2]);
        assert_eq!(gone_after_load(&p, &HashSet::from([2])), vec![4]);
    }
}
