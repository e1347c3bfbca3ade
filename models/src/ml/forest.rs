//! A random forest of multi-output regression trees (CART with squared error).
//!
//! Written here because linfa 0.8 has classification trees only: `linfa-trees` requires a
//! discrete `Label` target and `linfa-ensemble`'s random forest votes over classes, while the
//! interest model predicts continuous shares.
//!
//! Each tree is grown on a bootstrap sample. At each node a seeded random subset of the
//! features is searched for the threshold that most reduces the squared error summed over all
//! outputs. A leaf predicts the mean target vector of its rows, or the median of each output
//! ([`LeafValue`]). A forest predicts the mean of its trees, so with mean leaves, targets that
//! sum to 1 give predictions that sum to 1.

use ndarray::{Array2, ArrayView2};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{check_fraction, check_matrix, check_positive_count, check_row, MlError};

/// Settings of [`RegressionForest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    /// Number of trees.
    pub trees: usize,
    /// Maximum depth of a tree, where the root is depth 0.
    pub max_depth: usize,
    /// Minimum training rows (counted with bootstrap repeats) in a leaf.
    pub min_samples_leaf: usize,
    /// Fraction of the features searched at each split, rounded up to at least one.
    pub max_features: f64,
    /// Bootstrap sample size per tree, as a fraction of the training rows.
    pub sample_fraction: f64,
    /// Value that a leaf predicts from its rows' targets.
    #[serde(default)]
    pub leaf: LeafValue,
}

/// Value that a leaf of a [`RegressionForest`] predicts from the targets of its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeafValue {
    /// The mean of each output, which minimises squared error.
    #[default]
    Mean,
    /// The median of each output (the lower middle value of an even count), which minimises
    /// absolute error. Splits still minimise squared error.
    Median,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 100,
            max_depth: 12,
            min_samples_leaf: 3,
            max_features: 0.5,
            sample_fraction: 1.0,
            leaf: LeafValue::Mean,
        }
    }
}

impl ForestParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        check_positive_count("regression forest", "trees", self.trees)?;
        check_positive_count(
            "regression forest",
            "min_samples_leaf",
            self.min_samples_leaf,
        )?;
        check_fraction("regression forest", "max_features", self.max_features)?;
        check_fraction("regression forest", "sample_fraction", self.sample_fraction)
    }
}

/// One node of a tree, stored in a flat vector whose indices link children.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Node {
    Leaf {
        value: Vec<f64>,
    },
    /// Rows with `feature <= threshold` go left.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RegressionTree {
    nodes: Vec<Node>,
}

impl RegressionTree {
    fn predict<'a>(&'a self, row: &[f64]) -> &'a [f64] {
        let mut node = 0;
        loop {
            match &self.nodes[node] {
                Node::Leaf { value } => return value,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    node = if row[*feature] <= *threshold {
                        *left
                    } else {
                        *right
                    }
                }
            }
        }
    }
}

/// A fitted random forest that maps a feature row to a vector of outputs.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Array2};
/// use veer_models::ml::{ForestParams, RegressionForest};
///
/// // One output that steps from 0 to 1 at x = 5.
/// let records = Array2::from_shape_fn((40, 1), |(row, _)| row as f64 / 4.0);
/// let targets = records.mapv(|x| if x < 5.0 { 0.0 } else { 1.0 });
/// let forest =
///     RegressionForest::fit(records.view(), targets.view(), &ForestParams::default(), 3).unwrap();
/// assert!(forest.predict_row(&[1.0]).unwrap()[0] < 0.1);
/// assert!(forest.predict_row(&[9.0]).unwrap()[0] > 0.9);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionForest {
    trees: Vec<RegressionTree>,
    width: usize,
    outputs: usize,
}

