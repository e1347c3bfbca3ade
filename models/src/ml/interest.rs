//! Interest prediction: a user's next-window [`Shares`] of their top groups, from this window's
//! features, segment and [`UpdatedShares`], and how surprising the observed shares are.
//!
//! Four predictors share one interface, so they can be compared on held-out windows:
//!
//! - [`InterestPredictor::Forest`], a [`RegressionForest`];
//! - [`InterestPredictor::Linear`], a [`LinearRegressor`] on the same inputs and targets, the
//!   baseline for the forest;
//! - [`InterestPredictor::SameAsLast`], which predicts that the next window repeats this one;
//! - [`InterestPredictor::SmoothedLast`], "same as last" mixed with the user's reference
//!   shares, with the mixing weight chosen on the training windows.
//!
//! Both learned predictors read the standardized features, this window's [`UpdatedShares`]
//! and a one-hot segment, so they see what the last two predictors use. The linear model
//! predicts the change from the "same as last" shares (a residual). The forest predicts either
//! that change or the next shares themselves ([`InterestTarget`]). Raw outputs are clipped at
//! 0 and rescaled to sum to 1. [`surprise`] is the Kullback-Leibler divergence of the observed
//! shares from the smoothed predicted ones, in nats.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::error::{check_row, invalid, MlError};
use super::features::{Shares, SHARE_SLOTS};
use super::forest::{ForestParams, LeafValue, RegressionForest};
use super::linear::{LinearParams, LinearRegressor};

/// Probability mass added to each predicted slot before [`surprise`] compares shares, so a
/// slot predicted at 0 costs about `ln(1 / SURPRISE_SMOOTHING)` nats instead of infinity.
pub const SURPRISE_SMOOTHING: f64 = 1e-3;

/// Predictor of the next window's shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterestPredictor {
    /// The random forest.
    Forest,
    /// The linear model trained by gradient descent.
    Linear,
    /// The current window's shares, unchanged (see [`same_as_last`]).
    SameAsLast,
    /// The current window's shares mixed with the user's reference shares.
    SmoothedLast,
}

/// A window's shares and its user's reference shares, both over the top groups of the
/// reference after the window is folded into it.
///
/// The next window's shares are measured over these top groups, so these are the slots that
/// the interest model predicts. The window features hold shares over the top groups of the
/// reference before the window, which can rank the groups differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdatedShares {
    /// The window's shares, all 0 for a window without interest weight.
    pub window: Shares,
    /// The decayed reference's shares, with this window included.
    pub reference: Shares,
}

/// Training target of the forest in an [`InterestModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterestTarget {
    /// The change from the "same as last" shares, added back to them at prediction time.
    #[default]
    Residual,
    /// The next window's shares themselves. Mean leaves then predict shares that are never
    /// negative and sum to 1, so no slot is clipped to 0.
    Shares,
}

/// Settings of [`InterestModel`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestParams {
    pub forest: ForestParams,
    /// Training target of the forest. The linear model always predicts the residual, because it
    /// reads the "same as last" shares as inputs and so can represent either target.
    #[serde(default)]
    pub forest_target: InterestTarget,
    pub linear: LinearParams,
}

impl Default for InterestParams {
    /// Returns the settings that `tune_interest` with `InterestGrid::standard` chose on the
    /// default generated stream's bootstrap windows, by the lowest surprise on a quarter of
    /// its users (BENCHMARKS.md). The forest has 40 trees of depth 6 on quarter-size samples
    /// and predicts the shares themselves. The linear model takes 100 steps with `l2 = 0.1`.
    /// The forest grows as many sampled rows as 20 trees on half-size samples, so it fits at
    /// about that cost.
    fn default() -> Self {
        InterestParams {
            forest: ForestParams {
                trees: 40,
                max_depth: 6,
                min_samples_leaf: 3,
                sample_fraction: 0.25,
                leaf: LeafValue::Mean,
                ..ForestParams::default()
            },
            forest_target: InterestTarget::Shares,
            linear: LinearParams {
                epochs: 100,
                l2: 0.1,
                ..LinearParams::default()
            },
        }
    }
}

