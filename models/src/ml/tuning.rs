//! Choosing the interest model's settings on a validation part of the training windows.
//!
//! Held-out windows must not choose settings, or their error stops being an estimate of the
//! error on new windows. So [`tune_interest`] fits each candidate on one part of the training
//! windows (the fit part) and compares the candidates by their mean [`surprise`] on the rest
//! (the validation part). The caller then fits the chosen settings on every training window.
//! [`split_users`] picks the validation users.
//!
//! [`surprise`]: super::surprise

use std::collections::BTreeSet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{check_fraction, MlError};
use super::forest::{ForestParams, LeafValue};
use super::interest::{Evaluation, InterestParams, InterestPredictor, InterestTarget};
use super::linear::LinearParams;
use super::{ModelParams, ModelSet, TrainingRow};

/// Candidate settings of the two learned interest predictors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestGrid {
    /// Forest settings, each with the target the forest is trained on.
    pub forest: Vec<(ForestParams, InterestTarget)>,
    pub linear: Vec<LinearParams>,
}

impl InterestGrid {
    /// Returns the grid of the held-out benchmark.
    ///
    /// Every forest candidate grows about as many sampled rows into its trees as 20 trees on
    /// half-size samples, so the chosen one fits at about that cost. The forest candidates are
    /// 20 trees on 0.5, 10 on 1.0 or 40 on 0.25 of the rows, each with depth 6, 8 or 12,
    /// `min_samples_leaf` 3, 10, 30 or 100, and the residual or the shares as target. The
    /// linear candidates cross the ridge penalty `l2` (1e-4 to 10) with 100, 1,000 or 5,000
    /// gradient steps, because stopping early also regularises.
    pub fn standard() -> InterestGrid {
        let mut forest = Vec::new();
        for target in [InterestTarget::Residual, InterestTarget::Shares] {
            for (trees, sample_fraction) in [(20, 0.5), (10, 1.0), (40, 0.25)] {
                for max_depth in [6, 8, 12] {
                    for min_samples_leaf in [3, 10, 30, 100] {
                        let params = ForestParams {
                            trees,
                            max_depth,
                            min_samples_leaf,
                            sample_fraction,
                            leaf: LeafValue::Mean,
                            ..ForestParams::default()
                        };
                        forest.push((params, target));
                    }
                }
            }
        }
        let mut linear = Vec::new();
        for l2 in [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0] {
            for epochs in [100, 1000, 5000] {
                linear.push(LinearParams {
                    epochs,
                    l2,
                    ..LinearParams::default()
                });
            }
        }
        InterestGrid { forest, linear }
    }
}

/// One candidate's settings and its score on the validation windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedCandidate {
    /// The predictor whose settings were varied.
    pub predictor: InterestPredictor,
    pub params: InterestParams,
    pub validation: Evaluation,
}

/// The settings [`tune_interest`] chose, and every candidate's validation score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterestTuning {
    /// The forest and the linear settings with the lowest validation surprise, each chosen
    /// separately.
    pub chosen: InterestParams,
    /// Forest candidates first, then linear candidates, each in grid order.
    pub candidates: Vec<TunedCandidate>,
    /// The "same as last" and "smoothed last" predictors on the validation windows, for
    /// comparison.
    pub baselines: Vec<(InterestPredictor, Evaluation)>,
}

/// Chooses the forest's and the linear model's settings from `grid` by the lowest mean
/// surprise on `validation_rows`, after fitting each candidate on `fit_rows`.
///
/// The feature selection, segments and anomaly models are fitted once on `fit_rows` with
/// `params`, and only the interest model is fitted again per candidate. While the forest's
/// candidates are tried, the linear model keeps `params.interest.linear`, and the other way
/// round. Ties go to the earlier candidate. Fails when either part has no row with
/// next-window shares, or when a grid list is empty.
pub fn tune_interest(
    fit_rows: &[TrainingRow],
    validation_rows: &[TrainingRow],
    params: &ModelParams,
    grid: &InterestGrid,
    seed: u64,
) -> Result<InterestTuning, MlError> {
    if grid.forest.is_empty() || grid.linear.is_empty() {
        return Err(MlError::EmptyInput {
            model: "interest tuning",
            detail: "the grid has no forest or no linear candidate",
        });
    }
    let base = ModelSet::fit_with(fit_rows, params, seed)?;
    let mut baselines = Vec::new();
    for predictor in [
        InterestPredictor::SameAsLast,
        InterestPredictor::SmoothedLast,
    ] {
        baselines.push((predictor, base.evaluate(validation_rows, predictor)?));
    }
    let score = |interest: InterestParams, predictor: InterestPredictor| {
        let model_set = base.refit_interest(fit_rows, &interest, params.max_rows, seed)?;
        let validation = model_set.evaluate(validation_rows, predictor)?;
        Ok::<_, MlError>(TunedCandidate {
            predictor,
            params: interest,
            validation,
        })
    };

    let mut candidates = Vec::with_capacity(grid.forest.len() + grid.linear.len());
    for (forest, forest_target) in &grid.forest {
        let interest = InterestParams {
            forest: forest.clone(),
            forest_target: *forest_target,
            ..params.interest.clone()
        };
        candidates.push(score(interest, InterestPredictor::Forest)?);
    }
    for linear in &grid.linear {
        let interest = InterestParams {
            linear: linear.clone(),
            ..params.interest.clone()
        };
        candidates.push(score(interest, InterestPredictor::Linear)?);
    }

    let best = |predictor: InterestPredictor| {
        candidates
            .iter()
            .filter(|candidate| candidate.predictor == predictor)
            .min_by(|a, b| {
                a.validation
                    .mean_surprise
                    .total_cmp(&b.validation.mean_surprise)
            })
            .expect("the grid has a candidate of each predictor")
    };
    let forest = &best(InterestPredictor::Forest).params;
    let linear = &best(InterestPredictor::Linear).params;
    let chosen = InterestParams {
        forest: forest.forest.clone(),
        forest_target: forest.forest_target,
        linear: linear.linear.clone(),
    };
    Ok(InterestTuning {
        chosen,
        candidates,
        baselines,
    })
}

/// Returns a seeded random `fraction` of the distinct `users` (rounded up), to validate on.
///
/// Splitting by user keeps all of a user's windows on one side, so a fit window whose next
/// window is a validation window cannot pass that window's shares to the fit.
pub fn split_users<'a, T: Ord + Clone + 'a>(
    users: impl IntoIterator<Item = &'a T>,
    fraction: f64,
    seed: u64,
) -> Result<BTreeSet<T>, MlError> {
    check_fraction("user split", "fraction", fraction)?;
    let distinct: Vec<T> = users
        .into_iter()
        .cloned()
        .collect::<BTreeSet<T>>()
        .into_iter()
        .collect();
    let count = (distinct.len() as f64 * fraction).ceil() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let picked = rand::seq::index::sample(&mut rng, distinct.len(), count.min(distinct.len()));
    Ok(picked
        .into_iter()
        .map(|index| distinct[index].clone())
        .collect())
}
