//! Labelled synthetic behaviour streams, modelled on the Taobao UserBehavior data.
//!
//! The generator builds a catalogue of leaf categories grouped into families of related
//! categories, with Zipf-like popularity across families and within each family. Every user
//! gets a few interest families, an activity level, and sessions placed by a diurnal profile in
//! UTC+8. A session follows one need: it mostly stays inside one family and moves between its
//! leaf categories, so that, as in the real data, a user keeps visiting leaves they never
//! visited before while their families stay the same.
//!
//! On top of that baseline it plants labelled changes, written as [`TruthRecord`]s:
//!
//! - `interest_shift`: from the onset on, the user's interest families are replaced by other
//!   families, either at once or over a ramp of one to two days;
//! - `one_off` decoy: one short session in an unrelated family, such as a gift;
//! - `burst` decoy: a bot-like run of 50 to 300 views, 1 to 5 seconds apart, across many
//!   families;
//! - `seasonal` decoy: one or two families are boosted for one to two days for 10 % to 20 % of
//!   all users, with one record per affected user who has a session in the trend window.
//!
//! Shifted users, `one_off` users, `burst` users and seasonal users are disjoint sets. The
//! output depends only on the [`GenerateConfig`]: every random draw comes from ChaCha8 streams
//! seeded by `seed`. [`crate::stats`] measures how close a stream is to real data, and the
//! integration tests compare the default stream with a Taobao UserBehavior sample.

use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use veer_models::{Behavior, Event, Id, IdValue};

use crate::truth::{DecoyKind, TruthRecord};

const DAY_SECS: i64 = 86_400;
const HOUR_SECS: i64 = 3_600;

/// Share of sessions that start in each local hour (UTC+8), in percent, measured as the event
/// share per hour in the first 84,475 rows of the Tianchi Taobao UserBehavior data.
const HOUR_WEIGHTS: [f64; 24] = [
    3.5, 1.6, 0.8, 0.4, 0.5, 0.7, 1.6, 2.6, 3.3, 4.0, 4.5, 4.6, 4.0, 5.1, 5.0, 5.5, 5.4, 4.6, 4.9,
    6.5, 7.8, 8.8, 7.9, 6.1,
];

/// Number of category families in the catalogue.
const FAMILY_COUNT: usize = 240;
/// Range of the number of leaf categories in a family (uniform).
const FAMILY_LEAVES: std::ops::RangeInclusive<u32> = 5..=40;
/// Zipf exponent of family popularity.
const FAMILY_ZIPF: f64 = 1.0;
/// Zipf exponent of leaf popularity inside a family.
const LEAF_ZIPF: f64 = 0.3;
/// Smallest and largest number of items in a leaf category (log-uniform in between).
const LEAF_ITEMS: (f64, f64) = (100.0, 4_000.0);
/// Zipf exponent of item popularity inside a leaf. It is below 1 because most items of the real
/// data have a single event.
const ITEM_ZIPF: f64 = 0.5;
/// Largest category id, close to the largest Taobao category ids (about 5.2 million).
const MAX_CATEGORY_ID: u64 = 5_000_000;

/// Probability that a session's need is an unrelated popular family instead of an interest.
const EXPLORE: f64 = 0.1;
/// Probability that a session continues the previous session's need (same family and leaf).
const NEED_REPEAT: f64 = 0.45;
/// Probability that the next event of a session moves to another leaf of the same family.
const LEAF_SWITCH: f64 = 0.55;
/// Probability that a need in an interest family focuses on the user's favourite leaf there.
const FAVORITE_FOCUS: f64 = 0.25;
/// Probability that a move to another leaf returns to the need's focus leaf.
const FOCUS_RETURN: f64 = 0.4;
/// Probability that the next event of a session moves to another interest family.
const FAMILY_JUMP: f64 = 0.04;
/// Probability that a view is a repeat view of an item already viewed in the session.
const ITEM_REVIEW: f64 = 0.15;
/// Probability that a cart, fav or buy is on an item already viewed in the session.
const ACTION_ON_VIEWED: f64 = 0.7;
/// Probabilities of cart, fav and buy per event, and the rest are views.
/// They are above the real shares because the views of burst decoys dilute them.
const ACTION_SHARES: [(Behavior, f64); 3] = [
    (Behavior::Cart, 0.058),
    (Behavior::Fav, 0.031),
    (Behavior::Buy, 0.023),
];

/// Median and log-space standard deviation of a user's sessions per day.
const SESSIONS_PER_DAY: (f64, f64) = (1.65, 0.55);
/// Median and log-space standard deviation of a user's typical session length, in events.
const SESSION_LENGTH: (f64, f64) = (3.2, 0.55);
/// Minimum number of events of a user before decoys, as in the Taobao sample.
const MIN_USER_EVENTS: usize = 4;
/// Log-space standard deviation of one session's length around the user's typical length.
const SESSION_LENGTH_SPREAD: f64 = 0.9;
/// Median and log-space standard deviation of the gap between events of a session, in seconds.
const EVENT_GAP: (f64, f64) = (50.0, 1.3);
/// Largest gap inside a session, below the 30-minute gap that usually separates sessions.
const MAX_EVENT_GAP_SECS: f64 = 1_500.0;

