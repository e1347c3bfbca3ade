//! Anomaly scores for window feature rows: an isolation forest and a one-class SVM.
//!
//! Both score a row in 0..1, higher meaning more anomalous, so they can sit side by side as
//! alert signals.
//!
//! The isolation forest is written here because the crates for it do not fit. In
//! `extended-isolation-forest` 0.2 and `isolation_forest` 1.1, trees draw from `thread_rng`, so
//! a seed cannot reproduce a forest. The first also fixes the row width at compile time.
//!
//! The one-class SVM is linfa-svm 0.8.1's (nu formulation, Gaussian kernel), fitted by
//! `super::one_class_solver` with linfa's arithmetic, which computes only the kernel rows the
//! solver reads. A fit may still read every row of the n × n kernel, so it runs on a seeded
//! subsample of at most `max_rows` rows. Scoring reads the support vectors from one contiguous
//! buffer instead of calling linfa, with the same arithmetic in the same order, so the
//! decision values are the same.

use ndarray::{ArrayView2, Axis};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{
    check_fraction, check_matrix, check_positive_count, check_row, invalid, FitWarning, MlError,
};
use super::one_class_solver::{solve_one_class, GaussianKernel};

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

/// `IsolationNode::feature` of a leaf.
const LEAF: u32 = u32::MAX;

