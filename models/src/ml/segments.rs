//! User segmentation by k-means over standardized window features.
//!
//! The clustering is linfa's k-means (k-means++ initialisation, several seeded runs, the
//! run with the lowest inertia kept), fitted by `super::kmeans`, which returns linfa's model
//! bit for bit in less time. This module adds what a stream of real users needs around
//! it: the number of segments can be chosen from the data, and inputs with fewer distinct rows
//! than segments lower k with a warning instead of producing duplicate centroids.
//!
//! When `k` is not given, every k in 2..=8 is fitted and the one with the highest mean
//! silhouette coefficient wins (ties go to the smaller k). The silhouette of a row is
//! `(b - a) / max(a, b)`, with `a` its mean distance to its own segment and `b` its mean
//! distance to the nearest other segment. A row alone in its segment scores 0, since scoring it
//! 1 would favour the largest k on small inputs. The silhouette is computed on a seeded
//! subsample of at most `silhouette_rows` rows, because its cost is quadratic in the rows.
//! linfa 0.8 has a silhouette score, but it scores a lone row 1 and recomputes every distance
//! for each k, so this module computes its own from one distance matrix.

use linfa::prelude::*;
use linfa_clustering::KMeans;
use linfa_nn::distance::L2Dist;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{check_matrix, check_positive_count, check_row, invalid, FitWarning, MlError};
use super::kmeans::{
    fit_kmeans_like_linfa, nearest_centroid, InterleavedCentroids, KMeansSettings, LANES,
};

/// Smallest k tried when choosing k from the data.
pub const AUTO_K_MIN: usize = 2;
/// Largest k tried when choosing k from the data.
pub const AUTO_K_MAX: usize = 8;

/// Settings of [`Segmenter`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentParams {
    /// Number of segments, or `None` to choose it by the silhouette (see the module docs).
    pub k: Option<usize>,
    /// Seeded k-means runs per k. The run with the lowest inertia is kept.
    pub runs: usize,
    /// Maximum k-means iterations per run.
    pub max_iterations: u64,
    /// A run stops when the centroids move less than this (Euclidean distance).
    pub tolerance: f64,
    /// Maximum rows used to compute the silhouette when choosing k.
    pub silhouette_rows: usize,
}

impl Default for SegmentParams {
    fn default() -> Self {
        SegmentParams {
            k: None,
            runs: 5,
            max_iterations: 300,
            tolerance: 1e-4,
            silhouette_rows: 1000,
        }
    }
}

impl SegmentParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        if let Some(k) = self.k {
            check_positive_count("segmenter", "k", k)?;
        }
        check_positive_count("segmenter", "runs", self.runs)?;
        if self.max_iterations == 0 {
            return Err(invalid("segmenter", "max_iterations", 0, "at least 1"));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(invalid(
                "segmenter",
                "tolerance",
                self.tolerance,
                "a finite number > 0",
            ));
        }
        if self.silhouette_rows < 2 {
            return Err(invalid(
                "segmenter",
                "silhouette_rows",
                self.silhouette_rows,
                "at least 2",
            ));
        }
        Ok(())
    }
}

/// A fitted k-means segmentation.
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use veer_models::ml::{SegmentParams, Segmenter};
///
/// let rows = array![[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]];
/// let (segmenter, warnings) = Segmenter::fit(rows.view(), &SegmentParams::default(), 7).unwrap();
/// assert_eq!(segmenter.k(), 2);
/// // Six distinct rows cannot fill eight segments, so the search stopped at k = 6.
/// assert_eq!(warnings[0].to_string(), "6 distinct profiles, largest k tried reduced from 8 to 6");
/// let near_origin = segmenter.predict(&[0.05, 0.05]).unwrap();
/// assert_eq!(segmenter.predict(&[0.1, 0.1]).unwrap(), near_origin);
/// assert_ne!(segmenter.predict(&[4.9, 5.2]).unwrap(), near_origin);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segmenter {
    model: KMeans<f64, L2Dist>,
    /// Mean silhouette of the chosen k, when k was chosen from the data.
    silhouette: Option<f64>,
}

