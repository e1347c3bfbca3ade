//! Learned models over per-user windows: segments, interest prediction and anomaly scores.
//!
//! The shift detector in [`crate::detector`] judges each user against their own history. The
//! models here add what the population teaches, fitted offline on windows of many users and
//! then applied to one window at a time:
//!
//! 1. [`ReferenceProfile::window_features`] turns one user's window of events into the fixed
//!    vector named by [`FEATURE_NAMES`].
//! 2. [`FeatureSelector`] drops near-constant and redundant features, and [`Standardizer`]
//!    scales the rest.
//! 3. [`Segmenter`] assigns a segment by k-means.
//! 4. [`InterestModel`] predicts the next window's [`Shares`] of the user's top groups, and
//!    [`surprise`] measures how far the observed shares are from the prediction.
//! 5. [`IsolationForest`] and [`OneClassSvm`] score how unusual the window is.
//!
//! [`ModelSet`] runs these steps in order, fits them all from one seed, and saves them as one
//! JSON document with a format version.
//!
//! Every fit validates its parameters (the error names the value) and rejects NaN or infinite
//! inputs. Where data cannot support a setting (fewer distinct rows than segments, fewer rows
//! than a sample size), the fit lowers it and returns a [`FitWarning`] instead of failing.
//!
//! [`UserHistory`] cuts each user's events into windows for these steps. `veer run --models`
//! builds the windows, fits and scores in dataflow operators (`veer-operators`);
//! `veer::replay::replay_with_models` is their single-threaded reference.

mod anomaly;
mod error;
mod features;
mod forest;
mod interest;
mod kmeans;
mod linear;
mod one_class_solver;
mod preprocess;
mod schedule;
mod segments;
mod tuning;
mod windows;

use std::borrow::Cow;
use std::io::{Read, Write};
use std::time::Instant;

use ndarray::{Array2, ArrayView2};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use anomaly::{IsolationForest, IsolationParams, OneClassParams, OneClassSvm};
pub use error::{FitWarning, MlError};
pub use features::{
    attribute_values, FeatureSpec, GroupDistribution, ReferenceProfile, Shares, WindowConfig,
    WindowEvent, WindowFeatures, ATTRIBUTE_FEATURE_COUNT, ENCODED_ATTRIBUTE_COLUMNS, FEATURE_COUNT,
    FEATURE_NAMES, SHARE_SLOTS, TOP_GROUPS,
};
pub use forest::{ForestParams, LeafValue, RegressionForest};
pub use interest::{
    evaluate, same_as_last, surprise, Evaluation, InterestModel, InterestParams, InterestPredictor,
    InterestTarget, UpdatedShares, SURPRISE_SMOOTHING,
};
pub use linear::{LinearParams, LinearRegressor};
pub use preprocess::{FeatureSelector, SelectorParams, Standardizer};
pub use schedule::{
    fit_version, version_rows, BootstrapStart, Schedule, ScheduleSettings, SkippedSlot,
};
pub use segments::{SegmentParams, Segmenter, AUTO_K_MAX, AUTO_K_MIN};
pub use tuning::{split_users, tune_interest, InterestGrid, InterestTuning, TunedCandidate};
pub use windows::{
    score_window, score_window_batch, screen_window_batch, training_rows, verdict, ClosedWindow,
    Screened, UserHistory, WindowSettings,
};

use error::check_matrix;

/// Format version of a saved [`ModelSet`]. [`ModelSet::load`] rejects any other, so bump it when
/// a saved model's layout or [`FEATURE_NAMES`] change.
pub const MODEL_VERSION: u32 = 3;

/// One training window: its features, its shares over the updated top groups and, when the
/// user was active in the next window, the shares observed there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRow {
    pub features: WindowFeatures,
    pub updated_shares: UpdatedShares,
    /// Next-window shares of the top groups of this window's reference, or `None` when the
    /// next window is empty. Rows without them still train the segments and anomaly models.
    pub next_shares: Option<Shares>,
}

/// Settings of every model in a [`ModelSet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelParams {
    pub selector: SelectorParams,
    pub segments: SegmentParams,
    pub interest: InterestParams,
    pub isolation: IsolationParams,
    pub one_class: OneClassParams,
    /// Maximum training rows. A larger training set is cut to a seeded random sample of this
    /// many rows, kept in their order, before any model is fitted.
    pub max_rows: usize,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            selector: SelectorParams::default(),
            segments: SegmentParams::default(),
            interest: InterestParams::default(),
            isolation: IsolationParams::default(),
            one_class: OneClassParams::default(),
            max_rows: 3000,
        }
    }
}

/// Both anomaly scores of a window, each in 0..1 with higher meaning more anomalous.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScores {
    pub isolation_forest: f64,
    pub one_class_svm: f64,
}