/// Fitted forest and linear predictors of next-window shares, and the weight of the
/// `SmoothedLast` mix.
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use veer_models::ml::{InterestModel, InterestParams, InterestPredictor, UpdatedShares};
///
/// // Users in segment 1 move to their top group, while users in segment 0 stay spread out.
/// let records = Array2::from_shape_fn((40, 1), |(row, _)| (row % 5) as f64);
/// let segments: Vec<usize> = (0..40).map(|row| row % 2).collect();
/// let spread = UpdatedShares { window: [0.25; 4], reference: [0.25; 4] };
/// let updated = vec![spread; 40];
/// let targets: Vec<[f64; 4]> = segments
///     .iter()
///     .map(|segment| if *segment == 1 { [1.0, 0.0, 0.0, 0.0] } else { [0.25; 4] })
///     .collect();
/// let params = InterestParams::default();
/// let model =
///     InterestModel::fit(records.view(), &segments, 2, &updated, &targets, &params, 1).unwrap();
/// let moved = model.predict(InterestPredictor::Forest, &[2.0], 1, &spread).unwrap();
/// assert!(moved[0] > 0.8, "{moved:?}");
/// let stayed = model.predict(InterestPredictor::Forest, &[2.0], 0, &spread).unwrap();
/// assert!(stayed[0] < 0.5, "{stayed:?}");
/// let unchanged = model.predict(InterestPredictor::SameAsLast, &[2.0], 1, &spread).unwrap();
/// assert_eq!(unchanged, [0.25; 4]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestModel {
    forest: RegressionForest,
    #[serde(default)]
    forest_target: InterestTarget,
    linear: LinearRegressor,
    /// Width of the feature rows, before the shares and the one-hot segment are appended.
    width: usize,
    segments: usize,
    /// Weight of the window's shares in the `SmoothedLast` prediction, in 0..=1. The
    /// reference's shares get the rest.
    last_weight: f64,
}

/// Candidate weights of the `SmoothedLast` mix: 0, 0.05, ..., 1.
const LAST_WEIGHT_STEPS: usize = 20;