impl Segmenter {
    /// Fits k-means on `records`, returning the segmenter and any setting it had to lower.
    ///
    /// Fewer distinct rows than the requested k lower k to that number. One distinct row (a
    /// single row, or identical rows) gives one segment.
    pub fn fit(
        records: ArrayView2<'_, f64>,
        params: &SegmentParams,
        seed: u64,
    ) -> Result<(Segmenter, Vec<FitWarning>), MlError> {
        params.validate()?;
        check_matrix("segmenter", records, None)?;
        let distinct = count_distinct_rows(records);
        let mut warnings = Vec::new();

        let candidates: Vec<usize> = match params.k {
            Some(k) => {
                let used = k.min(distinct);
                if used < k {
                    warnings.push(FitWarning::ClustersReduced {
                        requested: k,
                        used,
                        distinct_rows: distinct,
                    });
                }
                vec![used]
            }
            None if distinct < AUTO_K_MIN => {
                warnings.push(FitWarning::ClustersReduced {
                    requested: AUTO_K_MIN,
                    used: distinct,
                    distinct_rows: distinct,
                });
                vec![distinct]
            }
            None => {
                let max_k = AUTO_K_MAX.min(distinct);
                if max_k < AUTO_K_MAX {
                    warnings.push(FitWarning::ClusterRangeReduced {
                        requested: AUTO_K_MAX,
                        used: max_k,
                        distinct_rows: distinct,
                    });
                }
                (AUTO_K_MIN..=max_k).collect()
            }
        };

        if let [k] = candidates[..] {
            let model = fit_kmeans(records, k, params, seed)?;
            return Ok((
                Segmenter {
                    model,
                    silhouette: None,
                },
                warnings,
            ));
        }

        let sample = silhouette_sample(records, params.silhouette_rows, seed);
        let distances = pairwise_distances(sample.view());
        let mut best: Option<(f64, KMeans<f64, L2Dist>)> = None;
        for k in candidates {
            let model = fit_kmeans(records, k, params, seed)?;
            let labels: Vec<usize> = sample
                .rows()
                .into_iter()
                .map(|row| model.predict(&row))
                .collect();
            let score = silhouette(&distances, &labels, k);
            if best
                .as_ref()
                .is_none_or(|(best_score, _)| score > *best_score)
            {
                best = Some((score, model));
            }
        }
        let (score, model) = best.expect("the automatic k range has at least one candidate");
        Ok((
            Segmenter {
                model,
                silhouette: Some(score),
            },
            warnings,
        ))
    }

    /// Returns the number of segments.
    pub fn k(&self) -> usize {
        self.model.centroids().nrows()
    }

    /// Returns the number of features the segmenter was fitted on.
    pub fn width(&self) -> usize {
        self.model.centroids().ncols()
    }

    /// Returns the centroids, one row per segment.
    pub fn centroids(&self) -> ArrayView2<'_, f64> {
        self.model.centroids().view()
    }

    /// Returns the mean silhouette of the chosen k, or `None` when k was given or forced.
    pub fn silhouette(&self) -> Option<f64> {
        self.silhouette
    }

    /// Returns the segment of one row: the index of its nearest centroid.
    pub fn predict(&self, row: &[f64]) -> Result<usize, MlError> {
        check_row("segmenter", row, self.width(), None)?;
        // linfa's prediction of one row goes through ndarray views and its generic distance.
        // This loop over the row-major centroids computes the same sums in the same order, so
        // it returns linfa's segment with fewer instructions.
        match self.model.centroids().as_slice() {
            Some(centroids) if !row.is_empty() => Ok(nearest_centroid(centroids, row.len(), row).0),
            _ => Ok(self.model.predict(&ArrayView1::from(row))),
        }
    }

    /// Returns the segment of every row.
    pub fn predict_all(&self, records: ArrayView2<'_, f64>) -> Result<Vec<usize>, MlError> {
        check_matrix("segmenter", records, None)?;
        if records.ncols() != self.width() {
            return Err(MlError::WidthMismatch {
                model: "segmenter",
                expected: self.width(),
                found: records.ncols(),
            });
        }
        Ok(records
            .rows()
            .into_iter()
            .map(|row| self.model.predict(&row))
            .collect())
    }
}