/// Every fitted model, in the order a window passes through them.
///
/// # Examples
///
/// ```
/// use veer_models::ml::{
///     InterestPredictor, ModelSet, TrainingRow, UpdatedShares, WindowFeatures, FEATURE_COUNT,
/// };
///
/// // 60 synthetic windows: activity and top-group share vary together.
/// let rows: Vec<TrainingRow> = (0..60)
///     .map(|index| {
///         let level = (index % 6) as f64 / 6.0;
///         let mut values = vec![0.0; FEATURE_COUNT];
///         values[0] = 1.0 + 3.0 * level + (index % 5) as f64 * 0.1;
///         values[10] = (index % 7) as f64 / 7.0;
///         values[13] = level;
///         values[16] = 1.0 - level;
///         let features = WindowFeatures::from_values(values).unwrap();
///         let shares = [level, 0.0, 0.0, 1.0 - level];
///         let updated_shares = UpdatedShares { window: shares, reference: shares };
///         TrainingRow { features, updated_shares, next_shares: Some(shares) }
///     })
///     .collect();
/// let models = ModelSet::fit(&rows, 42).unwrap();
///
/// let window = &rows[3].features;
/// let updated = &rows[3].updated_shares;
/// let shares = models.predict_interest(window, updated, InterestPredictor::Forest).unwrap();
/// assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
/// let scores = models.anomaly_scores(window).unwrap();
/// assert!((0.0..=1.0).contains(&scores.isolation_forest));
///
/// let mut saved = Vec::new();
/// models.save(&mut saved).unwrap();
/// let loaded = ModelSet::load(saved.as_slice()).unwrap();
/// assert_eq!(loaded.anomaly_scores(window).unwrap(), scores);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSet {
    version: u32,
    spec: FeatureSpec,
    selector: FeatureSelector,
    standardizer: Standardizer,
    segmenter: Segmenter,
    interest: InterestModel,
    isolation_forest: IsolationForest,
    one_class_svm: OneClassSvm,
    warnings: Vec<FitWarning>,
}

impl ModelSet {
    /// Fits every model with default settings, as [`ModelSet::fit_with`] does.
    pub fn fit(rows: &[TrainingRow], seed: u64) -> Result<ModelSet, MlError> {
        ModelSet::fit_with(rows, &ModelParams::default(), seed)
    }

    /// Fits every model on the training windows, or on a sample of `params.max_rows` of them.
    /// The same rows, settings and seed give the same models.
    ///
    /// Fails on an empty input, on NaN or infinite features, and when no row has next-window
    /// shares to train the interest model on.
    pub fn fit_with(
        rows: &[TrainingRow],
        params: &ModelParams,
        seed: u64,
    ) -> Result<ModelSet, MlError> {
        if params.max_rows == 0 {
            return Err(error::invalid("model set", "max_rows", "0", "at least 1"));
        }
        let rows = &sample_rows(rows, params.max_rows, seed)[..];
        let mut timer = StepTimer::new();
        let spec = FeatureSpec::window();
        let raw = feature_matrix(rows);
        check_matrix("model set", raw.view(), Some(spec.names()))?;
        let mut warnings = Vec::new();

        let (selector, selector_warnings) =
            FeatureSelector::fit(raw.view(), spec.names(), &params.selector)?;
        warnings.extend(selector_warnings);
        let selected = selector.select(raw.view())?;
        timer.finish("feature selection");
        let standardizer = Standardizer::fit(selected.view())?;
        let scaled = standardizer.transform(selected.view())?;
        timer.finish("standardizer");

        let (segmenter, segment_warnings) =
            Segmenter::fit(scaled.view(), &params.segments, component_seed(seed, 0))?;
        warnings.extend(segment_warnings);
        let row_segments = segmenter.predict_all(scaled.view())?;
        timer.finish("k-means segments");

        let interest = fit_interest(
            rows,
            scaled.view(),
            &row_segments,
            segmenter.k(),
            &params.interest,
            seed,
        )?;
        timer.finish("interest model");

        let (isolation_forest, isolation_warnings) =
            IsolationForest::fit(scaled.view(), &params.isolation, component_seed(seed, 2))?;
        warnings.extend(isolation_warnings);
        timer.finish("isolation forest");
        let (one_class_svm, svm_warnings) =
            OneClassSvm::fit(scaled.view(), &params.one_class, component_seed(seed, 3))?;
        warnings.extend(svm_warnings);
        timer.finish("one-class SVM");

        Ok(ModelSet {
            version: MODEL_VERSION,
            spec,
            selector,
            standardizer,
            segmenter,
            interest,
            isolation_forest,
            one_class_svm,
            warnings,
        })
    }

