//! Learned category groups against the generator's true families.

use std::collections::{BTreeMap, HashMap};

use veer::generate::{category_families, generate, GenerateConfig};
use veer_models::groups::SessionCounter;
use veer_models::{GroupConfig, GroupKey, GroupMap, Id, PopulationDelta, PopulationModel};

const HOUR_MS: u64 = 3_600_000;

/// Learns groups from the whole default stream, window by window, as the pipeline does.
fn learned_groups(config: &GenerateConfig) -> (GroupMap, HashMap<Id, u64>) {
    let stream = generate(config);
    let mut event_counts: HashMap<Id, u64> = HashMap::new();
    for event in &stream.events {
        *event_counts.entry(event.category.clone()).or_default() += 1;
    }
    let mut counter = SessionCounter::new(veer_models::session::SessionRule::default());
    let mut model = PopulationModel::new(GroupConfig::default());
    let mut windows: BTreeMap<u64, PopulationDelta> = BTreeMap::new();
    for event in stream.events {
        let end = (event.ts_ms as u64 / HOUR_MS + 1) * HOUR_MS;
        let delta = windows.entry(end).or_insert_with(|| PopulationDelta {
            window_end: end,
            ..Default::default()
        });
        counter.count(&event, delta);
    }
    let mut map = GroupMap::default();
    for delta in windows.values() {
        map.apply(model.add_window(delta));
    }
    (map, event_counts)
}

#[test]
fn learned_groups_match_families() {
    let config = GenerateConfig::default();
    let families: HashMap<Id, u32> = category_families(&config).into_iter().collect();
    let (map, event_counts) = learned_groups(&config);

    // For each learned group, its members' families.
    let mut members: HashMap<GroupKey, Vec<u32>> = HashMap::new();
    for (category, family) in &families {
        members
            .entry(map.group_of(category, None))
            .or_default()
            .push(*family);
    }
    let mut pure = 0usize;
    let mut grouped = 0usize;
    for family_list in members.values().filter(|list| list.len() > 1) {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for family in family_list {
            *counts.entry(*family).or_default() += 1;
        }
        pure += counts.values().max().copied().unwrap_or(0);
        grouped += family_list.len();
    }
    let purity = pure as f64 / grouped as f64;

    // For each family, the share of its events that fall in its largest learned group: the
    // detector sees a user moving inside a family as novel for the rest.
    let mut family_group_events: HashMap<u32, HashMap<GroupKey, u64>> = HashMap::new();
    for (category, family) in &families {
        let events = event_counts.get(category).copied().unwrap_or(0);
        *family_group_events
            .entry(*family)
            .or_default()
            .entry(map.group_of(category, None))
            .or_default() += events;
    }
    let (mut covered, mut total) = (0u64, 0u64);
    for groups in family_group_events.values() {
        covered += groups.values().max().copied().unwrap_or(0);
        total += groups.values().sum::<u64>();
    }
    let coherence = covered as f64 / total as f64;
    println!(
        "grouped categories {grouped} of {}, purity {purity:.3}, events in their family's main group {coherence:.3}",
        families.len()
    );
    assert!(
        purity >= 0.9,
        "learned groups mix families: purity {purity:.3}"
    );
    assert!(
        coherence >= 0.8,
        "families are split over learned groups: coherence {coherence:.3}"
    );
}