/// One node of an isolation tree. Nodes are stored in preorder, so a split's left child
/// directly follows it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct IsolationNode {
    /// Column that the split compares, or [`LEAF`].
    feature: u32,
    /// Index of the split's right child, or 0 for a leaf.
    right: u32,
    /// For a split, the threshold: rows with `feature <= threshold` go left. For a leaf, the
    /// path length of a row that ends there: its depth plus `c(size)` for the `size` sample
    /// rows that share it.
    value: f64,
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
        // Node indices and columns are stored as u32: a tree has fewer than 2 * sample_size
        // nodes.
        if sample_size >= (u32::MAX / 2) as usize {
            return Err(invalid(
                "isolation forest",
                "sample_size",
                sample_size,
                "below 2^31",
            ));
        }
        if records.ncols() >= LEAF as usize {
            return Err(MlError::WidthMismatch {
                model: "isolation forest",
                expected: LEAF as usize - 1,
                found: records.ncols(),
            });
        }
        let max_depth = (sample_size as f64).log2().ceil() as usize;
        let columns = Columns::of(records);

        let trees = (0..params.trees)
            .map(|tree| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(tree as u64);
                let mut rows = sample(&mut rng, records.nrows(), sample_size).into_vec();
                let mut nodes = Vec::new();
                let mut grower = TreeGrower {
                    columns: &columns,
                    max_depth,
                    ranges: Vec::with_capacity(columns.width),
                    rng: &mut rng,
                    nodes: &mut nodes,
                };
                grower.grow(&mut rows, 0);
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
        Ok(self.score_rows(&[row])?[0])
    }

    /// Returns the anomaly score of each row, as [`IsolationForest::score`] does, and fails if
    /// any row is invalid.
    ///
    /// The rows go through one tree at a time, so each tree stays in the cache while every
    /// row passes it. Each row's path lengths are still added in tree order, so a score does
    /// not depend on the other rows.
    pub fn score_rows(&self, rows: &[&[f64]]) -> Result<Vec<f64>, MlError> {
        for row in rows {
            check_row("isolation forest", row, self.width, None)?;
        }
        let normaliser = average_path_length(self.sample_size);
        if normaliser == 0.0 {
            // A one-row sample gives every path length 0: nothing separates any row.
            return Ok(vec![0.5; rows.len()]);
        }
        let mut totals = vec![0.0; rows.len()];
        for tree in &self.trees {
            for (total, row) in totals.iter_mut().zip(rows) {
                *total += path_length(tree, row);
            }
        }
        let trees = self.trees.len() as f64;
        Ok(totals
            .into_iter()
            .map(|total| score_of_mean_path(total / trees, normaliser))
            .collect())
    }

    /// Returns for each row whether its score reaches `threshold`, exactly as comparing the
    /// score of [`IsolationForest::score_rows`] with it would, and fails if any row is invalid.
    ///
    /// The score falls as the total path length grows. So once a row's total over the first
    /// trees, plus the shortest path length of each later tree, exceeds the total at which the
    /// score equals `threshold`, the row cannot reach it, and its remaining trees are skipped. The other
    /// rows pass every tree, in order, so their totals and scores are those of `score_rows`.
    pub fn reaches_score(&self, rows: &[&[f64]], threshold: f64) -> Result<Vec<bool>, MlError> {
        for row in rows {
            check_row("isolation forest", row, self.width, None)?;
        }
        let normaliser = average_path_length(self.sample_size);
        if normaliser == 0.0 {
            return Ok(vec![0.5 >= threshold; rows.len()]);
        }

        let trees = self.trees.len() as f64;
        // The total path length at which the score equals `threshold`, with a relative margin
        // far above the rounding error of the score's arithmetic.
        let limit = -threshold.log2() * normaliser * trees;
        let cutoff = limit * (1.0 + 1e-9) + 1e-9;
        // The shortest path length of each tree, the least that a row can add with it.
        let floors: Vec<f64> = self
            .trees
            .iter()
            .map(|tree| {
                tree.iter()
                    .filter(|node| node.feature == LEAF)
                    .map(|node| node.value)
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let mut totals = vec![0.0; rows.len()];
        // Rows whose total has not passed the cutoff.
        let mut open: Vec<usize> = (0..rows.len()).collect();
        for (index, chunk) in self.trees.chunks(TREES_PER_CUTOFF_CHECK).enumerate() {
            for tree in chunk {
                for &row in &open {
                    totals[row] += path_length(tree, rows[row]);
                }
            }
            let later_trees = (index + 1) * TREES_PER_CUTOFF_CHECK;
            let floor: f64 = floors.iter().skip(later_trees).sum();
            open.retain(|&row| totals[row] + floor <= cutoff);
            if open.is_empty() {
                break;
            }
        }

        let mut reached = vec![false; rows.len()];
        for row in open {
            reached[row] = score_of_mean_path(totals[row] / trees, normaliser) >= threshold;
        }
        Ok(reached)
    }
}

/// Returns the anomaly score `2^(-mean_path / normaliser)`, where `normaliser` is
/// `c(sample_size)`.
fn score_of_mean_path(mean_path: f64, normaliser: f64) -> f64 {
    2f64.powf(-mean_path / normaliser)
}

/// Trees that [`IsolationForest::reaches_score`] adds to every open row between two checks
/// of the cutoff.
const TREES_PER_CUTOFF_CHECK: usize = 8;

/// The fit's rows stored feature by feature, so that a node reads one feature of its rows from
/// one slice.
struct Columns {
    rows: usize,
    width: usize,
    values: Vec<f64>,
}

impl Columns {
    fn of(records: ArrayView2<'_, f64>) -> Columns {
        let rows = records.nrows();
        let mut values = Vec::with_capacity(rows * records.ncols());
        for column in records.columns() {
            values.extend(column.iter().copied());
        }
        Columns {
            rows,
            width: records.ncols(),
            values,
        }
    }

    fn column(&self, feature: usize) -> &[f64] {
        &self.values[feature * self.rows..(feature + 1) * self.rows]
    }
}

/// Grows one isolation tree, with the buffers its nodes share.
struct TreeGrower<'a> {
    columns: &'a Columns,
    max_depth: usize,
    /// The features that vary among a node's rows, with their minimum and maximum.
    ranges: Vec<(usize, f64, f64)>,
    rng: &'a mut ChaCha8Rng,
    nodes: &'a mut Vec<IsolationNode>,
}