/// Share of shifted users whose activity is raised to a floor, so that most shifts have enough
/// events after the onset to be detectable (default and `harder`).
const SHIFT_ACTIVE_SHARE: (f64, f64) = (0.9, 0.6);
/// Share of ramped shifts (default and `harder`).
const RAMPED_SHARE: (f64, f64) = (0.25, 0.5);
/// Share of users whose activity is cut to `LOW_ACTIVITY_FACTOR` (default and `harder`).
const LOW_ACTIVITY_SHARE: (f64, f64) = (0.0, 0.3);
const LOW_ACTIVITY_FACTOR: f64 = 0.3;
/// Share of users with a `one_off` decoy and share with a `burst` decoy.
const ONE_OFF_SHARE: f64 = 0.05;
const BURST_SHARE: f64 = 0.05;
/// Range of the share of users affected by the seasonal trend.
const SEASONAL_SHARE: (f64, f64) = (0.10, 0.20);
/// Popularity ranks from which trend families are drawn: popular enough to reach many users,
/// but below the top ranks, so that the trend moves users away from their usual families.
const TREND_FAMILY_RANKS: std::ops::Range<u32> = 10..60;
const _: () = assert!(TREND_FAMILY_RANKS.end as usize <= FAMILY_COUNT);
/// Probability that an affected user's session inside the trend window follows the trend.
const SEASONAL_BOOST: f64 = 0.6;
/// Range of the gap between two views of a burst, in seconds.
const BURST_GAP_SECS: std::ops::RangeInclusive<i64> = 1..=5;
/// Probability that the next view of a burst is in another popularity-weighted family.
const BURST_FAMILY_SWITCH: f64 = 0.7;

/// Settings of [`generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Number of users.
    pub users: usize,
    /// Length of the stream in days. It must be at least 5, so that shifts have 2 days on either
    /// side.
    pub days: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// Share of users that get a planted `interest_shift`, in 0..=1.
    pub shift_frac: f64,
    /// Start of the stream in Unix seconds, taken as a midnight in UTC+8.
    pub start_ts: i64,
    /// Makes about half of the shifts ramped and cuts the activity of 30 % of users.
    pub harder: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            users: 2_000,
            days: 9,
            seed: 7,
            shift_frac: 0.2,
            // 2017-11-25T00:00:00+08:00, the first day of the Taobao UserBehavior data.
            start_ts: 1_511_539_200,
            harder: false,
        }
    }
}

/// A generated stream with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Events sorted by [`Event::processing_cmp`], with `line` set to the 1-based position in that
    /// order.
    pub events: Vec<Event>,
    /// Truth records sorted by user, then time.
    pub truth: Vec<TruthRecord>,
}

/// Output format of [`write_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenFormat {
    /// The contract's JSON lines, with `ts` in Unix seconds (milliseconds are dropped).
    Jsonl,
    /// Taobao UserBehavior CSV without header: `user,item,category,pv|cart|fav|buy,ts`.
    Taobao,
}

/// Returns each leaf category of the catalogue with the index of its family, for judging how
/// well learned category groups recover the families.
pub fn category_families(config: &GenerateConfig) -> Vec<(Id, u32)> {
    let mut rng = stream_rng(config.seed, 0);
    let catalogue = Catalogue::new(&mut rng);
    let mut families = Vec::new();
    for (family, leaves) in catalogue.family_leaves.iter().enumerate() {
        for leaf in leaves {
            families.push((catalogue.leaf_id(*leaf), family as u32));
        }
    }
    families
}

/// Generates a labelled stream.
///
/// # Examples
///
/// ```
/// use veer::generate::{generate, GenerateConfig};
/// use veer::truth::TruthRecord;
///
/// let config = GenerateConfig { users: 50, ..GenerateConfig::default() };
/// let stream = generate(&config);
/// let shifts = stream
///     .truth
///     .iter()
///     .filter(|record| matches!(record, TruthRecord::InterestShift { .. }))
///     .count();
/// assert_eq!(shifts, 10); // round(50 users × shift_frac 0.2)
/// assert_eq!(generate(&config), stream);
/// ```
///
/// # Panics
///
/// Panics if `days` is below 5, if `shift_frac` is outside 0..=1, or if `users` exceeds
/// 2^31 - 2.
pub fn generate(config: &GenerateConfig) -> Generated {
    assert!(
        config.days >= 5,
        "days must be at least 5, got {}",
        config.days
    );
    assert!(
        (0.0..=1.0).contains(&config.shift_frac),
        "shift_frac must be in 0..=1, got {}",
        config.shift_frac
    );
    assert!(
        config.users < LARGE_ID_MODULUS as usize,
        "too many users: {}",
        config.users
    );

    let mut rng = stream_rng(config.seed, 0);
    let catalogue = Catalogue::new(&mut rng);
    let plan = PopulationPlan::new(config, &mut rng);

    // Events as (ts, user id, category id, item id, behaviour): with integer ids and no optional
    // fields, sorting these tuples gives `Event::processing_cmp` order, much faster.
    let mut keys: Vec<(i64, u64, u64, u64, Behavior)> = Vec::new();
    let mut truth = Vec::new();
    for (index, role) in plan.roles.iter().enumerate() {
        let user_rng = stream_rng(config.seed, index as u64 + 1);
        let mut user = UserSimulation::new(config, &catalogue, &plan, role, user_rng);
        user.simulate();
        let user_id = plan.user_ids.apply(index as u64);
        if let Some(record) = user.truth_record(&catalogue, &Id::from(user_id)) {
            truth.push(record);
        }
        keys.extend(user.events.iter().map(|raw| {
            let category = catalogue.leaf_ids[raw.leaf as usize];
            let item = catalogue.item_ids.apply(u64::from(raw.item));
            (raw.ts, user_id, category, item, raw.behavior)
        }));
    }
    keys.sort_unstable();

    let events = keys
        .into_iter()
        .enumerate()
        .map(|(position, (ts, user, category, item, behavior))| Event {
            line: position as u64 + 1,
            ..Event::plain(ts * 1000, user, category, item, behavior)
        })
        .collect();
    sort_truth(&mut truth);
    Generated { events, truth }
}

