//! Anomaly scores for window feature rows: an isolation forest and a one-class SVM.
//!
//! Both score a row in 0..1, higher meaning more anomalous, so they can sit side by side as
//! alert signals.
//!
//! The isolation forest is written here because the crates for it do not fit. In
//! `extended-isolation-forest` 0.2 and `isolation_forest` 1.1, trees draw from `thread_rng`, so
//! a seed cannot reproduce a forest. The first also fixes the row width at compile time.
//!
//! The one-class SVM is linfa-svm's (nu formulation, Gaussian kernel). It builds a dense
//! kernel matrix, so it is fitted on a seeded subsample of at most `max_rows` rows.

use linfa::dataset::Pr;
use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{ArrayView1, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{
    check_fraction, check_matrix, check_positive_count, check_row, invalid, FitWarning, MlError,
};

/// Euler-Mascheroni constant, for the harmonic number in [`average_path_length`].
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Settings of [`IsolationForest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsolationParams {
    /// Number of trees.
    pub trees: usize,
    /// Rows drawn without replacement for each tree. A value above the number of training rows
    /// is lowered to it, with a warning.
    pub sample_size: usize,
}

impl Default for IsolationParams {
    fn default() -> Self {
        IsolationParams {
            trees: 100,
            sample_size: 256,
        }
    }
}

impl IsolationParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        check_positive_count("isolation forest", "trees", self.trees)?;
        check_positive_count("isolation forest", "sample_size", self.sample_size)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum IsolationNode {
    /// A node with `size` sample rows that is not split further.
    Leaf { size: usize },
    /// Rows with `feature <= threshold` go left.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

/// An isolation forest: anomalies are the rows that random splits isolate in few steps.
///
/// Each tree splits a random subsample at a random threshold of a random feature until every
/// row is alone, the rows left are identical, or the depth limit `ceil(log2(sample_size))` is
/// reached. The score of a row is `2^(-E[h] / c(sample_size))`, where `h` is its path length
/// (plus `c(size)` for the rows sharing its leaf) and `c(n)` the average path length of an
/// unsuccessful search in a binary search tree of `n` keys. Rows isolated early score near 1,
/// ordinary rows near or below 0.5.
///
/// A feature is only split where it varies inside the node, so constant features are never
/// chosen. When the training rows are all identical, no tree splits and every row scores 0.5:
/// the forest has learned nothing to call anomalous.
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use veer_models::ml::{IsolationForest, IsolationParams};
///
/// // 200 rows spread around (1, 1), each coordinate a sum of two scrambled sequences.
/// let rows = Array2::from_shape_fn((200, 2), |(row, column)| {
///     let first = ((row * 37 + column * 11) % 101) as f64 / 101.0;
///     let second = ((row * 59 + column * 7) % 103) as f64 / 103.0;
///     first + second
/// });
/// let (forest, _) = IsolationForest::fit(rows.view(), &IsolationParams::default(), 5).unwrap();
/// let inside = forest.score(&[1.0, 1.0]).unwrap();
/// let outside = forest.score(&[6.0, -4.0]).unwrap();
/// assert!(inside < 0.5, "{inside}");
/// assert!(outside > 0.65, "{outside}");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    trees: Vec<Vec<IsolationNode>>,
    sample_size: usize,
    width: usize,
}

impl IsolationForest {
    /// Grows the forest. The same seed gives the same forest.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        params: &IsolationParams,
        seed: u64,
    ) -> Result<(IsolationForest, Vec<FitWarning>), MlError> {
        params.validate()?;
        check_matrix("isolation forest", records, None)?;
        let mut warnings = Vec::new();
        let sample_size = params.sample_size.min(records.nrows());
        if sample_size < params.sample_size {
            warnings.push(FitWarning::SampleSizeReduced {
                model: "isolation forest".into(),
                requested: params.sample_size,
                used: sample_size,
            });
        }
        let max_depth = (sample_size as f64).log2().ceil() as usize;

        let trees = (0..params.trees)
            .map(|tree| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(tree as u64);
                let rows = sample(&mut rng, records.nrows(), sample_size).into_vec();
                let mut nodes = Vec::new();
                grow_isolation_tree(records, rows, 0, max_depth, &mut rng, &mut nodes);
                nodes
            })
            .collect();
        let forest = IsolationForest {
            trees,
            sample_size,
            width: records.ncols(),
        };
        Ok((forest, warnings))
    }

    /// Returns the anomaly score of one row, in (0, 1).
    pub fn score(&self, row: &[f64]) -> Result<f64, MlError> {
        check_row("isolation forest", row, self.width, None)?;
        let normaliser = average_path_length(self.sample_size);
        if normaliser == 0.0 {
            // A one-row sample gives every path length 0: nothing separates any row.
            return Ok(0.5);
        }
        let total: f64 = self.trees.iter().map(|tree| path_length(tree, row)).sum();
        let mean = total / self.trees.len() as f64;
        Ok(2f64.powf(-mean / normaliser))
    }
}

/// Appends the subtree for `rows` to `nodes` and returns its root's index.
fn grow_isolation_tree(
    records: ArrayView2<'_, f64>,
    rows: Vec<usize>,
    depth: usize,
    max_depth: usize,
    rng: &mut ChaCha8Rng,
    nodes: &mut Vec<IsolationNode>,
) -> usize {
    let at = nodes.len();
    nodes.push(IsolationNode::Leaf { size: rows.len() });
    if rows.len() <= 1 || depth >= max_depth {
        return at;
    }
    let ranges: Vec<(usize, f64, f64)> = (0..records.ncols())
        .filter_map(|feature| {
            let values = rows.iter().map(|row| records[[*row, feature]]);
            let min = values.clone().fold(f64::INFINITY, f64::min);
            let max = values.fold(f64::NEG_INFINITY, f64::max);
            (max > min).then_some((feature, min, max))
        })
        .collect();
    if ranges.is_empty() {
        return at;
    }

    let (feature, min, max) = ranges[rng.gen_range(0..ranges.len())];
    // A threshold in [min, max) keeps the minimum on the left and the maximum on the right.
    // Interpolating, rather than sampling `min..max`, stays finite when `max - min` overflows.
    let fraction: f64 = rng.gen();
    let mut threshold = min * (1.0 - fraction) + max * fraction;
    if threshold >= max {
        threshold = min;
    }
    let (left_rows, right_rows): (Vec<usize>, Vec<usize>) = rows
        .into_iter()
        .partition(|row| records[[*row, feature]] <= threshold);
    let left = grow_isolation_tree(records, left_rows, depth + 1, max_depth, rng, nodes);
    let right = grow_isolation_tree(records, right_rows, depth + 1, max_depth, rng, nodes);
    nodes[at] = IsolationNode::Split {
        feature,
        threshold,
        left,
        right,
    };
    at
}

fn path_length(tree: &[IsolationNode], row: &[f64]) -> f64 {
    let mut node = 0;
    let mut depth = 0.0;
    loop {
        match &tree[node] {
            IsolationNode::Leaf { size } => return depth + average_path_length(*size),
            IsolationNode::Split {
                feature,
                threshold,
                left,
                right,
            } => {
                node = if row[*feature] <= *threshold {
                    *left
                } else {
                    *right
                };
                depth += 1.0;
            }
        }
    }
}

/// Returns `c(n)`, the average path length of an unsuccessful search in a binary search tree
/// of `n` keys: `2 H(n - 1) - 2 (n - 1) / n`, with `H(i)` approximated by `ln(i) + gamma`.
fn average_path_length(size: usize) -> f64 {
    match size {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = size as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// Settings of [`OneClassSvm`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneClassParams {
    /// Upper bound on the share of training rows outside the learned region, and lower bound
    /// on the share of support vectors.
    pub nu: f64,
    /// Gaussian kernel width `gamma` in `exp(-gamma * |x - y|^2)`, or `None` for
    /// `1 / features`, which suits standardized inputs.
    pub gamma: Option<f64>,
    /// Stopping tolerance of the SMO solver.
    pub tolerance: f64,
    /// Maximum rows fitted. A larger input is subsampled, with a warning.
    pub max_rows: usize,
}

impl Default for OneClassParams {
    fn default() -> Self {
        OneClassParams {
            nu: 0.05,
            gamma: None,
            tolerance: 1e-3,
            max_rows: 2000,
        }
    }
}

impl OneClassParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        check_fraction("one-class SVM", "nu", self.nu)?;
        if let Some(gamma) = self.gamma {
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(invalid(
                    "one-class SVM",
                    "gamma",
                    gamma,
                    "a finite number > 0",
                ));
            }
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(invalid(
                "one-class SVM",
                "tolerance",
                self.tolerance,
                "a finite number > 0",
            ));
        }
        check_positive_count("one-class SVM", "max_rows", self.max_rows)
    }
}

/// A one-class SVM whose decision value is turned into an anomaly score.
///
/// The SVM's decision value `f(x)` is positive inside the learned region and negative outside.
/// The score is `1 / (1 + exp(f(x) / s))`, where `s` is the mean `|f|` over the training rows,
/// so a row on the boundary scores 0.5 and rows far outside approach 1.
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use veer_models::ml::{OneClassParams, OneClassSvm};
///
/// let rows = Array2::from_shape_fn((100, 2), |(row, column)| ((row * 3 + column) % 7) as f64 / 7.0);
/// let (svm, _) = OneClassSvm::fit(rows.view(), &OneClassParams::default(), 5).unwrap();
/// let inside = svm.score(&[0.5, 0.5]).unwrap();
/// let outside = svm.score(&[6.0, -5.0]).unwrap();
/// assert!(outside > 0.9, "{outside}");
/// assert!(inside < 0.5, "{inside}");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneClassSvm {
    model: Svm<f64, bool>,
    /// Mean absolute decision value on the training rows, the score's unit.
    scale: f64,
    width: usize,
}

impl OneClassSvm {
    /// Fits the SVM. The seed only matters when the rows are subsampled.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        params: &OneClassParams,
        seed: u64,
    ) -> Result<(OneClassSvm, Vec<FitWarning>), MlError> {
        params.validate()?;
        check_matrix("one-class SVM", records, None)?;
        let mut warnings = Vec::new();
        let training = if records.nrows() > params.max_rows {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut rows = sample(&mut rng, records.nrows(), params.max_rows).into_vec();
            rows.sort_unstable();
            warnings.push(FitWarning::RowsSubsampled {
                model: "one-class SVM".into(),
                rows: records.nrows(),
                used: params.max_rows,
            });
            records.select(Axis(0), &rows)
        } else {
            records.to_owned()
        };

        let gamma = params.gamma.unwrap_or(1.0 / records.ncols() as f64);
        let dataset = DatasetBase::from(training);
        let model = Svm::<f64, Pr>::params()
            .nu_weight(params.nu)
            .gaussian_kernel(1.0 / gamma)
            .eps(params.tolerance)
            .fit(&dataset)?;
        let decisions: Vec<f64> = dataset
            .records()
            .rows()
            .into_iter()
            .map(|row| model.weighted_sum(&row) - model.rho)
            .collect();
        let mean_absolute =
            decisions.iter().map(|value| value.abs()).sum::<f64>() / decisions.len() as f64;
        let svm = OneClassSvm {
            model,
            scale: mean_absolute.max(1e-12),
            width: records.ncols(),
        };
        Ok((svm, warnings))
    }

    /// Returns the SVM's decision value: positive inside the learned region.
    pub fn decision(&self, row: &[f64]) -> Result<f64, MlError> {
        check_row("one-class SVM", row, self.width, None)?;
        Ok(self.model.weighted_sum(&ArrayView1::from(row)) - self.model.rho)
    }

    /// Returns the anomaly score of one row, in (0, 1).
    pub fn score(&self, row: &[f64]) -> Result<f64, MlError> {
        let decision = self.decision(row)?;
        Ok(1.0 / (1.0 + (decision / self.scale).exp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn path_length_constants() {
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        let c256 = average_path_length(256);
        assert!((c256 - 10.24).abs() < 0.01, "{c256}");
    }

    #[test]
    fn identical_rows_score_one_half() {
        let rows = array![[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]];
        let (forest, _) =
            IsolationForest::fit(rows.view(), &IsolationParams::default(), 1).unwrap();
        for row in [[1.0, 2.0], [9.0, 9.0]] {
            let score = forest.score(&row).unwrap();
            assert!((score - 0.5).abs() < 1e-12, "{row:?}: {score}");
        }
    }

    #[test]
    fn one_row_scores_one_half() {
        let rows = array![[1.0, 2.0]];
        let (forest, warnings) =
            IsolationForest::fit(rows.view(), &IsolationParams::default(), 1).unwrap();
        assert_eq!(forest.score(&[5.0, 5.0]).unwrap(), 0.5);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn svm_rejects_nu_above_one() {
        let params = OneClassParams {
            nu: 1.5,
            ..OneClassParams::default()
        };
        let error = params.validate().unwrap_err().to_string();
        assert!(error.contains("nu = 1.5"), "{error}");
    }
}
