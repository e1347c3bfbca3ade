//! Interest prediction: a user's next-window [`Shares`] of their top groups, from this window's
//! features and segment, and how surprising the observed shares are.
//!
//! Three predictors share one interface, so they can be compared on held-out windows:
//!
//! - [`InterestPredictor::Forest`], a [`RegressionForest`] over the standardized features and
//!   a one-hot segment;
//! - [`InterestPredictor::Linear`], a [`LinearRegressor`] over the same input, the baseline
//!   for the forest;
//! - [`InterestPredictor::SameAsLast`], which predicts that the next window repeats this one,
//!   the baseline for both.
//!
//! Raw outputs are clipped at 0 and rescaled to sum to 1. [`surprise`] is the Kullback-Leibler
//! divergence of the observed shares from the smoothed predicted ones, in nats.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::error::{check_row, invalid, MlError};
use super::features::{Shares, WindowFeatures, SHARE_SLOTS};
use super::forest::{ForestParams, RegressionForest};
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
    /// The current window's shares, unchanged.
    SameAsLast,
}

/// Settings of [`InterestModel`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestParams {
    pub forest: ForestParams,
    pub linear: LinearParams,
}

impl Default for InterestParams {
    /// Returns a smaller forest than [`ForestParams::default`]: 20 trees of depth 8, each on a
    /// half-size bootstrap sample. On the default generated stream it fits about 3 times
    /// faster than 100 trees of depth 12, with the held-out error within 0.003 (BENCHMARKS.md).
    fn default() -> Self {
        InterestParams {
            forest: ForestParams {
                trees: 20,
                max_depth: 8,
                sample_fraction: 0.5,
                ..ForestParams::default()
            },
            linear: LinearParams::default(),
        }
    }
}

/// Fitted forest and linear predictors of next-window shares.
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use veer_models::ml::{InterestModel, InterestParams, InterestPredictor};
///
/// // Users in segment 1 move to their top group, while users in segment 0 stay spread out.
/// let records = Array2::from_shape_fn((40, 1), |(row, _)| (row % 5) as f64);
/// let segments: Vec<usize> = (0..40).map(|row| row % 2).collect();
/// let targets: Vec<[f64; 4]> = segments
///     .iter()
///     .map(|segment| if *segment == 1 { [1.0, 0.0, 0.0, 0.0] } else { [0.25; 4] })
///     .collect();
/// let model =
///     InterestModel::fit(records.view(), &segments, 2, &targets, &InterestParams::default(), 1)
///         .unwrap();
/// let last = [0.25; 4];
/// let moved = model.predict(InterestPredictor::Forest, &[2.0], 1, &last).unwrap();
/// assert!(moved[0] > 0.9, "{moved:?}");
/// let unchanged = model.predict(InterestPredictor::SameAsLast, &[2.0], 1, &last).unwrap();
/// assert_eq!(unchanged, last);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestModel {
    forest: RegressionForest,
    linear: LinearRegressor,
    /// Width of the feature rows, before the one-hot segment is appended.
    width: usize,
    segments: usize,
}

impl InterestModel {
    /// Fits both learned predictors on feature rows, their segments (each below `segments`),
    /// and the shares observed in each row's next window.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        row_segments: &[usize],
        segments: usize,
        targets: &[Shares],
        params: &InterestParams,
        seed: u64,
    ) -> Result<InterestModel, MlError> {
        if segments == 0 {
            return Err(invalid("interest model", "segments", 0, "at least 1"));
        }
        for (rows, what) in [
            (row_segments.len(), "interest model (segments per row)"),
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

        let inputs = with_segments(records, row_segments, segments);
        let mut target_matrix = Array2::zeros((targets.len(), SHARE_SLOTS));
        for (mut row, shares) in target_matrix.rows_mut().into_iter().zip(targets) {
            row.assign(&ndarray::ArrayView1::from(&shares[..]));
        }
        let forest =
            RegressionForest::fit(inputs.view(), target_matrix.view(), &params.forest, seed)?;
        let linear = LinearRegressor::fit(inputs.view(), target_matrix.view(), &params.linear)?;
        Ok(InterestModel {
            forest,
            linear,
            width: records.ncols(),
            segments,
        })
    }

    /// Returns the number of segments the model was fitted with.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Predicts next-window shares for one feature row in `segment`.
    ///
    /// `last` is the current window's shares (see [`same_as_last`]). Only the `SameAsLast`
    /// predictor reads it, but it is checked for every predictor.
    pub fn predict(
        &self,
        predictor: InterestPredictor,
        row: &[f64],
        segment: usize,
        last: &Shares,
    ) -> Result<Shares, MlError> {
        check_row("interest model", row, self.width, None)?;
        check_shares("last window shares", last)?;
        if segment >= self.segments {
            return Err(invalid(
                "interest model",
                "segment",
                segment,
                "a segment below the fitted segment count",
            ));
        }
        let mut input = row.to_vec();
        input.extend((0..self.segments).map(|one| if one == segment { 1.0 } else { 0.0 }));
        let raw = match predictor {
            InterestPredictor::Forest => self.forest.predict_row(&input)?,
            InterestPredictor::Linear => self.linear.predict_row(&input)?,
            InterestPredictor::SameAsLast => last.to_vec(),
        };
        Ok(normalize(&raw))
    }
}

/// Returns the `SameAsLast` prediction for a window: its own shares of the top groups, or the
/// reference's shares when the window had no activity.
///
/// Fails when both are empty (a user with no history and no events), since nothing is known.
pub fn same_as_last(window: &WindowFeatures) -> Result<Shares, MlError> {
    let own = window.window_shares();
    if own.iter().sum::<f64>() > 0.0 {
        return Ok(own);
    }
    let reference = window.reference_shares();
    if reference.iter().sum::<f64>() > 0.0 {
        return Ok(reference);
    }
    Err(MlError::InvalidShares {
        input: "same-as-last prediction",
        detail: "the window and the reference are both empty".into(),
    })
}

/// Appends a one-hot encoding of each row's segment to the feature rows.
fn with_segments(
    records: ArrayView2<'_, f64>,
    row_segments: &[usize],
    segments: usize,
) -> Array2<f64> {
    let width = records.ncols();
    let mut inputs = Array2::zeros((records.nrows(), width + segments));
    inputs.slice_mut(ndarray::s![.., ..width]).assign(&records);
    for (row, segment) in row_segments.iter().enumerate() {
        inputs[[row, width + segment]] = 1.0;
    }
    inputs
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