/// Writes events sorted by time, one per line, in `format`.
///
/// Events that are not already in [`Event::processing_cmp`] order are written from a sorted
/// copy. Taobao CSV cannot encode `search` or `remove_from_cart`, nor text ids that contain a
/// comma or a line break, so such events fail with [`io::ErrorKind::InvalidInput`].
pub fn write_events(events: &[Event], format: GenFormat, out: &mut impl Write) -> io::Result<()> {
    let mut ordered: Vec<&Event> = events.iter().collect();
    if !events.is_sorted_by(|a, b| a.processing_cmp(b).is_le()) {
        ordered.sort_by(|a, b| a.processing_cmp(b));
    }

    let mut writer = io::BufWriter::new(out);
    let mut line = String::with_capacity(160);
    for event in ordered {
        line.clear();
        match format {
            GenFormat::Jsonl => format_json_line(event, &mut line),
            GenFormat::Taobao => format_taobao_line(event, &mut line)?,
        }
        line.push('\n');
        writer.write_all(line.as_bytes())?;
    }
    writer.flush()
}

/// Writes truth records as JSON lines, sorted by user, then time.
pub fn write_truth(truth: &[TruthRecord], out: &mut impl Write) -> io::Result<()> {
    let mut sorted = truth.to_vec();
    sort_truth(&mut sorted);
    let mut writer = io::BufWriter::new(out);
    for record in &sorted {
        writer.write_all(record.to_json_line().as_bytes())?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

fn truth_time(record: &TruthRecord) -> i64 {
    match record {
        TruthRecord::InterestShift { onset_ts, .. } => *onset_ts,
        TruthRecord::Decoy { ts, .. } => *ts,
    }
}

fn sort_truth(truth: &mut [TruthRecord]) {
    truth.sort_by_cached_key(|record| {
        (
            record.user().clone(),
            truth_time(record),
            record.to_json_line(),
        )
    });
}

fn push_json_id(id: &Id, line: &mut String) {
    match id.value() {
        IdValue::Int(value) => line.push_str(&value.to_string()),
        IdValue::Text(text) => line.push_str(&serde_json::Value::from(text).to_string()),
    }
}

fn format_json_line(event: &Event, line: &mut String) {
    line.push_str("{\"user\":");
    push_json_id(&event.user, line);
    line.push_str(",\"item\":");
    push_json_id(&event.item, line);
    line.push_str(",\"category\":");
    push_json_id(&event.category, line);
    line.push_str(",\"behavior\":\"");
    line.push_str(event.behavior.name());
    line.push_str("\",\"ts\":");
    line.push_str(&event.ts_secs().to_string());
    if let Some(price) = event.price.filter(|price| price.is_finite()) {
        line.push_str(",\"price\":");
        line.push_str(&serde_json::Value::from(price).to_string());
    }
    if let Some(brand) = &event.brand {
        line.push_str(",\"brand\":");
        push_json_id(brand, line);
    }
    if let Some(dwell) = event.dwell_ms {
        line.push_str(",\"dwell_ms\":");
        line.push_str(&dwell.to_string());
    }
    if let Some(session) = &event.session {
        line.push_str(",\"session\":");
        line.push_str(&serde_json::Value::from(&**session).to_string());
    }
    line.push('}');
}

fn format_taobao_line(event: &Event, line: &mut String) -> io::Result<()> {
    let behavior = match event.behavior {
        Behavior::View => "pv",
        Behavior::Cart => "cart",
        Behavior::Fav => "fav",
        Behavior::Buy => "buy",
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "behaviour {} of the event on line {} cannot be written as Taobao CSV, \
                     which has only pv, cart, fav and buy; use the jsonl format",
                    other.name(),
                    event.line
                ),
            ))
        }
    };
    for id in [&event.user, &event.item, &event.category] {
        let text = id.to_string();
        if text.contains([',', '\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "id {text:?} of the event on line {} cannot be written as Taobao CSV",
                    event.line
                ),
            ));
        }
        line.push_str(&text);
        line.push(',');
    }
    line.push_str(behavior);
    line.push(',');
    line.push_str(&event.ts_secs().to_string());
    Ok(())
}

/// Returns the ChaCha8 generator of one stream of a seed. Stream 0 draws the catalogue and the
/// population plan, and stream `i + 1` draws the user at index `i`.
fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller transform. `1 - u` keeps the logarithm's argument in (0, 1].
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * standard_normal(rng)).exp()
}

fn log_uniform(rng: &mut ChaCha8Rng, (low, high): (f64, f64)) -> f64 {
    (low.ln() + rng.gen::<f64>() * (high.ln() - low.ln())).exp()
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        return (mean + mean.sqrt() * standard_normal(rng)).round().max(0.0) as u32;
    }
    // Knuth's multiplication method, fine for small means.
    let limit = (-mean).exp();
    let mut count = 0;
    let mut product: f64 = rng.gen();
    while product > limit {
        count += 1;
        product *= rng.gen::<f64>();
    }
    count
}

/// Cumulative weights for sampling an index in proportion to its weight.
#[derive(Clone, Debug)]
struct Cumulative {
    totals: Vec<f64>,
}

impl Cumulative {
    fn new(weights: impl IntoIterator<Item = f64>) -> Cumulative {
        let mut sum = 0.0;
        let totals = weights
            .into_iter()
            .map(|weight| {
                sum += weight;
                sum
            })
            .collect();
        Cumulative { totals }
    }

    fn zipf(count: usize, exponent: f64) -> Cumulative {
        Cumulative::new((1..=count).map(|rank| (rank as f64).powf(-exponent)))
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = *self.totals.last().expect("weights must not be empty");
        let target = rng.gen::<f64>() * total;
        self.totals
            .partition_point(|&sum| sum <= target)
            .min(self.totals.len() - 1)
    }
}

/// A bijection from 0..modulus to 1..=modulus that scatters consecutive indices. Because the
/// modulus is prime, every non-zero multiplier gives a permutation.
#[derive(Clone, Copy, Debug)]
struct ScatteredIds {
    modulus: u64,
    multiplier: u64,
    offset: u64,
}