impl InterestModel {
    /// Fits both learned predictors and the `SmoothedLast` weight on feature rows, their
    /// segments (each below `segments`), their [`UpdatedShares`], and the shares observed in
    /// each row's next window.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        row_segments: &[usize],
        segments: usize,
        updated: &[UpdatedShares],
        targets: &[Shares],
        params: &InterestParams,
        seed: u64,
    ) -> Result<InterestModel, MlError> {
        if segments == 0 {
            return Err(invalid("interest model", "segments", 0, "at least 1"));
        }
        for (rows, what) in [
            (row_segments.len(), "interest model (segments per row)"),
            (updated.len(), "interest model (updated shares per row)"),
            (targets.len(), "interest model (targets per row)"),
        ] {
            if rows != records.nrows() {
                return Err(MlError::WidthMismatch {
                    model: what,
                    expected: records.nrows(),
                    found: rows,
                });
            }
        }
        if let Some(segment) = row_segments.iter().find(|segment| **segment >= segments) {
            return Err(invalid(
                "interest model",
                "row segment",
                segment,
                "a segment below the segment count",
            ));
        }
        for shares in targets {
            check_shares("interest model target", shares)?;
        }
        for shares in updated {
            check_updated(shares)?;
        }

        let inputs = model_inputs(records, row_segments, segments, updated);
        let mut residuals = Array2::zeros((targets.len(), SHARE_SLOTS));
        for ((mut row, shares), updated) in
            residuals.rows_mut().into_iter().zip(targets).zip(updated)
        {
            let last = same_as_last(updated);
            for (slot, value) in row.iter_mut().enumerate() {
                *value = shares[slot] - last[slot];
            }
        }
        let forest = match params.forest_target {
            InterestTarget::Residual => {
                RegressionForest::fit(inputs.view(), residuals.view(), &params.forest, seed)?
            }
            InterestTarget::Shares => {
                let shares = Array2::from_shape_fn((targets.len(), SHARE_SLOTS), |(row, slot)| {
                    targets[row][slot]
                });
                RegressionForest::fit(inputs.view(), shares.view(), &params.forest, seed)?
            }
        };
        let linear = LinearRegressor::fit(inputs.view(), residuals.view(), &params.linear)?;
        Ok(InterestModel {
            forest,
            forest_target: params.forest_target,
            linear,
            width: records.ncols(),
            segments,
            last_weight: fit_last_weight(updated, targets)?,
        })
    }

    /// Returns the number of segments the model was fitted with.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Returns the weight of the window's shares in the `SmoothedLast` prediction.
    pub fn last_weight(&self) -> f64 {
        self.last_weight
    }

    /// Predicts next-window shares for one feature row in `segment`, with the row's window's
    /// [`UpdatedShares`].
    pub fn predict(
        &self,
        predictor: InterestPredictor,
        row: &[f64],
        segment: usize,
        updated: &UpdatedShares,
    ) -> Result<Shares, MlError> {
        check_row("interest model", row, self.width, None)?;
        check_updated(updated)?;
        if segment >= self.segments {
            return Err(invalid(
                "interest model",
                "segment",
                segment,
                "a segment below the fitted segment count",
            ));
        }
        let last = same_as_last(updated);
        let mut input = row.to_vec();
        append_shares(&mut input, &last, &updated.reference);
        input.extend((0..self.segments).map(|one| if one == segment { 1.0 } else { 0.0 }));
        let residual = match predictor {
            InterestPredictor::Forest => {
                let output = self.forest.predict_row(&input)?;
                if self.forest_target == InterestTarget::Shares {
                    return Ok(normalize(&output));
                }
                output
            }
            InterestPredictor::Linear => self.linear.predict_row(&input)?,
            InterestPredictor::SameAsLast => vec![0.0; SHARE_SLOTS],
            InterestPredictor::SmoothedLast => {
                return Ok(mix(&last, &updated.reference, self.last_weight));
            }
        };
        let raw: Vec<f64> = last.iter().zip(&residual).map(|(l, r)| l + r).collect();
        Ok(normalize(&raw))
    }
}

/// Returns the `SameAsLast` prediction for a window: its own shares over the updated top
/// groups, or the reference's shares when the window had no interest weight. When both are
/// empty (a new user whose only events carry no interest weight), it returns uniform shares.
pub fn same_as_last(updated: &UpdatedShares) -> Shares {
    for shares in [updated.window, updated.reference] {
        if shares.iter().sum::<f64>() > 0.0 {
            return normalize(&shares);
        }
    }
    [1.0 / SHARE_SLOTS as f64; SHARE_SLOTS]
}

/// Returns `weight * last + (1 - weight) * reference`, rescaled to sum 1.
fn mix(last: &Shares, reference: &Shares, weight: f64) -> Shares {
    let reference = if reference.iter().sum::<f64>() > 0.0 {
        normalize(reference)
    } else {
        *last
    };
    let mixed: Vec<f64> = last
        .iter()
        .zip(&reference)
        .map(|(last, reference)| weight * last + (1.0 - weight) * reference)
        .collect();
    normalize(&mixed)
}

/// Chooses the `SmoothedLast` weight with the lowest mean [`surprise`] on the training rows,
/// the log loss of the mix, from 0, 0.05, ..., 1. Ties go to the larger weight.
fn fit_last_weight(updated: &[UpdatedShares], targets: &[Shares]) -> Result<f64, MlError> {
    let mut best = (f64::INFINITY, 1.0);
    for step in (0..=LAST_WEIGHT_STEPS).rev() {
        let weight = step as f64 / LAST_WEIGHT_STEPS as f64;
        let mut total = 0.0;
        for (updated, target) in updated.iter().zip(targets) {
            let predicted = mix(&same_as_last(updated), &updated.reference, weight);
            total += surprise(&predicted, target)?;
        }
        if total < best.0 {
            best = (total, weight);
        }
    }
    Ok(best.1)
}