/// Fits k-means as linfa's `KMeans::params_with_rng(k, ChaCha8Rng::seed_from_u64(seed))` with
/// the settings of `params` does, by [`fit_kmeans_like_linfa`].
fn fit_kmeans(
    records: ArrayView2<'_, f64>,
    k: usize,
    params: &SegmentParams,
    seed: u64,
) -> Result<KMeans<f64, L2Dist>, MlError> {
    let settings = KMeansSettings {
        clusters: k,
        runs: params.runs,
        max_iterations: params.max_iterations,
        tolerance: params.tolerance,
    };
    fit_kmeans_like_linfa(records, settings, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// Counts distinct rows, comparing values bit for bit after sorting.
fn count_distinct_rows(records: ArrayView2<'_, f64>) -> usize {
    let mut rows: Vec<ArrayView1<'_, f64>> = records.rows().into_iter().collect();
    let compare = |a: &ArrayView1<'_, f64>, b: &ArrayView1<'_, f64>| {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| x.total_cmp(y))
            .find(|ordering| ordering.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    };
    rows.sort_by(compare);
    rows.dedup_by(|a, b| compare(a, b).is_eq());
    rows.len()
}

/// Returns at most `max_rows` rows, drawn without replacement by a seeded generator.
fn silhouette_sample(records: ArrayView2<'_, f64>, max_rows: usize, seed: u64) -> Array2<f64> {
    if records.nrows() <= max_rows {
        return records.to_owned();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut indices = sample(&mut rng, records.nrows(), max_rows).into_vec();
    indices.sort_unstable();
    records.select(Axis(0), &indices)
}

/// Returns the Euclidean distance of every pair of rows, which must have at least one column.
/// Each squared distance is summed over the features in index order, four pairs side by side.
fn pairwise_distances(records: ArrayView2<'_, f64>) -> Array2<f64> {
    let (rows, width) = records.dim();
    let standard = records.as_standard_layout();
    let values = standard
        .as_slice()
        .expect("a standard-layout array is one slice");
    let mut interleaved = InterleavedCentroids::new(values, width);
    let mut distances = Array2::zeros((rows, rows));
    for (i, point) in values.chunks_exact(width).enumerate() {
        // Only the pairs with j > i are computed: the blocks from the one that holds i + 1.
        let first_block = (i + 1) / LANES;
        let squared = interleaved.distances_from(point, first_block);
        for j in (i + 1)..rows {
            let distance = squared[j - first_block * LANES].sqrt();
            distances[[i, j]] = distance;
            distances[[j, i]] = distance;
        }
    }
    distances
}

/// Returns the mean silhouette coefficient of a labelling, or -1 when it has one segment.
fn silhouette(distances: &Array2<f64>, labels: &[usize], k: usize) -> f64 {
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|label| sizes[*label] += 1);
    if sizes.iter().filter(|size| **size > 0).count() < 2 {
        return -1.0;
    }

    // The rows sorted by segment, each segment's rows in row order (a stable sort), so each
    // segment's sum below adds the same distances in the same order as a pass over all rows.
    let mut by_segment: Vec<usize> = (0..labels.len()).collect();
    by_segment.sort_by_key(|row| labels[*row]);
    let standard = distances.as_standard_layout();
    let values = standard
        .as_slice()
        .expect("a standard-layout array is one slice");

    let mut total = 0.0;
    let mut sums = vec![0.0; k];
    for (&label, distance_row) in labels.iter().zip(values.chunks_exact(labels.len())) {
        if sizes[label] == 1 {
            continue;
        }
        let mut members = &by_segment[..];
        for (sum, size) in sums.iter_mut().zip(&sizes) {
            let (segment, rest) = members.split_at(*size);
            *sum = segment
                .iter()
                .fold(0.0, |sum, other| sum + distance_row[*other]);
            members = rest;
        }
        let own = sums[label] / (sizes[label] - 1) as f64;
        let nearest = (0..k)
            .filter(|segment| *segment != label && sizes[*segment] > 0)
            .map(|segment| sums[segment] / sizes[segment] as f64)
            .fold(f64::INFINITY, f64::min);
        let spread = own.max(nearest);
        if spread > 0.0 {
            total += (nearest - own) / spread;
        }
    }
    total / labels.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::Rng;

    #[test]
    fn silhouette_of_separated_pairs_is_high() {
        let rows = array![[0.0], [0.1], [10.0], [10.1]];
        let distances = pairwise_distances(rows.view());
        let score = silhouette(&distances, &[0, 0, 1, 1], 2);
        assert!(score > 0.98, "{score}");
        let mixed = silhouette(&distances, &[0, 1, 0, 1], 2);
        assert!(mixed < 0.0, "{mixed}");
    }

    #[test]
    fn pairwise_distances_equal_row_by_row_sums() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for rows in [1, 2, 5, 9] {
            let records = Array2::from_shape_fn((rows, 3), |_| rng.gen_range(-2.0..2.0));
            let distances = pairwise_distances(records.view());
            for i in 0..rows {
                for j in 0..rows {
                    let expected = records
                        .row(i)
                        .iter()
                        .zip(records.row(j))
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let expected = if i == j { 0.0 } else { expected };
                    let found = distances[[i, j]];
                    assert_eq!(found.to_bits(), expected.to_bits(), "{rows} rows, ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn silhouette_scores_singletons_zero() {
        let rows = array![[0.0], [1.0], [2.0]];
        let distances = pairwise_distances(rows.view());
        assert_eq!(silhouette(&distances, &[0, 1, 2], 3), 0.0);
    }

    /// Computes the silhouette by one pass over all rows in row order: the reference that the
    /// per-segment sums must match bit for bit.
    fn silhouette_in_row_order(distances: &Array2<f64>, labels: &[usize], k: usize) -> f64 {
        let mut sizes = vec![0usize; k];
        labels.iter().for_each(|label| sizes[*label] += 1);
        if sizes.iter().filter(|size| **size > 0).count() < 2 {
            return -1.0;
        }
        let mut total = 0.0;
        for (row, &label) in labels.iter().enumerate() {
            if sizes[label] == 1 {
                continue;
            }
            let mut sums = vec![0.0; k];
            for (&other_label, distance) in labels.iter().zip(distances.row(row)) {
                sums[other_label] += distance;
            }
            let own = sums[label] / (sizes[label] - 1) as f64;
            let nearest = (0..k)
                .filter(|segment| *segment != label && sizes[*segment] > 0)
                .map(|segment| sums[segment] / sizes[segment] as f64)
                .fold(f64::INFINITY, f64::min);
            let spread = own.max(nearest);
            if spread > 0.0 {
                total += (nearest - own) / spread;
            }
        }
        total / labels.len() as f64
    }

    #[test]
    fn silhouette_equals_row_order_sums() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let rows = Array2::from_shape_fn((300, 4), |_| rng.gen_range(-3.0..3.0));
        let distances = pairwise_distances(rows.view());
        for k in 2..=8 {
            // Labels in runs and at random, with an empty segment and a singleton for k > 3.
            let labels: Vec<usize> = (0..300)
                .map(|row| match row {
                    0 if k > 3 => k - 2,
                    _ if k > 3 => rng.gen_range(0..k - 2),
                    _ => (row / 7) % k,
                })
                .collect();
            let expected = silhouette_in_row_order(&distances, &labels, k);
            let found = silhouette(&distances, &labels, k);
            assert_eq!(found.to_bits(), expected.to_bits(), "k = {k}");
        }
    }

    #[test]
    fn predict_matches_linfa() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let records = Array2::from_shape_fn((200, 5), |_| rng.gen_range(-3.0..3.0));
        let params = SegmentParams {
            k: Some(4),
            ..SegmentParams::default()
        };
        let (fitted, _) = Segmenter::fit(records.view(), &params, 2).unwrap();

        // The same model with centroid 1 moved onto centroid 0, so every row is equally near
        // to both and the first must win.
        let mut value = serde_json::to_value(&fitted.model).unwrap();
        let data = value["centroids"]["data"].as_array_mut().unwrap();
        for feature in 0..5 {
            data[5 + feature] = data[feature].clone();
        }
        let tied = Segmenter {
            model: serde_json::from_value(value).unwrap(),
            silhouette: None,
        };

        // The fit's rows, the centroids, a midpoint and a row far out.
        let mut probes: Vec<Vec<f64>> =
            records.rows().into_iter().map(|row| row.to_vec()).collect();
        probes.extend(
            fitted
                .centroids()
                .rows()
                .into_iter()
                .map(|row| row.to_vec()),
        );
        let centroids = fitted.centroids();
        let (first, second) = (centroids.row(0), centroids.row(2));
        probes.push(
            first
                .iter()
                .zip(second)
                .map(|(a, b)| (a + b) / 2.0)
                .collect(),
        );
        probes.push(vec![1e154, -1e154, 0.0, 0.0, 0.0]);

        for segmenter in [&fitted, &tied] {
            for probe in &probes {
                let expected = segmenter.model.predict(&ArrayView1::from(probe.as_slice()));
                assert_eq!(segmenter.predict(probe).unwrap(), expected, "{probe:?}");
            }
        }

        let centroid = fitted.centroids().row(0).to_vec();
        assert_eq!(tied.predict(&centroid).unwrap(), 0);
    }

    #[test]
    fn distinct_rows_ignore_duplicates() {
        let rows = array![[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [1.0, 2.0]];
        assert_eq!(count_distinct_rows(rows.view()), 2);
    }
}
