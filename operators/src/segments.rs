//! Segments of the model path as a differential collection, for the profiles and the user
//! query endpoint.
//!
//! [`crate::score_windows`] sends each scored window's segment beside the alerts.
//! [`split_scored`] separates the two and turns the segments into the collection of each
//! user's current segment: the segment of the user's latest scored window, in force from the
//! millisecond after that window's last event. A user has no segment before the first window
//! scored by fitted models, so the collection is empty during the bootstrap period and
//! without models.

use std::cell::RefCell;
use std::rc::Rc;

use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;
use veer_models::ml::{ClosedWindow, ModelSet, ATTRIBUTE_FEATURE_COUNT, FEATURE_NAMES};
use veer_models::{Alert, Id};

/// One output record of [`crate::score_windows`].
#[derive(Clone, Debug)]
pub enum Scored {
    Alert(Alert),
    Segment(WindowSegment),
}

/// The segment of one scored window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSegment {
    pub user: Id,
    pub segment: usize,
    /// Event time from which the segment is the user's current one: one millisecond after the
    /// window's last event, in Unix milliseconds.
    pub from_ms: u64,
    /// The window's values of the attribute columns that the models selected, before
    /// standardisation, by feature name.
    pub attribute_features: Vec<(&'static str, f64)>,
}

impl WindowSegment {
    /// Returns `window`'s `segment`, with the attribute features of `columns`.
    pub fn with_columns(
        window: &ClosedWindow,
        segment: usize,
        columns: &AttributeColumns,
    ) -> WindowSegment {
        let values = window.features.values();
        let attribute_features = columns
            .columns
            .iter()
            .map(|(name, column)| (*name, values[*column]))
            .collect();
        WindowSegment {
            user: window.user.clone(),
            segment,
            from_ms: window.last_ms.max(0) as u64 + 1,
            attribute_features,
        }
    }
}

/// The attribute columns that a model set selected, by name and index in [`FEATURE_NAMES`].
/// Finding them compares names, so a caller computes them once per model set and builds each
/// window's segment with [`WindowSegment::with_columns`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttributeColumns {
    columns: Vec<(&'static str, usize)>,
}

impl AttributeColumns {
    /// Returns the attribute columns that `models` select, in [`FEATURE_NAMES`] order.
    pub fn of(models: &ModelSet) -> AttributeColumns {
        let first = FEATURE_NAMES.len() - ATTRIBUTE_FEATURE_COUNT;
        let columns = FEATURE_NAMES
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, name)| {
                models
                    .selected_features()
                    .iter()
                    .any(|selected| selected == *name)
            })
            .map(|(column, name)| (*name, column))
            .collect();
        AttributeColumns { columns }
    }
}

/// A user's latest segment and the attribute features it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct UserSegment {
    pub segment: usize,
    /// See [`WindowSegment::attribute_features`].
    pub attribute_features: Vec<(&'static str, f64)>,
}

/// A [`UserSegment`] as a checkpoint stores it: the user, the segment, and the attribute
/// features by name.
pub type SavedSegment = (Id, usize, Vec<(String, f64)>);

/// Returns the entries of a segment store as a checkpoint stores them.
pub fn save_segments(store: &FxHashMap<Id, UserSegment>) -> Vec<SavedSegment> {
    store
        .iter()
        .map(|(user, latest)| {
            let features = latest
                .attribute_features
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect();
            (user.clone(), latest.segment, features)
        })
        .collect()
}

/// Returns the segment store entry of a saved segment, or the first feature name that is not
/// one of [`FEATURE_NAMES`].
pub fn restore_segment(saved: SavedSegment) -> Result<(Id, UserSegment), String> {
    let (user, segment, features) = saved;
    let mut attribute_features = Vec::with_capacity(features.len());
    for (name, value) in features {
        let Some(known) = FEATURE_NAMES.iter().find(|known| **known == name) else {
            return Err(format!("unknown segment feature `{name}`"));
        };
        attribute_features.push((*known, value));
    }
    let latest = UserSegment {
        segment,
        attribute_features,
    };
    Ok((user, latest))
}