    /// Returns a copy whose interest model is fitted again on `rows` with `interest`, keeping
    /// every other model, so tuning can compare interest settings without fitting the
    /// segments and anomaly models again. When `self` was fitted on the same rows, `max_rows`
    /// and seed, the copy equals what [`ModelSet::fit_with`] fits with these interest settings.
    pub fn refit_interest(
        &self,
        rows: &[TrainingRow],
        interest: &InterestParams,
        max_rows: usize,
        seed: u64,
    ) -> Result<ModelSet, MlError> {
        if max_rows == 0 {
            return Err(error::invalid("model set", "max_rows", "0", "at least 1"));
        }
        let rows = &sample_rows(rows, max_rows, seed)[..];
        let raw = feature_matrix(rows);
        let scaled = self
            .standardizer
            .transform(self.selector.select(raw.view())?.view())?;
        let row_segments = self.segmenter.predict_all(scaled.view())?;
        let interest = fit_interest(
            rows,
            scaled.view(),
            &row_segments,
            self.segmenter.k(),
            interest,
            seed,
        )?;
        Ok(ModelSet {
            interest,
            ..self.clone()
        })
    }

    /// Returns the settings that fitting lowered and the fallbacks it took, for the log.
    pub fn warnings(&self) -> &[FitWarning] {
        &self.warnings
    }

    /// Returns the definition of the feature vector the models were fitted on.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Returns the names of the features the models use, in input order.
    pub fn selected_features(&self) -> &[String] {
        self.selector.selected_names()
    }

    /// Returns the segmenter, for its k and centroids.
    pub fn segmenter(&self) -> &Segmenter {
        &self.segmenter
    }

    /// Returns the model input for a window: its selected features, standardized.
    pub fn model_input(&self, window: &WindowFeatures) -> Result<Vec<f64>, MlError> {
        let mut input = self.selector.select_row(window.values())?;
        self.standardizer.transform_in_place(&mut input)?;
        Ok(input)
    }

    /// Returns the window's segment.
    pub fn segment(&self, window: &WindowFeatures) -> Result<usize, MlError> {
        self.segment_of_input(&self.model_input(window)?)
    }

    /// Returns the segment of a model input from [`ModelSet::model_input`].
    pub fn segment_of_input(&self, input: &[f64]) -> Result<usize, MlError> {
        self.segmenter.predict(input)
    }

    /// Predicts the next window's shares of the user's top groups, from the window's features
    /// and its shares over those groups.
    pub fn predict_interest(
        &self,
        window: &WindowFeatures,
        updated: &UpdatedShares,
        predictor: InterestPredictor,
    ) -> Result<Shares, MlError> {
        let input = self.model_input(window)?;
        let segment = self.segment_of_input(&input)?;
        self.predict_interest_from_input(updated, &input, segment, predictor)
    }

    /// Predicts as [`ModelSet::predict_interest`] does, from the window's model input and
    /// segment when the caller has them already.
    pub fn predict_interest_from_input(
        &self,
        updated: &UpdatedShares,
        input: &[f64],
        segment: usize,
        predictor: InterestPredictor,
    ) -> Result<Shares, MlError> {
        self.interest.predict(predictor, input, segment, updated)
    }

    /// Returns the weight of the window's shares in the `SmoothedLast` prediction.
    pub fn smoothed_last_weight(&self) -> f64 {
        self.interest.last_weight()
    }

    /// Scores how unusual the window is.
    pub fn anomaly_scores(&self, window: &WindowFeatures) -> Result<AnomalyScores, MlError> {
        let input = self.model_input(window)?;
        Ok(self.anomaly_scores_of_inputs(&[&input])?[0])
    }

    /// Scores model inputs from [`ModelSet::model_input`] as [`ModelSet::anomaly_scores`] does,
    /// all at once, and fails if any input is invalid. Each score equals that of its input
    /// scored alone.
    pub fn anomaly_scores_of_inputs(
        &self,
        inputs: &[&[f64]],
    ) -> Result<Vec<AnomalyScores>, MlError> {
        let isolation = self.isolation_forest.score_rows(inputs)?;
        inputs
            .iter()
            .zip(isolation)
            .map(|(input, isolation_forest)| {
                Ok(AnomalyScores {
                    isolation_forest,
                    one_class_svm: self.one_class_svm.score(input)?,
                })
            })
            .collect()
    }

    /// Returns for each model input whether its anomaly score, the smaller of the two scores
    /// of [`ModelSet::anomaly_scores_of_inputs`], is at least `threshold`. The one-class SVM
    /// only scores the inputs whose isolation forest score reaches `threshold`.
    pub fn anomalous_inputs(
        &self,
        inputs: &[&[f64]],
        threshold: f64,
    ) -> Result<Vec<bool>, MlError> {
        let isolation = self.isolation_forest.reaches_score(inputs, threshold)?;
        inputs
            .iter()
            .zip(isolation)
            .map(|(input, reached)| Ok(reached && self.one_class_svm.score(input)? >= threshold))
            .collect()
    }