/// Prime modulus of user ids: Taobao user ids are below about a million.
const USER_ID_MODULUS: u64 = 1_000_003;
/// Prime modulus of item ids: Taobao item ids are below about 5.2 million.
const ITEM_ID_MODULUS: u64 = 5_163_061;
/// Prime modulus for id ranges that outgrow the moduli above.
const LARGE_ID_MODULUS: u64 = 2_147_483_647;

/// Returns `preferred` if it exceeds `needed`, else the large modulus.
fn id_modulus(needed: u64, preferred: u64) -> u64 {
    if needed < preferred {
        preferred
    } else {
        LARGE_ID_MODULUS
    }
}

impl ScatteredIds {
    fn new(modulus: u64, rng: &mut ChaCha8Rng) -> ScatteredIds {
        ScatteredIds {
            modulus,
            multiplier: rng.gen_range(modulus / 3..modulus),
            offset: rng.gen_range(0..modulus),
        }
    }

    fn apply(&self, index: u64) -> u64 {
        let mixed = (u128::from(index) * u128::from(self.multiplier) + u128::from(self.offset))
            % u128::from(self.modulus);
        mixed as u64 + 1
    }
}

/// Leaf categories grouped into families, and items per leaf.
struct Catalogue {
    /// Leaf indices of each family, most popular first.
    family_leaves: Vec<Vec<u32>>,
    /// Popularity of each leaf inside its family, in the order of `family_leaves`.
    family_leaf_weights: Vec<Cumulative>,
    family_weights: Cumulative,
    leaf_ids: Vec<u64>,
    /// First global item index of each leaf, and the number of items of the leaf.
    leaf_items: Vec<(u32, u32)>,
    item_ids: ScatteredIds,
}

impl Catalogue {
    fn new(rng: &mut ChaCha8Rng) -> Catalogue {
        let mut family_leaves = Vec::with_capacity(FAMILY_COUNT);
        let mut family_leaf_weights = Vec::with_capacity(FAMILY_COUNT);
        let mut leaf_count = 0u32;
        for _ in 0..FAMILY_COUNT {
            let count = rng.gen_range(FAMILY_LEAVES);
            family_leaves.push((leaf_count..leaf_count + count).collect::<Vec<u32>>());
            family_leaf_weights.push(Cumulative::zipf(count as usize, LEAF_ZIPF));
            leaf_count += count;
        }

        let mut used = std::collections::HashSet::new();
        let leaf_ids = (0..leaf_count)
            .map(|_| loop {
                let id = rng.gen_range(1..=MAX_CATEGORY_ID);
                if used.insert(id) {
                    break id;
                }
            })
            .collect();

        let mut next_item = 0u32;
        let leaf_items = (0..leaf_count)
            .map(|_| {
                let count = log_uniform(rng, LEAF_ITEMS).round() as u32;
                let first = next_item;
                next_item += count;
                (first, count)
            })
            .collect();

        Catalogue {
            family_leaves,
            family_leaf_weights,
            family_weights: Cumulative::zipf(FAMILY_COUNT, FAMILY_ZIPF),
            leaf_ids,
            leaf_items,
            item_ids: ScatteredIds::new(id_modulus(u64::from(next_item), ITEM_ID_MODULUS), rng),
        }
    }

    fn leaf_id(&self, leaf: u32) -> Id {
        Id::from(self.leaf_ids[leaf as usize])
    }

    fn sample_family(&self, rng: &mut ChaCha8Rng) -> u32 {
        self.family_weights.sample(rng) as u32
    }

    /// Samples a popularity-weighted family outside `excluded`.
    fn sample_family_outside(&self, excluded: &[u32], rng: &mut ChaCha8Rng) -> u32 {
        loop {
            let family = self.sample_family(rng);
            if !excluded.contains(&family) {
                return family;
            }
        }
    }

    fn family_of(&self, leaf: u32) -> u32 {
        let first_leaves = |family: &Vec<u32>| family[0] <= leaf;
        self.family_leaves.partition_point(first_leaves) as u32 - 1
    }

    fn sample_leaf(&self, family: u32, rng: &mut ChaCha8Rng) -> u32 {
        let family = family as usize;
        self.family_leaves[family][self.family_leaf_weights[family].sample(rng)]
    }

    /// Samples an item of a leaf with Zipf popularity of exponent `ITEM_ZIPF` over its items.
    fn sample_item(&self, leaf: u32, rng: &mut ChaCha8Rng) -> u32 {
        // Inverse of the continuous power law's distribution function on 0..count.
        let (first, count) = self.leaf_items[leaf as usize];
        let power = 1.0 - ITEM_ZIPF;
        let rank = (rng.gen::<f64>() * f64::from(count).powf(power)).powf(1.0 / power);
        first + (rank as u32).min(count - 1)
    }
}

/// A user's interest families with their weights.
#[derive(Clone, Debug)]
struct Interests {
    families: Vec<u32>,
    weights: Cumulative,
    /// The user's favourite leaf of each family, which many of their needs come back to.
    favorites: Vec<u32>,
}

impl Interests {
    /// Draws 1 to 5 popularity-weighted families outside `excluded`, with Dirichlet(1) weights.
    fn sample(catalogue: &Catalogue, excluded: &[u32], rng: &mut ChaCha8Rng) -> Interests {
        let count = 1 + Cumulative::new([0.15, 0.3, 0.3, 0.15, 0.1]).sample(rng);
        let mut families: Vec<u32> = Vec::with_capacity(count);
        while families.len() < count {
            let family = catalogue.sample_family(rng);
            if !families.contains(&family) && !excluded.contains(&family) {
                families.push(family);
            }
        }
        let weights = Cumulative::new((0..count).map(|_| -(1.0 - rng.gen::<f64>()).ln()));
        let favorites = families
            .iter()
            .map(|&family| catalogue.sample_leaf(family, rng))
            .collect();
        Interests {
            families,
            weights,
            favorites,
        }
    }

    fn sample_family(&self, rng: &mut ChaCha8Rng) -> u32 {
        self.families[self.weights.sample(rng)]
    }