/// Builds the model inputs: each feature row, then its "same as last" and reference shares,
/// then a one-hot encoding of its segment.
fn model_inputs(
    records: ArrayView2<'_, f64>,
    row_segments: &[usize],
    segments: usize,
    updated: &[UpdatedShares],
) -> Array2<f64> {
    let width = records.ncols();
    let shares_width = 2 * SHARE_SLOTS;
    let mut inputs = Array2::zeros((records.nrows(), width + shares_width + segments));
    inputs.slice_mut(ndarray::s![.., ..width]).assign(&records);
    for (row, (segment, updated)) in row_segments.iter().zip(updated).enumerate() {
        let mut shares = Vec::with_capacity(shares_width);
        append_shares(&mut shares, &same_as_last(updated), &updated.reference);
        for (offset, value) in shares.into_iter().enumerate() {
            inputs[[row, width + offset]] = value;
        }
        inputs[[row, width + shares_width + segment]] = 1.0;
    }
    inputs
}

fn append_shares(input: &mut Vec<f64>, last: &Shares, reference: &Shares) {
    input.extend_from_slice(last);
    input.extend_from_slice(reference);
}

/// Rejects updated shares that are NaN, infinite or negative. All-zero shares are allowed.
fn check_updated(updated: &UpdatedShares) -> Result<(), MlError> {
    for shares in [&updated.window, &updated.reference] {
        if shares.iter().sum::<f64>() > 0.0 {
            check_shares("updated shares", shares)?;
        } else if shares.iter().any(|value| *value != 0.0) {
            return Err(MlError::InvalidShares {
                input: "updated shares",
                detail: format!(
                    "{shares:?} contains a negative or NaN value; expected shares >= 0"
                ),
            });
        }
    }
    Ok(())
}

/// Clips negative outputs to 0 and rescales them to sum 1. All-zero outputs become uniform.
fn normalize(raw: &[f64]) -> Shares {
    let mut shares = [0.0; SHARE_SLOTS];
    for (share, value) in shares.iter_mut().zip(raw) {
        *share = value.max(0.0);
    }
    let total: f64 = shares.iter().sum();
    if total > 0.0 {
        shares.iter_mut().for_each(|share| *share /= total);
    } else {
        shares = [1.0 / SHARE_SLOTS as f64; SHARE_SLOTS];
    }
    shares
}

/// Rejects shares that are NaN, infinite, negative, or all zero.
fn check_shares(input: &'static str, shares: &Shares) -> Result<(), MlError> {
    if let Some(value) = shares
        .iter()
        .find(|value| !value.is_finite() || **value < 0.0)
    {
        return Err(MlError::InvalidShares {
            input,
            detail: format!("{shares:?} contains {value}; expected finite shares >= 0"),
        });
    }
    if shares.iter().sum::<f64>() <= 0.0 {
        return Err(MlError::InvalidShares {
            input,
            detail: format!("{shares:?} sums to 0 (an empty window has no shares)"),
        });
    }
    Ok(())
}

/// Returns how surprising `observed` shares are under `predicted` ones, in nats.
///
/// This is the Kullback-Leibler divergence `sum(o * ln(o / p))` of the observed shares from
/// the predicted shares after [`SURPRISE_SMOOTHING`] is added to each predicted slot. Both
/// vectors are rescaled to sum to 1 first. It is near 0 when the prediction was right and
/// grows as observed interest lands where little was predicted.
///
/// # Examples
///
/// ```
/// use veer_models::ml::surprise;
///
/// let predicted = [0.7, 0.2, 0.1, 0.0];
/// assert!(surprise(&predicted, &predicted).unwrap() < 0.01);
/// let moved = [0.0, 0.0, 0.0, 1.0];
/// assert!(surprise(&predicted, &moved).unwrap() > 5.0);
/// assert!(surprise(&predicted, &[f64::NAN, 0.0, 0.0, 1.0]).is_err());
/// ```
pub fn surprise(predicted: &Shares, observed: &Shares) -> Result<f64, MlError> {
    check_shares("predicted shares", predicted)?;
    check_shares("observed shares", observed)?;
    let predicted_total: f64 = predicted.iter().sum();
    let observed_total: f64 = observed.iter().sum();
    let smoothed_total = 1.0 + SURPRISE_SMOOTHING * SHARE_SLOTS as f64;
    let divergence = predicted
        .iter()
        .zip(observed)
        .filter(|(_, observed)| **observed > 0.0)
        .map(|(predicted, observed)| {
            let p = (predicted / predicted_total + SURPRISE_SMOOTHING) / smoothed_total;
            let o = observed / observed_total;
            o * (o / p).ln()
        })
        .sum::<f64>();
    Ok(divergence.max(0.0))
}