impl TreeGrower<'_> {
    /// Appends the subtree for `rows` to the nodes and returns its root's index.
    ///
    /// The rows are reordered in place, left rows first. A node depends only on the set of
    /// its rows, not on their order, because the minimum and maximum of finite values are
    /// exact in any order and the random draws do not depend on the rows.
    fn grow(&mut self, rows: &mut [usize], depth: usize) -> usize {
        let at = self.nodes.len();
        self.nodes.push(IsolationNode {
            feature: LEAF,
            right: 0,
            value: depth as f64 + average_path_length(rows.len()),
        });
        if rows.len() <= 1 || depth >= self.max_depth {
            return at;
        }
        self.ranges.clear();
        for feature in 0..self.columns.width {
            let column = self.columns.column(feature);
            let values = rows.iter().map(|row| column[*row]);
            let min = values.clone().fold(f64::INFINITY, f64::min);
            let max = values.fold(f64::NEG_INFINITY, f64::max);
            if max > min {
                self.ranges.push((feature, min, max));
            }
        }
        if self.ranges.is_empty() {
            return at;
        }

        let (feature, min, max) = self.ranges[self.rng.gen_range(0..self.ranges.len())];
        // A threshold in [min, max) keeps the minimum on the left and the maximum on the
        // right. Interpolating, rather than sampling `min..max`, stays finite when `max - min`
        // overflows.
        let fraction: f64 = self.rng.gen();
        let mut threshold = min * (1.0 - fraction) + max * fraction;
        if threshold >= max {
            threshold = min;
        }
        let column = self.columns.column(feature);
        let split = partition_in_place(rows, |row| column[row] <= threshold);
        let (left_rows, right_rows) = rows.split_at_mut(split);
        self.grow(left_rows, depth + 1);
        let right = self.grow(right_rows, depth + 1);
        // The fit checked that columns and node indices fit in u32.
        self.nodes[at] = IsolationNode {
            feature: feature as u32,
            right: right as u32,
            value: threshold,
        };
        at
    }
}

/// Moves the rows for which `left` is true to the front and returns how many there are.
fn partition_in_place(rows: &mut [usize], left: impl Fn(usize) -> bool) -> usize {
    let mut split = 0;
    for index in 0..rows.len() {
        if left(rows[index]) {
            rows.swap(split, index);
            split += 1;
        }
    }
    split
}