    /// Samples the focus leaf of a need in `family`. For an interest family it is the favourite
    /// leaf with probability `FAVORITE_FOCUS`, and otherwise a popularity-weighted leaf.
    fn sample_focus(&self, catalogue: &Catalogue, family: u32, rng: &mut ChaCha8Rng) -> u32 {
        match self
            .families
            .iter()
            .position(|&interest| interest == family)
        {
            Some(position) if rng.gen::<f64>() < FAVORITE_FOCUS => self.favorites[position],
            _ => catalogue.sample_leaf(family, rng),
        }
    }
}

/// The planted change of one user, if any.
#[derive(Clone, Debug)]
enum Role {
    Normal,
    /// Interests change from `onset` (Unix seconds), linearly over `ramp_secs` (0 for abrupt).
    Shift {
        onset: i64,
        ramp_secs: i64,
    },
    OneOff,
    Burst,
    Seasonal,
}

/// Decisions that concern the whole population: ids, roles and the seasonal trend.
struct PopulationPlan {
    user_ids: ScatteredIds,
    roles: Vec<Role>,
    /// Families of the seasonal trend. A family's index is its popularity rank.
    trend_families: Vec<u32>,
    /// Start and end of the seasonal trend window, Unix seconds.
    trend_window: (i64, i64),
    /// Diurnal profile of session starts.
    hours: Cumulative,
}

impl PopulationPlan {
    fn new(config: &GenerateConfig, rng: &mut ChaCha8Rng) -> PopulationPlan {
        let user_ids =
            ScatteredIds::new(id_modulus(config.users as u64 * 10, USER_ID_MODULUS), rng);

        let mut order: Vec<usize> = (0..config.users).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let count = |share: f64| (config.users as f64 * share).round() as usize;
        let shifts = count(config.shift_frac);
        let one_offs = count(ONE_OFF_SHARE);
        let bursts = count(BURST_SHARE);
        let seasonal = count(rng.gen_range(SEASONAL_SHARE.0..SEASONAL_SHARE.1));

        let ramped_share = if config.harder {
            RAMPED_SHARE.1
        } else {
            RAMPED_SHARE.0
        };
        let onset_low = config.start_ts + 2 * DAY_SECS;
        let onset_high = config.start_ts + (i64::from(config.days) - 2) * DAY_SECS;
        let mut roles = vec![Role::Normal; config.users];
        for (position, &user) in order.iter().enumerate() {
            roles[user] = if position < shifts {
                let onset = rng.gen_range(onset_low..onset_high);
                let ramp_secs = if rng.gen::<f64>() < ramped_share {
                    rng.gen_range(DAY_SECS..=2 * DAY_SECS)
                } else {
                    0
                };
                Role::Shift { onset, ramp_secs }
            } else if position < shifts + one_offs {
                Role::OneOff
            } else if position < shifts + one_offs + bursts {
                Role::Burst
            } else if position < shifts + one_offs + bursts + seasonal {
                Role::Seasonal
            } else {
                Role::Normal
            };
        }

        let mut trend_families = vec![rng.gen_range(TREND_FAMILY_RANKS)];
        if rng.gen::<bool>() {
            let second = loop {
                let family = rng.gen_range(TREND_FAMILY_RANKS);
                if family != trend_families[0] {
                    break family;
                }
            };
            trend_families.push(second);
        }
        let last_day = i64::from(config.days) - 3;
        let trend_start = config.start_ts
            + rng.gen_range(2..=last_day) * DAY_SECS
            + rng.gen_range(0..12 * HOUR_SECS);
        let trend_end = (trend_start + rng.gen_range(DAY_SECS..=2 * DAY_SECS))
            .min(config.start_ts + (i64::from(config.days) - 1) * DAY_SECS);

        PopulationPlan {
            user_ids,
            roles,
            trend_families,
            trend_window: (trend_start, trend_end),
            hours: Cumulative::new(HOUR_WEIGHTS),
        }
    }
}

/// One event before ids are assigned, with `ts` in Unix seconds.
#[derive(Clone, Copy, Debug)]
struct RawEvent {
    ts: i64,
    leaf: u32,
    item: u32,
    behavior: Behavior,
}

/// Source of a session's need. Only interest needs may continue into the next session or move to
/// another family during the session.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NeedSource {
    OldInterest,
    NewInterest,
    Explore,
    /// A decoy's family: the seasonal trend or a one-off session.
    Decoy,
}

/// The events of one user, and the facts its truth record needs.
struct UserSimulation<'a> {
    config: &'a GenerateConfig,
    catalogue: &'a Catalogue,
    plan: &'a PopulationPlan,
    role: &'a Role,
    rng: ChaCha8Rng,
    interests: Interests,
    /// Interests after a shift, for shifted users.
    new_interests: Option<Interests>,
    sessions_per_day: f64,
    session_length: f64,
    events: Vec<RawEvent>,
    /// Events of the one-off session, the burst or the trend sessions, in time order. The first
    /// one's time is the decoy's `ts`.
    decoy_events: Vec<RawEvent>,
}

impl<'a> UserSimulation<'a> {
    fn new(
        config: &'a GenerateConfig,
        catalogue: &'a Catalogue,
        plan: &'a PopulationPlan,
        role: &'a Role,
        mut rng: ChaCha8Rng,
    ) -> UserSimulation<'a> {
        let interests = Interests::sample(catalogue, &[], &mut rng);
        let new_interests = match role {
            Role::Shift { .. } => Some(Interests::sample(catalogue, &interests.families, &mut rng)),
            _ => None,
        };

