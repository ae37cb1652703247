//! Pool resolution: which pool runs a step for a target, and which rule decided it.

use crate::names::PoolName;
use serde::{Deserialize, Serialize};

/// The rule that chose a task's pool; recorded in the log with every routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolRule {
    /// The step named its pool explicitly.
    Step,
    /// The target's own default pool.
    TargetDefault,
    /// The global default pool.
    GlobalDefault,
}

impl PoolRule {
    /// The rule's name as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolRule::Step => "step",
            PoolRule::TargetDefault => "target_default",
            PoolRule::GlobalDefault => "global_default",
        }
    }
}

impl std::fmt::Display for PoolRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resolves the pool of a task: the step's explicit pool, else the target's default pool,
/// else the global default pool. `target_default` is `None` for a step without a target.
pub fn resolve_pool(
    step_pool: Option<&PoolName>,
    target_default: Option<&PoolName>,
    default_pool: &PoolName,
) -> (PoolName, PoolRule) {
    match (step_pool, target_default) {
        (Some(p), _) => (p.clone(), PoolRule::Step),
        (None, Some(p)) => (p.clone(), PoolRule::TargetDefault),
        (None, None) => (default_pool.clone(), PoolRule::GlobalDefault),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PoolName {
        PoolName::parse(s).expect("valid pool")
    }

    #[test]
    fn every_combination_follows_the_rules_in_order() {
        let d = p("default");
        let step = p("step-pool");
        let target = p("target-pool");
        let cases = [
            (Some(&step), Some(&target), (step.clone(), PoolRule::Step)),
            (Some(&step), None, (step.clone(), PoolRule::Step)),
            (
                None,
                Some(&target),
                (target.clone(), PoolRule::TargetDefault),
            ),
            (None, None, (d.clone(), PoolRule::GlobalDefault)),
        ];
        for (s, t, want) in cases {
            assert_eq!(resolve_pool(s, t, &d), want, "step={s:?} target={t:?}");
        }
    }

    #[test]
    fn explicit_default_pool_on_step_is_still_rule_step() {
        let d = p("default");
        assert_eq!(
            resolve_pool(Some(&d), None, &d),
            (d.clone(), PoolRule::Step)
        );
    }

    #[test]
    fn rule_names_are_the_documented_ones() {
        assert_eq!(PoolRule::Step.as_str(), "step");
        assert_eq!(PoolRule::TargetDefault.as_str(), "target_default");
        assert_eq!(PoolRule::GlobalDefault.as_str(), "global_default");
    }
}