/// Returns the path length of `row` in `tree`, as stored in the leaf it reaches.
fn path_length(tree: &[IsolationNode], row: &[f64]) -> f64 {
    let mut index = 0;
    loop {
        let node = &tree[index];
        if node.feature == LEAF {
            return node.value;
        }
        index = if row[node.feature as usize] <= node.value {
            index + 1
        } else {
            node.right as usize
        };
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
    /// Support vectors of linfa's fitted model, `width` values each, row after row.
    support_vectors: Vec<f64>,
    /// Dual coefficient of each support vector.
    coefficients: Vec<f64>,
    /// Offset of the decision function.
    rho: f64,
    /// Gaussian kernel parameter as linfa's `KernelMethod::Gaussian` stores it: the kernel is
    /// `exp(-|x - y|^2 / kernel_eps)`, so `kernel_eps = 1 / gamma`.
    kernel_eps: f64,
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
        let kernel_eps = 1.0 / gamma;
        let width = records.ncols();
        let data: Vec<f64> = training.rows().into_iter().flatten().copied().collect();
        let mut kernel = GaussianKernel::new(&data, width, kernel_eps);
        let solution = solve_one_class(&mut kernel, params.nu, params.tolerance);

        // linfa 0.8 keeps the training rows whose coefficient exceeds 100 machine epsilons as
        // support vectors, in row order, and its `weighted_sum` adds their terms in that order.
        let threshold = 100.0 * f64::EPSILON;
        let support: Vec<usize> = (0..solution.alpha.len())
            .filter(|index| solution.alpha[*index].abs() > threshold)
            .collect();
        let mut support_vectors = Vec::with_capacity(support.len() * width);
        for index in &support {
            support_vectors.extend_from_slice(&data[index * width..(index + 1) * width]);
        }
        let coefficients: Vec<f64> = support.iter().map(|index| solution.alpha[*index]).collect();
        let svm = OneClassSvm {
            support_vectors,
            coefficients,
            rho: solution.rho,
            kernel_eps,
            scale: 1.0,
            width,
        };

        // The decision value of each training row, from the kernel rows of the support vectors,
        // which the solver computed. Each term and the order of the sum are those of
        // `decision_unchecked`.
        for index in &support {
            kernel.row(*index);
        }
        let support_rows: Vec<(&[f64], f64)> = support
            .iter()
            .map(|index| {
                let row = kernel.cached_row(*index).expect("computed above");
                (row, solution.alpha[*index])
            })
            .collect();
        let decisions: Vec<f64> = (0..kernel.size())
            .map(|row| {
                let weighted_sum: f64 = support_rows
                    .iter()
                    .map(|(kernel_row, coefficient)| kernel_row[row] * coefficient)
                    .sum();
                weighted_sum - svm.rho
            })
            .collect();
        let mean_absolute =
            decisions.iter().map(|value| value.abs()).sum::<f64>() / decisions.len() as f64;
        let scale = mean_absolute.max(1e-12);
        Ok((OneClassSvm { scale, ..svm }, warnings))
    }

    /// Returns the number of support vectors.
    pub fn support_vector_count(&self) -> usize {
        self.coefficients.len()
    }

    /// Returns the SVM's decision value: positive inside the learned region.
    pub fn decision(&self, row: &[f64]) -> Result<f64, MlError> {
        check_row("one-class SVM", row, self.width, None)?;
        Ok(self.decision_unchecked(row))
    }

    /// Returns the anomaly score of one row, in (0, 1).
    pub fn score(&self, row: &[f64]) -> Result<f64, MlError> {
        let decision = self.decision(row)?;
        Ok(1.0 / (1.0 + (decision / self.scale).exp()))
    }

    /// Returns `sum(coefficient * kernel(support vector, row)) - rho` for a row of the fitted
    /// width.
    fn decision_unchecked(&self, row: &[f64]) -> f64 {
        let weighted_sum: f64 = self
            .support_vectors
            .chunks_exact(self.width)
            .zip(&self.coefficients)
            .map(|(vector, coefficient)| {
                let distance = vector
                    .iter()
                    .zip(row)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f64>();
                (-distance / self.kernel_eps).exp() * coefficient
            })
            .sum();
        weighted_sum - self.rho
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::dataset::Pr;
    use linfa::prelude::*;
    use linfa_svm::Svm;
    use ndarray::{array, Array2};

    #[test]
    fn path_length_constants() {
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        let c256 = average_path_length(256);
        assert!((c256 - 10.24).abs() < 0.01, "{c256}");
    }

    #[test]
    fn isolation_tree_ignores_row_order() {
        let records = Array2::from_shape_fn((64, 3), |(row, feature)| {
            ((row * 7 + feature * 13) % 17) as f64 - 0.25 * feature as f64
        });
        let columns = Columns::of(records.view());
        let grow = |mut rows: Vec<usize>| {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut nodes = Vec::new();
            TreeGrower {
                columns: &columns,
                max_depth: 6,
                ranges: Vec::new(),
                rng: &mut rng,
                nodes: &mut nodes,
            }
            .grow(&mut rows, 0);
            nodes
        };
        let forward = grow((0..64).collect());
        let backward = grow((0..64).rev().collect());
        assert!(forward.len() > 1, "the tree did not split");
        assert_eq!(forward, backward);
    }

    #[test]
    fn partition_moves_left_rows_first() {
        let mut rows = vec![5, 2, 8, 1, 9, 4];
        let split = partition_in_place(&mut rows, |row| row < 5);
        assert_eq!(split, 3);
        let (left, right) = rows.split_at(split);
        assert!(left.iter().all(|row| *row < 5), "{left:?}");
        assert!(right.iter().all(|row| *row >= 5), "{right:?}");
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

    /// 300 rows of 3 columns spread by scrambled sequences, plus a few far rows.
    fn spread_rows() -> ndarray::Array2<f64> {
        ndarray::Array2::from_shape_fn((300, 3), |(row, column)| {
            let base = ((row * 37 + column * 11) % 101) as f64 / 101.0;
            if row % 50 == 0 {
                base * 8.0 - 4.0
            } else {
                base
            }
        })
    }

    #[test]
    fn forest_batch_matches_single_rows() {
        let rows = spread_rows();
        let (forest, _) =
            IsolationForest::fit(rows.view(), &IsolationParams::default(), 3).unwrap();
        let inputs: Vec<Vec<f64>> = rows.rows().into_iter().map(|row| row.to_vec()).collect();
        let slices: Vec<&[f64]> = inputs.iter().map(Vec::as_slice).collect();
        let batch = forest.score_rows(&slices).unwrap();
        for (input, score) in inputs.iter().zip(&batch) {
            assert_eq!(forest.score(input).unwrap().to_bits(), score.to_bits());
        }
    }

    #[test]
    fn reaches_score_matches_full_scores() {
        let rows = spread_rows();
        let (forest, _) =
            IsolationForest::fit(rows.view(), &IsolationParams::default(), 3).unwrap();
        let mut inputs: Vec<Vec<f64>> = rows.rows().into_iter().map(|row| row.to_vec()).collect();
        inputs.extend([vec![9.0, -9.0, 9.0], vec![0.5, 0.5, 0.5]]);
        let slices: Vec<&[f64]> = inputs.iter().map(Vec::as_slice).collect();
        let scores = forest.score_rows(&slices).unwrap();
        let mut thresholds = vec![0.0, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0];
        // Each score as a threshold, and the floats right above and below it.
        for score in &scores {
            thresholds.extend([*score, score.next_up(), score.next_down()]);
        }
        for threshold in thresholds {
            let reached = forest.reaches_score(&slices, threshold).unwrap();
            for (score, reached) in scores.iter().zip(reached) {
                assert_eq!(
                    reached,
                    *score >= threshold,
                    "score {score}, threshold {threshold}"
                );
            }
        }
        assert!(
            scores.iter().any(|score| *score >= 0.6) && scores.iter().any(|score| *score < 0.6),
            "the rows should score on both sides of 0.6"
        );
    }

    #[test]
    fn forest_batch_rejects_wrong_width() {
        let rows = spread_rows();
        let (forest, _) =
            IsolationForest::fit(rows.view(), &IsolationParams::default(), 3).unwrap();
        let error = forest.score_rows(&[&[0.0, 0.0, 0.0], &[1.0]]).unwrap_err();
        assert!(
            error.to_string().contains("expected 3 columns, found 1"),
            "{error}"
        );
    }

    #[test]
    fn svm_decision_matches_linfa() {
        let rows = spread_rows();
        let params = OneClassParams::default();
        let (svm, _) = OneClassSvm::fit(rows.view(), &params, 5).unwrap();
        let gamma = 1.0 / rows.ncols() as f64;
        let dataset = DatasetBase::from(rows.to_owned());
        let model = Svm::<f64, Pr>::params()
            .nu_weight(params.nu)
            .gaussian_kernel(1.0 / gamma)
            .eps(params.tolerance)
            .fit(&dataset)
            .unwrap();
        assert_eq!(svm.support_vector_count(), model.nsupport());
        let probes = [[0.5, 0.5, 0.5], [6.0, -5.0, 1.0], [0.1, 0.9, 0.3]];
        for probe in rows
            .rows()
            .into_iter()
            .map(|row| row.to_vec())
            .chain(probes.map(Vec::from))
        {
            let expected = model.weighted_sum(&ndarray::ArrayView1::from(&probe)) - model.rho;
            let found = svm.decision(&probe).unwrap();
            assert_eq!(
                found.to_bits(),
                expected.to_bits(),
                "{probe:?}: {found} != {expected}"
            );
        }
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