        let mut sessions_per_day = lognormal(&mut rng, SESSIONS_PER_DAY.0, SESSIONS_PER_DAY.1);
        let mut session_length = lognormal(&mut rng, SESSION_LENGTH.0, SESSION_LENGTH.1);
        let low_share = if config.harder {
            LOW_ACTIVITY_SHARE.1
        } else {
            LOW_ACTIVITY_SHARE.0
        };
        if rng.gen::<f64>() < low_share {
            sessions_per_day *= LOW_ACTIVITY_FACTOR;
        }
        let active_share = if config.harder {
            SHIFT_ACTIVE_SHARE.1
        } else {
            SHIFT_ACTIVE_SHARE.0
        };
        if matches!(role, Role::Shift { .. }) && rng.gen::<f64>() < active_share {
            sessions_per_day = sessions_per_day.max(SESSIONS_PER_DAY.0);
            session_length = session_length.max(SESSION_LENGTH.0);
        }

        UserSimulation {
            config,
            catalogue,
            plan,
            role,
            rng,
            interests,
            new_interests,
            sessions_per_day,
            session_length,
            events: Vec::new(),
            decoy_events: Vec::new(),
        }
    }

    fn stream_end(&self) -> i64 {
        self.config.start_ts + i64::from(self.config.days) * DAY_SECS
    }

    /// Draws a time of day from the diurnal profile, as seconds after midnight.
    fn sample_time_of_day(&mut self) -> i64 {
        self.plan.hours.sample(&mut self.rng) as i64 * HOUR_SECS + self.rng.gen_range(0..HOUR_SECS)
    }

    fn session_starts(&mut self) -> Vec<i64> {
        let mut starts = Vec::new();
        for day in 0..i64::from(self.config.days) {
            for _ in 0..poisson(&mut self.rng, self.sessions_per_day) {
                starts.push(self.config.start_ts + day * DAY_SECS + self.sample_time_of_day());
            }
        }
        starts.sort_unstable();
        starts
    }

    fn simulate(&mut self) {
        let mut starts = self.session_starts();
        if starts.is_empty() {
            starts.push(self.config.start_ts + self.sample_time_of_day());
        }

        let mut previous: Option<(u32, u32, NeedSource)> = None;
        let mut session_end = i64::MIN;
        for start in starts {
            // Two draws close together would otherwise interleave, so the later one waits.
            let start = start.max(session_end + 1_900);
            let need = self.choose_need(start, previous);
            let length = self.sample_session_length();
            let (events, end) = self.run_session(start, need, length);
            session_end = end;
            if need.2 == NeedSource::Decoy {
                self.decoy_events.extend_from_slice(&events);
            }
            self.events.extend(events);
            previous = Some(need);
        }
        self.add_sessions_up_to_minimum();

        match self.role {
            Role::OneOff => self.plant_one_off(),
            Role::Burst => self.plant_burst(),
            _ => {}
        }
        self.events.sort_by_key(|event| event.ts);
    }

    /// Adds sessions at random times until the user has `MIN_USER_EVENTS` events.
    fn add_sessions_up_to_minimum(&mut self) {
        // A bounded number of tries, because sessions that start near the end may be empty.
        for _ in 0..50 {
            if self.events.len() >= MIN_USER_EVENTS {
                break;
            }
            let day = self.rng.gen_range(0..i64::from(self.config.days));
            let start = self.config.start_ts + day * DAY_SECS + self.sample_time_of_day();
            let need = self.choose_need(start, None);
            let length = self.sample_session_length();
            let (events, _) = self.run_session(start, need, length);
            if need.2 == NeedSource::Decoy {
                self.decoy_events.extend_from_slice(&events);
                self.decoy_events.sort_by_key(|event| event.ts);
            }
            self.events.extend(events);
        }
    }

    /// Chooses the session's family, focus leaf and their source at time `at`.
    fn choose_need(
        &mut self,
        at: i64,
        previous: Option<(u32, u32, NeedSource)>,
    ) -> (u32, u32, NeedSource) {
        let (window_start, window_end) = self.plan.trend_window;
        if matches!(self.role, Role::Seasonal)
            && (window_start..window_end).contains(&at)
            && self.rng.gen::<f64>() < SEASONAL_BOOST
        {
            let families = &self.plan.trend_families;
            let family = families[self.rng.gen_range(0..families.len())];
            return (
                family,
                self.catalogue.sample_leaf(family, &mut self.rng),
                NeedSource::Decoy,
            );
        }

        let source = self.interest_source(at);
        if let Some(previous) = previous.filter(|previous| previous.2 == source) {
            if self.rng.gen::<f64>() < NEED_REPEAT {
                return previous;
            }
        }
        let interests = select_interests(&self.interests, &self.new_interests, source);
        let family = if self.rng.gen::<f64>() < EXPLORE {
            let excluded = interests.families.clone();
            self.catalogue
                .sample_family_outside(&excluded, &mut self.rng)
        } else {
            interests.sample_family(&mut self.rng)
        };
        let leaf = interests.sample_focus(self.catalogue, family, &mut self.rng);
        let source = if interests.families.contains(&family) {
            source
        } else {
            NeedSource::Explore
        };
        (family, leaf, source)
    }

    /// Returns whether a need at time `at` comes from the old or the new interests.
    fn interest_source(&mut self, at: i64) -> NeedSource {
        let Role::Shift { onset, ramp_secs } = *self.role else {
            return NeedSource::OldInterest;
        };
        if at < onset {
            return NeedSource::OldInterest;
        }
        let progress = if ramp_secs == 0 {
            1.0
        } else {
            (at - onset) as f64 / ramp_secs as f64
        };
        if self.rng.gen::<f64>() < progress {
            NeedSource::NewInterest
        } else {
            NeedSource::OldInterest
        }
    }

    fn sample_session_length(&mut self) -> usize {
        let length = lognormal(&mut self.rng, self.session_length, SESSION_LENGTH_SPREAD);
        (length.round() as usize).clamp(1, 300)
    }

    fn sample_gap(&mut self) -> i64 {
        lognormal(&mut self.rng, EVENT_GAP.0, EVENT_GAP.1).clamp(1.0, MAX_EVENT_GAP_SECS) as i64
    }

    fn sample_behavior(&mut self) -> Behavior {
        let mut draw: f64 = self.rng.gen();
        for (behavior, share) in ACTION_SHARES {
            if draw < share {
                return behavior;
            }
            draw -= share;
        }
        Behavior::View
    }

    /// Simulates one session and returns its events and the time of its last event.
    fn run_session(
        &mut self,
        start: i64,
        (mut family, focus, source): (u32, u32, NeedSource),
        length: usize,
    ) -> (Vec<RawEvent>, i64) {
        let mut leaf = focus;
        let end = self.stream_end();
        let mut events: Vec<RawEvent> = Vec::with_capacity(length);
        let mut viewed: Vec<(u32, u32)> = Vec::new();
        let mut at = start;
        for position in 0..length {
            if position > 0 {
                at += self.sample_gap();
                let draw: f64 = self.rng.gen();
                let from_interests =
                    matches!(source, NeedSource::OldInterest | NeedSource::NewInterest);
                if draw < FAMILY_JUMP && from_interests {
                    let interests = select_interests(&self.interests, &self.new_interests, source);
                    family = interests.sample_family(&mut self.rng);
                    leaf = self.catalogue.sample_leaf(family, &mut self.rng);
                } else if draw < FAMILY_JUMP + LEAF_SWITCH {
                    leaf = if family == self.catalogue.family_of(focus)
                        && self.rng.gen::<f64>() < FOCUS_RETURN
                    {
                        focus
                    } else {
                        self.catalogue.sample_leaf(family, &mut self.rng)
                    };
                }
            }
            if at >= end {
                break;
            }

            let behavior = self.sample_behavior();
            let reuse = if behavior == Behavior::View {
                ITEM_REVIEW
            } else {
                ACTION_ON_VIEWED
            };
            let (event_leaf, item) = if !viewed.is_empty() && self.rng.gen::<f64>() < reuse {
                viewed[self.rng.gen_range(0..viewed.len())]
            } else {
                (leaf, self.catalogue.sample_item(leaf, &mut self.rng))
            };
            if behavior == Behavior::View {
                viewed.push((event_leaf, item));
            }
            events.push(RawEvent {
                ts: at,
                leaf: event_leaf,
                item,
                behavior,
            });
        }
        (events, at)
    }

    /// Removes the user's regular events in `from..to`, to make room for a decoy.
    fn clear_span(&mut self, from: i64, to: i64) {
        self.events
            .retain(|event| event.ts < from || event.ts >= to);
    }

    /// Draws a decoy start between the end of the first day and the start of the last day.
    fn sample_decoy_start(&mut self, diurnal: bool) -> i64 {
        let day = self.rng.gen_range(1..i64::from(self.config.days) - 1);
        let time = if diurnal {
            self.sample_time_of_day()
        } else {
            self.rng.gen_range(0..DAY_SECS)
        };
        self.config.start_ts + day * DAY_SECS + time
    }

    fn plant_one_off(&mut self) {
        let start = self.sample_decoy_start(true);
        let mut excluded = self.interests.families.clone();
        excluded.extend_from_slice(&self.plan.trend_families);
        let family = self
            .catalogue
            .sample_family_outside(&excluded, &mut self.rng);
        let leaf = self.catalogue.sample_leaf(family, &mut self.rng);
        let length = self.rng.gen_range(3..=12);

        let (mut events, end) = self.run_session(start, (family, leaf, NeedSource::Decoy), length);
        if self.rng.gen::<bool>() {
            if let Some(last) = events.last_mut() {
                last.behavior = Behavior::Buy;
            }
        }
        self.clear_span(start - 1_800, end + 1_800);
        self.decoy_events = events.clone();
        self.events.extend(events);
    }

    fn plant_burst(&mut self) {
        let start = self.sample_decoy_start(false);
        let length = self.rng.gen_range(50..=300);
        let mut events = Vec::with_capacity(length);
        let mut at = start;
        let mut leaf = self
            .catalogue
            .sample_leaf(self.catalogue.sample_family(&mut self.rng), &mut self.rng);
        for position in 0..length {
            if position > 0 {
                at += self.rng.gen_range(BURST_GAP_SECS);
                if self.rng.gen::<f64>() < BURST_FAMILY_SWITCH {
                    let family = self.catalogue.sample_family(&mut self.rng);
                    leaf = self.catalogue.sample_leaf(family, &mut self.rng);
                }
            }
            let item = self.catalogue.sample_item(leaf, &mut self.rng);
            events.push(RawEvent {
                ts: at,
                leaf,
                item,
                behavior: Behavior::View,
            });
        }
        self.clear_span(start - 1_800, at + 1_800);
        self.decoy_events = events.clone();
        self.events.extend(events);
    }

    /// Builds the user's truth record, if the user has one.
    fn truth_record(&self, catalogue: &Catalogue, user: &Id) -> Option<TruthRecord> {
        let decoy = |kind: DecoyKind| {
            let first = self.decoy_events.first()?;
            Some(TruthRecord::Decoy {
                user: user.clone(),
                decoy: kind,
                ts: first.ts,
                categories: dominant_leaves(catalogue, &self.decoy_events, 3),
            })
        };
        match *self.role {
            Role::Normal => None,
            Role::OneOff => decoy(DecoyKind::OneOff),
            Role::Burst => decoy(DecoyKind::Burst),
            Role::Seasonal => decoy(DecoyKind::Seasonal),
            Role::Shift { onset, ramp_secs } => {
                let split = self.events.partition_point(|event| event.ts < onset);
                let settled = self
                    .events
                    .partition_point(|event| event.ts < onset + ramp_secs);
                let after = if settled < self.events.len() {
                    settled
                } else {
                    split
                };
                Some(TruthRecord::InterestShift {
                    user: user.clone(),
                    onset_ts: onset,
                    from: dominant_leaves(catalogue, &self.events[..split], 2),
                    to: dominant_leaves(catalogue, &self.events[after..], 2),
                })
            }
        }
    }
}

