//! Balancing strategies: pure choices over a snapshot of each backend's state,
//! so every strategy is tested without a proxy.

use crate::config::{ModelGroup, Strategy, Target};

/// What the router knows of a backend right now (see `backend_state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendSnapshot {
    pub in_flight: i64,
    /// Moving average time to first byte, once measured.
    pub latency_us: Option<u64>,
    pub tokens_this_minute: u64,
    pub cooling_down: bool,
}

/// The group's targets in the order a failure moves through them: cheapest
/// first for cost-based groups, configuration order otherwise.
pub fn preference_order(group: &ModelGroup) -> Vec<&Target> {
    let mut targets: Vec<&Target> = group.targets.iter().collect();
    if group.strategy == Strategy::CostBased {
        targets.sort_by(|a, b| a.price.total_cmp(&b.price));
    }
    targets
}

/// Picks the target for one request. `random` is a uniformly random number
/// (the caller's source), used for weighted and tie-breaking choices.
pub fn choose<'a>(group: &'a ModelGroup, snapshot: &dyn Fn(&str) -> BackendSnapshot, random: u64) -> Option<&'a Target> {
    let ordered = preference_order(group);
    let weighted: Vec<(&Target, BackendSnapshot)> =
        ordered.into_iter().filter(|t| t.weight > 0).map(|t| (t, snapshot(&t.backend))).collect();
    // Backends in cool-down are skipped while any other is available; when all
    // are cooling down, trying one beats refusing the request.
    let available: Vec<_> = weighted.iter().filter(|(_, s)| !s.cooling_down).copied().collect();
    let candidates = if available.is_empty() { weighted } else { available };

    let best = |key: &dyn Fn(&BackendSnapshot) -> u64| -> Vec<(&'a Target, BackendSnapshot)> {
        let min = candidates.iter().map(|(_, s)| key(s)).min().unwrap_or(0);
        candidates.iter().filter(|(_, s)| key(s) == min).copied().collect()
    };
    let pool = match group.strategy {
        Strategy::SimpleShuffle => candidates.clone(),
        Strategy::CostBased => return candidates.first().map(|(t, _)| *t),
        Strategy::LeastBusy => best(&|s| u64::try_from(s.in_flight).unwrap_or(0)),
        Strategy::UsageBased => best(&|s| s.tokens_this_minute),
        Strategy::LatencyBased => {
            // Unmeasured backends go first, so every backend gets measured.
            let unmeasured: Vec<_> = candidates.iter().filter(|(_, s)| s.latency_us.is_none()).copied().collect();
            if unmeasured.is_empty() {
                let fastest = candidates.iter().filter_map(|(_, s)| s.latency_us).min().unwrap_or(0);
                let band = fastest as f64 * (1.0 + group.latency_tolerance);
                candidates.iter().filter(|(_, s)| s.latency_us.is_some_and(|l| l as f64 <= band)).copied().collect()
            } else {
                unmeasured
            }
        }
    };
    weighted_pick(&pool, random)
}

fn weighted_pick<'a>(pool: &[(&'a Target, BackendSnapshot)], random: u64) -> Option<&'a Target> {
    let total: u64 = pool.iter().map(|(t, _)| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for (target, _) in pool {
        let weight = u64::from(target.weight);
        if point < weight {
            return Some(target);
        }
        point -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn group(strategy: Strategy, targets: &[(&str, u32, f64)]) -> ModelGroup {
        ModelGroup {
            name: "g".into(),
            strategy,
            targets: targets
                .iter()
                .map(|(b, w, p)| Target { backend: (*b).into(), model: "m".into(), weight: *w, price: *p })
                .collect(),
            fallbacks: vec![],
            latency_tolerance: 0.2,
        }
    }

    fn pick(group: &ModelGroup, state: &HashMap<&str, BackendSnapshot>, random: u64) -> String {
        let snapshot = |b: &str| state.get(b).copied().unwrap_or_default();
        choose(group, &snapshot, random).unwrap().backend.clone()
    }

    #[test]
    fn simple_shuffle_follows_the_weights() {
        let g = group(Strategy::SimpleShuffle, &[("a", 90, 0.0), ("b", 10, 0.0)]);
        let none = HashMap::new();
        let a = (0..1000).filter(|r| pick(&g, &none, *r) == "a").count();
        assert_eq!(a, 900, "random values 0..1000 spread exactly by weight");
    }

    #[test]
    fn cool_down_is_avoided_unless_everything_cools() {
        let g = group(Strategy::SimpleShuffle, &[("a", 90, 0.0), ("b", 10, 0.0)]);
        let hot = BackendSnapshot { cooling_down: true, ..Default::default() };
        let state = HashMap::from([("a", hot)]);
        assert!((0..100).all(|r| pick(&g, &state, r) == "b"));
        let state = HashMap::from([("a", hot), ("b", hot)]);
        assert_eq!(pick(&g, &state, 5), "a");
    }

    #[test]
    fn least_busy_takes_the_fewest_in_flight() {
        let g = group(Strategy::LeastBusy, &[("a", 1, 0.0), ("b", 1, 0.0), ("c", 1, 0.0)]);
        let busy = |n| BackendSnapshot { in_flight: n, ..Default::default() };
        let state = HashMap::from([("a", busy(5)), ("b", busy(2)), ("c", busy(7))]);
        assert!((0..10).all(|r| pick(&g, &state, r) == "b"));
    }

    #[test]
    fn latency_based_measures_first_then_prefers_the_fast_band() {
        let g = group(Strategy::LatencyBased, &[("a", 1, 0.0), ("b", 1, 0.0), ("c", 1, 0.0)]);
        let lat = |us| BackendSnapshot { latency_us: Some(us), ..Default::default() };
        let state = HashMap::from([("a", lat(1000)), ("b", lat(5000))]);
        assert_eq!(pick(&g, &state, 0), "c", "c has no measurement yet");
        let state = HashMap::from([("a", lat(1000)), ("b", lat(1150)), ("c", lat(5000))]);
        let picks: std::collections::HashSet<_> = (0..20).map(|r| pick(&g, &state, r)).collect();
        assert_eq!(picks, ["a".to_string(), "b".to_string()].into(), "b is within 20% of a, c is not");
    }

    #[test]
    fn cost_based_takes_the_cheapest_available_and_orders_fallbacks_by_price() {
        let g = group(Strategy::CostBased, &[("pricey", 1, 30.0), ("cheap", 1, 1.0), ("mid", 1, 5.0)]);
        assert_eq!(pick(&g, &HashMap::new(), 3), "cheap");
        let hot = BackendSnapshot { cooling_down: true, ..Default::default() };
        assert_eq!(pick(&g, &HashMap::from([("cheap", hot)]), 3), "mid");
        let order: Vec<_> = preference_order(&g).iter().map(|t| t.backend.as_str()).collect();
        assert_eq!(order, ["cheap", "mid", "pricey"]);
    }

    #[test]
    fn usage_based_takes_the_fewest_tokens_this_minute() {
        let g = group(Strategy::UsageBased, &[("a", 1, 0.0), ("b", 1, 0.0)]);
        let used = |n| BackendSnapshot { tokens_this_minute: n, ..Default::default() };
        let state = HashMap::from([("a", used(9000)), ("b", used(300))]);
        assert_eq!(pick(&g, &state, 0), "b");
    }

    #[test]
    fn zero_weight_targets_are_never_chosen() {
        let g = group(Strategy::SimpleShuffle, &[("a", 0, 0.0), ("b", 1, 0.0)]);
        assert!((0..50).all(|r| pick(&g, &HashMap::new(), r) == "b"));
    }
}