/// One update of the segment collection: a user's segment, its event time and +1 or -1.
pub type SegmentUpdate = ((Id, usize), u64, isize);

/// The current segment of each user of one worker, for queries served on that worker's
/// thread. It follows the scored windows as they arrive, so it may be ahead of the frontier.
pub type SegmentStore = Rc<RefCell<FxHashMap<Id, UserSegment>>>;

/// Splits the output of [`crate::score_windows`] into the alerts and the updates of the
/// segment collection, and keeps `store` at each user's latest segment.
///
/// With `emit_updates` false the update stream stays empty and only `store` is kept, for runs
/// that read no profiles. Nearly every update has its own time, so each one costs a message.
///
/// A user's segment changes by a retraction of the old one and an insertion of the new one at
/// the new window's `from_ms`. A window in the same segment as the one before sends nothing.
/// Each user's windows arrive in the order of their start, because the window operator emits
/// them so and the score operator keeps their order.
///
/// On a resume, `store` arrives filled from the checkpoint. The operator then inserts each
/// stored segment at its initial time, so the collection contains every user's segment of the
/// cut, as in an uninterrupted run. Without a resume the store starts empty and nothing extra
/// is sent.
///
/// NOTE: segments are not retracted when a user is evicted, so the collection and `store`
/// contain one row per user ever scored. A returning user's profile shows the segment of the
/// earlier stay until a window of the new stay is scored.
pub fn split_scored<'scope>(
    scored: StreamVec<'scope, u64, Scored>,
    store: SegmentStore,
    emit_updates: bool,
) -> (
    StreamVec<'scope, u64, Alert>,
    StreamVec<'scope, u64, SegmentUpdate>,
) {
    let alerts = scored.clone().flat_map(|record| match record {
        Scored::Alert(alert) => Some(alert),
        Scored::Segment(_) => None,
    });
    let updates = scored.unary(Pipeline, "SegmentUpdates", move |initial, _| {
        let mut restored = emit_updates.then(|| (initial, restored_updates(&store.borrow())));
        move |input, output| {
            let port = output.output_index();
            if let Some((capability, updates)) = restored.take() {
                let time = *capability.time();
                let mut session = output.session(&capability);
                for user_segment in updates {
                    session.give((user_segment, time, 1));
                }
            }
            input.for_each_stamp(|capability, data| {
                let mut segments: Vec<WindowSegment> = Vec::new();
                for batch in data {
                    for record in batch.drain(..) {
                        if let Scored::Segment(segment) = record {
                            segments.push(segment);
                        }
                    }
                }
                segments.sort_by(|a, b| (&a.user, a.from_ms).cmp(&(&b.user, b.from_ms)));
                let mut store = store.borrow_mut();
                for WindowSegment {
                    user,
                    segment,
                    from_ms,
                    attribute_features,
                } in segments
                {
                    let latest = UserSegment {
                        segment,
                        attribute_features,
                    };
                    let earlier = store
                        .insert(user.clone(), latest)
                        .map(|earlier| earlier.segment);
                    if !emit_updates || earlier == Some(segment) {
                        continue;
                    }
                    // The window's capability is at or before its first event, so before
                    // `from_ms`.
                    let at = capability.delayed(&from_ms, port);
                    let mut session = output.session(&at);
                    if let Some(earlier) = earlier {
                        session.give(((user.clone(), earlier), from_ms, -1));
                    }
                    session.give(((user, segment), from_ms, 1));
                }
            });
        }
    });
    (alerts, updates)
}

/// Returns the entries of a segment store restored from a checkpoint, sorted by user, as
/// members of the segment collection.
fn restored_updates(store: &FxHashMap<Id, UserSegment>) -> Vec<(Id, usize)> {
    let mut updates: Vec<(Id, usize)> = store
        .iter()
        .map(|(user, latest)| (user.clone(), latest.segment))
        .collect();
    updates.sort();
    updates
}