/// Returns the new interests for `NewInterest` needs of a shifted user, else the old ones.
fn select_interests<'b>(
    interests: &'b Interests,
    new_interests: &'b Option<Interests>,
    source: NeedSource,
) -> &'b Interests {
    match (source, new_interests) {
        (NeedSource::NewInterest, Some(new_interests)) => new_interests,
        _ => interests,
    }
}

/// Returns the ids of the `count` leaves with the most events, ties broken by first appearance.
fn dominant_leaves(catalogue: &Catalogue, events: &[RawEvent], count: usize) -> Vec<Id> {
    let mut counts: Vec<(u32, usize, usize)> = Vec::new();
    for (position, event) in events.iter().enumerate() {
        match counts.iter_mut().find(|entry| entry.0 == event.leaf) {
            Some(entry) => entry.1 += 1,
            None => counts.push((event.leaf, 1, position)),
        }
    }
    counts.sort_by_key(|&(_, events, first)| (std::cmp::Reverse(events), first));
    counts
        .iter()
        .take(count)
        .map(|&(leaf, _, _)| catalogue.leaf_id(leaf))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates every user whose role matches, calls `check` on each and returns their number.
    fn simulate_users(
        config: &GenerateConfig,
        role_matches: impl Fn(&Role) -> bool,
        check: impl Fn(&UserSimulation, &Catalogue),
    ) -> usize {
        let mut rng = stream_rng(config.seed, 0);
        let catalogue = Catalogue::new(&mut rng);
        let plan = PopulationPlan::new(config, &mut rng);
        let mut checked = 0;
        for (index, role) in plan
            .roles
            .iter()
            .enumerate()
            .filter(|(_, role)| role_matches(role))
        {
            let user_rng = stream_rng(config.seed, index as u64 + 1);
            let mut user = UserSimulation::new(config, &catalogue, &plan, role, user_rng);
            user.simulate();
            check(&user, &catalogue);
            checked += 1;
        }
        checked
    }

    #[test]
    fn shifted_users_follow_new_families() {
        let config = GenerateConfig::default();
        let totals = std::cell::RefCell::new([0usize; 4]);
        let checked = simulate_users(
            &config,
            |role| matches!(role, Role::Shift { .. }),
            |user, catalogue| {
                let Role::Shift { onset, ramp_secs } = *user.role else {
                    unreachable!()
                };
                let new_families = &user.new_interests.as_ref().unwrap().families;
                let mut totals = totals.borrow_mut();
                for event in &user.events {
                    let family = catalogue.family_of(event.leaf);
                    if event.ts < onset {
                        totals[0] += 1;
                        totals[1] += usize::from(user.interests.families.contains(&family));
                    } else if event.ts >= onset + ramp_secs {
                        totals[2] += 1;
                        totals[3] += usize::from(new_families.contains(&family));
                    }
                }
            },
        );
        assert_eq!(checked, 400);
        let [before, in_old, after, in_new] = totals.into_inner();
        let old_share = in_old as f64 / before as f64;
        let new_share = in_new as f64 / after as f64;
        assert!(
            old_share >= 0.85,
            "{old_share:.3} of events before the onset in old families"
        );
        assert!(
            new_share >= 0.85,
            "{new_share:.3} of events after the ramp in new families"
        );
    }

    #[test]
    fn one_off_session_is_unrelated_and_alone() {
        let config = GenerateConfig::default();
        let checked = simulate_users(
            &config,
            |role| matches!(role, Role::OneOff),
            |user, catalogue| {
                let session = &user.decoy_events;
                assert!(
                    (3..=12).contains(&session.len()),
                    "one-off of {} events",
                    session.len()
                );
                let family = catalogue.family_of(session[0].leaf);
                assert!(!user.interests.families.contains(&family));
                for event in session {
                    assert_eq!(catalogue.family_of(event.leaf), family);
                }
                let (start, end) = (session[0].ts, session[session.len() - 1].ts);
                let others = user
                    .events
                    .iter()
                    .filter(|e| (start - 1_800..end + 1_800).contains(&e.ts))
                    .count();
                assert_eq!(
                    others,
                    session.len(),
                    "other events within 30 min of the one-off"
                );
            },
        );
        assert_eq!(checked, 100);
    }

    #[test]
    fn family_of_inverts_family_leaves() {
        let catalogue = Catalogue::new(&mut stream_rng(1, 0));
        for (family, leaves) in catalogue.family_leaves.iter().enumerate() {
            for &leaf in leaves {
                assert_eq!(catalogue.family_of(leaf), family as u32);
            }
        }
    }

    #[test]
    fn scattered_ids_are_a_permutation() {
        let ids = ScatteredIds::new(101, &mut stream_rng(3, 0));
        let mut values: Vec<u64> = (0..101).map(|index| ids.apply(index)).collect();
        values.sort_unstable();
        assert_eq!(values, (1..=101).collect::<Vec<u64>>());
    }

    #[test]
    fn poisson_mean_matches() {
        let mut rng = stream_rng(5, 0);
        for mean in [0.3, 1.65, 12.0, 50.0] {
            let total: u32 = (0..20_000).map(|_| poisson(&mut rng, mean)).sum();
            let sample_mean = f64::from(total) / 20_000.0;
            assert!(
                (sample_mean - mean).abs() < 0.05 * mean + 0.02,
                "mean {mean}: {sample_mean}"
            );
        }
    }

    #[test]
    fn cumulative_samples_by_weight() {
        let weights = Cumulative::new([1.0, 0.0, 3.0]);
        let mut rng = stream_rng(9, 0);
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[weights.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!(
            (share - 0.75).abs() < 0.01,
            "share of the weight-3 index {share}"
        );
    }
}