impl RegressionForest {
    /// Grows the forest on `records` (rows × features) and `targets` (rows × outputs).
    ///
    /// The same seed gives the same forest: tree `t` draws from its own ChaCha8 stream `t`.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        targets: ArrayView2<'_, f64>,
        params: &ForestParams,
        seed: u64,
    ) -> Result<RegressionForest, MlError> {
        params.validate()?;
        check_matrix("regression forest", records, None)?;
        check_matrix("regression forest (targets)", targets, None)?;
        if targets.nrows() != records.nrows() {
            return Err(MlError::WidthMismatch {
                model: "regression forest (target rows)",
                expected: records.nrows(),
                found: targets.nrows(),
            });
        }

        let rows = records.nrows();
        let bootstrap_size = ((rows as f64 * params.sample_fraction).ceil() as usize).max(1);
        let features_per_split =
            ((records.ncols() as f64 * params.max_features).ceil() as usize).max(1);
        let builder = TreeBuilder {
            records: records.view(),
            targets: targets.view(),
            params,
            features_per_split,
        };
        let trees = (0..params.trees)
            .map(|tree| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(tree as u64);
                let indices: Vec<usize> = (0..bootstrap_size)
                    .map(|_| rng.gen_range(0..rows))
                    .collect();
                builder.build(indices, &mut rng)
            })
            .collect();
        Ok(RegressionForest {
            trees,
            width: records.ncols(),
            outputs: targets.ncols(),
        })
    }

    /// Returns the number of input features.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Returns the number of outputs.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Predicts the outputs of one row.
    pub fn predict_row(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        check_row("regression forest", row, self.width, None)?;
        let mut sums = vec![0.0; self.outputs];
        for tree in &self.trees {
            for (sum, value) in sums.iter_mut().zip(tree.predict(row)) {
                *sum += value;
            }
        }
        let count = self.trees.len() as f64;
        Ok(sums.into_iter().map(|sum| sum / count).collect())
    }

    /// Predicts the outputs of every row.
    pub fn predict(&self, records: ArrayView2<'_, f64>) -> Result<Array2<f64>, MlError> {
        check_matrix("regression forest", records, None)?;
        let mut predictions = Array2::zeros((records.nrows(), self.outputs));
        for (row, mut output) in records.rows().into_iter().zip(predictions.rows_mut()) {
            let values = self.predict_row(&row.to_vec())?;
            output.assign(&ndarray::ArrayView1::from(&values));
        }
        Ok(predictions)
    }
}

struct TreeBuilder<'a> {
    records: ArrayView2<'a, f64>,
    targets: ArrayView2<'a, f64>,
    params: &'a ForestParams,
    features_per_split: usize,
}

/// The best split found at a node.
struct SplitChoice {
    feature: usize,
    threshold: f64,
    score: f64,
}