    /// Evaluates a predictor on held-out windows, skipping rows without next-window shares.
    pub fn evaluate(
        &self,
        rows: &[TrainingRow],
        predictor: InterestPredictor,
    ) -> Result<Evaluation, MlError> {
        let mut predicted = Vec::new();
        let mut observed = Vec::new();
        for row in rows {
            if let Some(next) = row.next_shares {
                predicted.push(self.predict_interest(
                    &row.features,
                    &row.updated_shares,
                    predictor,
                )?);
                observed.push(next);
            }
        }
        evaluate(&predicted, &observed)
    }

    /// Writes the models as one JSON document.
    pub fn save(&self, writer: &mut impl Write) -> Result<(), MlError> {
        serde_json::to_writer(writer, self).map_err(MlError::Save)?;
        Ok(())
    }

    /// Reads models written by [`ModelSet::save`], rejecting a different format version.
    ///
    /// NOTE: beyond the version and the JSON structure, the file is trusted. A hand-edited file
    /// whose widths or node indices disagree can load and then panic on prediction.
    pub fn load(reader: impl Read) -> Result<ModelSet, MlError> {
        ModelSet::from_document(serde_json::from_reader(reader).map_err(MlError::Load)?)
    }

    /// Reads models from a JSON document already parsed, as [`ModelSet::load`] does, for a
    /// caller that stores the models inside a larger document.
    pub fn from_document(document: serde_json::Value) -> Result<ModelSet, MlError> {
        let version = document.get("version");
        if version.and_then(serde_json::Value::as_u64) != Some(u64::from(MODEL_VERSION)) {
            return Err(MlError::VersionMismatch {
                found: version.map_or_else(|| "missing".into(), ToString::to_string),
                expected: MODEL_VERSION,
            });
        }
        serde_json::from_value(document).map_err(MlError::Load)
    }
}

/// Returns `rows`, or a seeded random sample of `max_rows` of them kept in their order.
fn sample_rows(rows: &[TrainingRow], max_rows: usize, seed: u64) -> Cow<'_, [TrainingRow]> {
    if rows.len() <= max_rows {
        return Cow::Borrowed(rows);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(component_seed(seed, 4));
    let mut picked = rand::seq::index::sample(&mut rng, rows.len(), max_rows).into_vec();
    picked.sort_unstable();
    let sampled = picked.into_iter().map(|index| rows[index].clone());
    Cow::Owned(sampled.collect())
}

/// Fits the interest model on the rows that have next-window shares, from their scaled
/// features (`scaled`, one row per entry of `rows`) and segments.
fn fit_interest(
    rows: &[TrainingRow],
    scaled: ArrayView2<'_, f64>,
    row_segments: &[usize],
    segments: usize,
    params: &InterestParams,
    seed: u64,
) -> Result<InterestModel, MlError> {
    let labelled: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| row.next_shares.is_some())
        .map(|(index, _)| index)
        .collect();
    if labelled.is_empty() {
        return Err(MlError::EmptyInput {
            model: "interest model",
            detail: "no training row has next-window shares",
        });
    }
    let labelled_rows = scaled.select(ndarray::Axis(0), &labelled);
    let labelled_segments: Vec<usize> = labelled.iter().map(|index| row_segments[*index]).collect();
    let targets: Vec<Shares> = labelled
        .iter()
        .filter_map(|index| rows[*index].next_shares)
        .collect();
    let updated: Vec<UpdatedShares> = labelled
        .iter()
        .map(|index| rows[*index].updated_shares)
        .collect();
    InterestModel::fit(
        labelled_rows.view(),
        &labelled_segments,
        segments,
        &updated,
        &targets,
        params,
        component_seed(seed, 1),
    )
}

fn feature_matrix(rows: &[TrainingRow]) -> Array2<f64> {
    let mut matrix = Array2::zeros((rows.len(), FEATURE_COUNT));
    for (mut target, row) in matrix.rows_mut().into_iter().zip(rows) {
        target.assign(&ndarray::ArrayView1::from(row.features.values()));
    }
    matrix
}

/// Logs the wall time of each step of a fit at debug level.
struct StepTimer {
    started: Instant,
}

impl StepTimer {
    fn new() -> StepTimer {
        StepTimer {
            started: Instant::now(),
        }
    }

    /// Logs the time since the previous step ended, and starts the next step.
    fn finish(&mut self, step: &'static str) {
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::debug!(step, seconds, "model fit step done");
        self.started = Instant::now();
    }
}

/// Derives the seed of one model from the set's seed, through ChaCha8 stream `component`.
fn component_seed(seed: u64, component: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(component);
    rng.next_u64()
}