/// Accuracy of predicted shares against the shares observed in held-out windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Windows compared.
    pub windows: usize,
    /// Mean absolute difference per share slot.
    pub mean_absolute_error: f64,
    /// Mean [`surprise`] per window, in nats.
    pub mean_surprise: f64,
}

/// Compares predictions with observations, window by window.
///
/// # Examples
///
/// ```
/// use veer_models::ml::evaluate;
///
/// let predicted = [[0.5, 0.5, 0.0, 0.0]];
/// let observed = [[1.0, 0.0, 0.0, 0.0]];
/// let evaluation = evaluate(&predicted, &observed).unwrap();
/// assert_eq!(evaluation.mean_absolute_error, 0.25);
/// ```
pub fn evaluate(predicted: &[Shares], observed: &[Shares]) -> Result<Evaluation, MlError> {
    if predicted.is_empty() {
        return Err(MlError::EmptyInput {
            model: "evaluation",
            detail: "no held-out windows to compare",
        });
    }
    if predicted.len() != observed.len() {
        return Err(MlError::WidthMismatch {
            model: "evaluation (observed windows)",
            expected: predicted.len(),
            found: observed.len(),
        });
    }
    let mut absolute_error = 0.0;
    let mut total_surprise = 0.0;
    for (predicted, observed) in predicted.iter().zip(observed) {
        total_surprise += surprise(predicted, observed)?;
        absolute_error += predicted
            .iter()
            .zip(observed)
            .map(|(p, o)| (p - o).abs())
            .sum::<f64>();
    }
    let windows = predicted.len();
    Ok(Evaluation {
        windows,
        mean_absolute_error: absolute_error / (windows * SHARE_SLOTS) as f64,
        mean_surprise: total_surprise / windows as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_last_falls_back_in_order() {
        let window = [0.0, 2.0, 0.0, 2.0];
        let reference = [0.5, 0.5, 0.0, 0.0];
        let both = UpdatedShares { window, reference };
        assert_eq!(same_as_last(&both), [0.0, 0.5, 0.0, 0.5]);
        let no_window = UpdatedShares {
            window: [0.0; SHARE_SLOTS],
            reference,
        };
        assert_eq!(same_as_last(&no_window), reference);
        assert_eq!(same_as_last(&UpdatedShares::default()), [0.25; SHARE_SLOTS]);
    }

    #[test]
    fn mix_weights_last_against_reference() {
        let last = [1.0, 0.0, 0.0, 0.0];
        let reference = [0.0, 1.0, 0.0, 0.0];
        assert_eq!(mix(&last, &reference, 0.75), [0.75, 0.25, 0.0, 0.0]);
        assert_eq!(mix(&last, &[0.0; SHARE_SLOTS], 0.75), last);
    }

    #[test]
    fn last_weight_follows_the_targets() {
        let updated = UpdatedShares {
            window: [1.0, 0.0, 0.0, 0.0],
            reference: [0.0, 1.0, 0.0, 0.0],
        };
        let rows = vec![updated; 4];
        // Three next windows repeat the last window and one returns to the reference, so the
        // log loss is lowest with 3/4 of the weight on the last window.
        let targets = [
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
        ];
        assert_eq!(fit_last_weight(&rows, &targets).unwrap(), 0.75);
        let repeats = [[1.0, 0.0, 0.0, 0.0]; 4];
        assert_eq!(fit_last_weight(&rows, &repeats).unwrap(), 1.0);
    }

    /// Half the users move all their interest from the last window's group to the reference's
    /// top group, and only the `mover` feature marks which, so each learned predictor must
    /// learn the change from "same as last".
    #[test]
    fn learned_predictors_learn_the_change() {
        let updated = UpdatedShares {
            window: [0.0, 1.0, 0.0, 0.0],
            reference: [1.0, 0.0, 0.0, 0.0],
        };
        let rows = 60;
        let records = Array2::from_shape_fn((rows, 1), |(row, _)| (row % 2) as f64);
        let targets: Vec<Shares> = (0..rows)
            .map(|row| {
                if row % 2 == 1 {
                    [1.0, 0.0, 0.0, 0.0]
                } else {
                    [0.0, 1.0, 0.0, 0.0]
                }
            })
            .collect();
        // Every split searches every input, so no tree misses the one informative feature.
        let mut params = InterestParams::default();
        params.forest.max_features = 1.0;
        let fit = |params: &InterestParams| {
            InterestModel::fit(
                records.view(),
                &vec![0; rows],
                1,
                &vec![updated; rows],
                &targets,
                params,
                5,
            )
            .unwrap()
        };
        for forest_target in [InterestTarget::Residual, InterestTarget::Shares] {
            params.forest_target = forest_target;
            let model = fit(&params);
            for predictor in [InterestPredictor::Forest, InterestPredictor::Linear] {
                let mover = model.predict(predictor, &[1.0], 0, &updated).unwrap();
                let stayer = model.predict(predictor, &[0.0], 0, &updated).unwrap();
                let case = format!("{predictor:?} with forest target {forest_target:?}");
                assert!(mover[0] > 0.9, "{case}: mover {mover:?}");
                assert!(stayer[1] > 0.9, "{case}: stayer {stayer:?}");
            }
        }
        let model = fit(&params);
        let same = model
            .predict(InterestPredictor::SameAsLast, &[1.0], 0, &updated)
            .unwrap();
        assert_eq!(same, updated.window);
        // Half the targets sit on each slot, so the best mix puts half the weight on each.
        assert_eq!(model.last_weight(), 0.5);
        let smoothed = model
            .predict(InterestPredictor::SmoothedLast, &[1.0], 0, &updated)
            .unwrap();
        assert_eq!(smoothed, [0.5, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn updated_shares_reject_negative_and_nan() {
        for window in [
            [-0.5, 0.0, 0.0, 0.0],
            [f64::NAN, 0.0, 0.0, 0.0],
            [-0.5, 1.0, 0.0, 0.0],
        ] {
            let updated = UpdatedShares {
                window,
                reference: [1.0, 0.0, 0.0, 0.0],
            };
            let error = check_updated(&updated).unwrap_err().to_string();
            assert!(error.contains("updated shares"), "{window:?}: {error}");
        }
        assert!(check_updated(&UpdatedShares::default()).is_ok());
    }

    #[test]
    fn normalize_clips_and_rescales() {
        assert_eq!(normalize(&[0.5, -0.2, 0.5, 1.0]), [0.25, 0.0, 0.25, 0.5]);
        assert_eq!(normalize(&[-1.0, 0.0, 0.0, 0.0]), [0.25; 4]);
    }

    #[test]
    fn surprise_rejects_empty_observation() {
        let error = surprise(&[0.25; 4], &[0.0; 4]).unwrap_err().to_string();
        assert!(error.contains("sums to 0"), "{error}");
    }

    #[test]
    fn surprise_grows_with_distance() {
        let predicted = [0.6, 0.3, 0.1, 0.0];
        let near = surprise(&predicted, &[0.5, 0.4, 0.1, 0.0]).unwrap();
        let far = surprise(&predicted, &[0.1, 0.1, 0.2, 0.6]).unwrap();
        assert!(near < far, "{near} {far}");
    }
}