impl TreeBuilder<'_> {
    fn build(&self, indices: Vec<usize>, rng: &mut ChaCha8Rng) -> RegressionTree {
        let mut nodes = Vec::new();
        self.grow(&mut nodes, indices, 0, rng);
        RegressionTree { nodes }
    }

    /// Appends the subtree for `indices` to `nodes` and returns its root's index.
    fn grow(
        &self,
        nodes: &mut Vec<Node>,
        indices: Vec<usize>,
        depth: usize,
        rng: &mut ChaCha8Rng,
    ) -> usize {
        let at = nodes.len();
        nodes.push(Node::Leaf {
            value: self.leaf_value(&indices),
        });
        let splittable =
            depth < self.params.max_depth && indices.len() >= 2 * self.params.min_samples_leaf;
        let Some(choice) = splittable.then(|| self.best_split(&indices, rng)).flatten() else {
            return at;
        };

        let (left_rows, right_rows): (Vec<usize>, Vec<usize>) = indices
            .into_iter()
            .partition(|row| self.records[[*row, choice.feature]] <= choice.threshold);
        let left = self.grow(nodes, left_rows, depth + 1, rng);
        let right = self.grow(nodes, right_rows, depth + 1, rng);
        nodes[at] = Node::Split {
            feature: choice.feature,
            threshold: choice.threshold,
            left,
            right,
        };
        at
    }

    fn leaf_value(&self, indices: &[usize]) -> Vec<f64> {
        match self.params.leaf {
            LeafValue::Mean => self.mean_target(indices),
            LeafValue::Median => self.median_target(indices),
        }
    }

    fn median_target(&self, indices: &[usize]) -> Vec<f64> {
        let mut column = Vec::with_capacity(indices.len());
        (0..self.targets.ncols())
            .map(|output| {
                column.clear();
                column.extend(indices.iter().map(|row| self.targets[[*row, output]]));
                if column.is_empty() {
                    return 0.0;
                }
                let middle = (column.len() - 1) / 2;
                *column.select_nth_unstable_by(middle, f64::total_cmp).1
            })
            .collect()
    }

    fn mean_target(&self, indices: &[usize]) -> Vec<f64> {
        let mut sums = vec![0.0; self.targets.ncols()];
        for row in indices {
            for (sum, value) in sums.iter_mut().zip(self.targets.row(*row)) {
                *sum += value;
            }
        }
        let count = indices.len().max(1) as f64;
        sums.into_iter().map(|sum| sum / count).collect()
    }

    /// Searches a random subset of features for the split with the lowest squared error.
    ///
    /// The squared error of a set of rows is `sum(y^2) - sum(y)^2 / n` per output, so the
    /// best split is the one with the largest `sum_left^2 / n_left + sum_right^2 / n_right`.
    /// Returns `None` when no split improves on the node or keeps `min_samples_leaf` rows on
    /// both sides.
    fn best_split(&self, indices: &[usize], rng: &mut ChaCha8Rng) -> Option<SplitChoice> {
        let outputs = self.targets.ncols();
        let count = indices.len();
        let min_leaf = self.params.min_samples_leaf;
        let mut totals = vec![0.0; outputs];
        for row in indices {
            for (total, value) in totals.iter_mut().zip(self.targets.row(*row)) {
                *total += value;
            }
        }
        let parent_score = totals.iter().map(|sum| sum * sum).sum::<f64>() / count as f64;

        let mut best: Option<SplitChoice> = None;
        let mut ordered: Vec<u128> = Vec::with_capacity(count);
        let mut left_sums = vec![0.0; outputs];
        for feature in sample(rng, self.records.ncols(), self.features_per_split) {
            ordered.clear();
            ordered.extend(
                indices
                    .iter()
                    .map(|row| sort_key(self.records[[*row, feature]], *row)),
            );
            // The keys sort as the (value, row) pairs by `f64::total_cmp`, then row. Equal keys
            // are the same row drawn twice, so an unstable sort gives the order of a stable one
            // without its scratch buffer.
            ordered.sort_unstable();
            left_sums.iter_mut().for_each(|sum| *sum = 0.0);

            for position in 0..count - 1 {
                let (value, row) = pair_of(ordered[position]);
                for (sum, target) in left_sums.iter_mut().zip(self.targets.row(row)) {
                    *sum += target;
                }
                let left_count = position + 1;
                let right_count = count - left_count;
                let next_value = pair_of(ordered[position + 1]).0;
                if left_count < min_leaf || right_count < min_leaf || value >= next_value {
                    continue;
                }
                let score = left_sums
                    .iter()
                    .zip(&totals)
                    .map(|(left, total)| {
                        let right = total - left;
                        left * left / left_count as f64 + right * right / right_count as f64
                    })
                    .sum::<f64>();
                if best.as_ref().is_none_or(|best| score > best.score) {
                    // The midpoint can round up to `next_value`, but the lower value still splits.
                    let midpoint = value + (next_value - value) / 2.0;
                    let threshold = if midpoint < next_value {
                        midpoint
                    } else {
                        value
                    };
                    best = Some(SplitChoice {
                        feature,
                        threshold,
                        score,
                    });
                }
            }
        }
        best.filter(|best| best.score > parent_score * (1.0 + 1e-12) + 1e-12)
    }
}

/// Returns a key whose unsigned order is the order of `(value, row)` by `f64::total_cmp`,
/// then by row: the value's bits mapped to that order in the high 64 bits, the row below.
fn sort_key(value: f64, row: usize) -> u128 {
    let bits = value.to_bits();
    // `total_cmp` compares the bits as an i64 after flipping the low 63 bits of a negative
    // value. Flipping the sign bit as well turns that signed order into the unsigned one.
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    (u128::from(ordered) << 64) | row as u128
}

/// Returns the value and row of a key made by [`sort_key`].
fn pair_of(key: u128) -> (f64, usize) {
    let ordered = (key >> 64) as u64;
    let bits = if ordered >> 63 == 1 {
        ordered & !(1 << 63)
    } else {
        !ordered
    };
    (f64::from_bits(bits), key as u64 as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn tree_splits_at_the_step() {
        let records = array![[1.0], [2.0], [3.0], [10.0], [11.0], [12.0]];
        let targets = array![
            [0.0, 1.0],
            [0.0, 1.0],
            [0.0, 1.0],
            [1.0, 0.0],
            [1.0, 0.0],
            [1.0, 0.0]
        ];
        let params = ForestParams {
            trees: 1,
            min_samples_leaf: 1,
            sample_fraction: 1.0,
            ..ForestParams::default()
        };
        let builder = TreeBuilder {
            records: records.view(),
            targets: targets.view(),
            params: &params,
            features_per_split: 1,
        };
        let tree = builder.build((0..6).collect(), &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(tree.nodes.len(), 3);
        let Node::Split { threshold, .. } = tree.nodes[0] else {
            panic!("root is not a split: {:?}", tree.nodes[0]);
        };
        assert_eq!(threshold, 6.5);
        assert_eq!(tree.predict(&[0.0]), &[0.0, 1.0]);
        assert_eq!(tree.predict(&[20.0]), &[1.0, 0.0]);
    }

    #[test]
    fn median_leaf_ignores_outlier() {
        let records = array![[1.0], [2.0], [3.0], [4.0], [5.0]];
        let targets = array![[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [1.0, 4.0], [0.0, 100.0]];
        let mut params = ForestParams {
            trees: 1,
            max_depth: 0,
            leaf: LeafValue::Median,
            ..ForestParams::default()
        };
        let builder = |params: &ForestParams| {
            TreeBuilder {
                records: records.view(),
                targets: targets.view(),
                params,
                features_per_split: 1,
            }
            .build((0..5).collect(), &mut ChaCha8Rng::seed_from_u64(1))
        };
        assert_eq!(builder(&params).predict(&[0.0]), &[0.0, 3.0]);
        params.leaf = LeafValue::Mean;
        assert_eq!(builder(&params).predict(&[0.0]), &[0.2, 22.0]);
        // With an even count, the lower of the two middle values.
        let even = TreeBuilder {
            records: records.view(),
            targets: targets.view(),
            params: &ForestParams {
                leaf: LeafValue::Median,
                ..params.clone()
            },
            features_per_split: 1,
        };
        assert_eq!(even.median_target(&[0, 1, 2, 4]), vec![0.0, 2.0]);
    }

    #[test]
    fn constant_target_gives_single_leaf() {
        let records = array![[1.0], [2.0], [3.0], [4.0]];
        let targets = array![[0.5], [0.5], [0.5], [0.5]];
        let params = ForestParams {
            min_samples_leaf: 1,
            ..ForestParams::default()
        };
        let builder = TreeBuilder {
            records: records.view(),
            targets: targets.view(),
            params: &params,
            features_per_split: 1,
        };
        let tree = builder.build((0..4).collect(), &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(tree.nodes.len(), 1);
    }

    #[test]
    fn sort_keys_follow_total_order_then_row() {
        let values = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -f64::MIN_POSITIVE,
            -5e-324,
            -0.0,
            0.0,
            5e-324,
            f64::MIN_POSITIVE,
            1.0,
            1.0 + f64::EPSILON,
            1e300,
            f64::INFINITY,
        ];
        let mut pairs: Vec<(f64, usize)> = Vec::new();
        for (index, value) in values.iter().enumerate() {
            for row in [0, 7, usize::MAX >> 1] {
                pairs.push((*value, row + index % 3));
            }
        }
        for (value, row) in &pairs {
            let (decoded, decoded_row) = pair_of(sort_key(*value, *row));
            assert_eq!(decoded.to_bits(), value.to_bits());
            assert_eq!(decoded_row, *row);
        }
        for a in &pairs {
            for b in &pairs {
                let expected = a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
                let found = sort_key(a.0, a.1).cmp(&sort_key(b.0, b.1));
                assert_eq!(found, expected, "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn forest_rejects_zero_trees() {
        let params = ForestParams {
            trees: 0,
            ..ForestParams::default()
        };
        let error = params.validate().unwrap_err().to_string();
        assert!(error.contains("trees = 0"), "{error}");
    }
}
