//! A k-means fit that returns the same model as linfa-clustering 0.8.1, bit for bit, in less
//! time.
//!
//! linfa's `KMeans` fit computes each distance through ndarray's generic `Zip` and splits
//! every assignment step across rayon's thread pool, which costs more than the arithmetic on
//! the few thousand rows a segmentation fits on. This module copies the rows into one row-major
//! buffer and runs linfa's algorithm on one thread, with the same floating-point operations in
//! the same order:
//!
//! - k-means++ initialisation draws the first centroid by `WeightedIndex` over weights of 1.
//!   Each further centroid is drawn by `WeightedIndex` over every row's squared distance to
//!   its nearest chosen centroid, or is row 0 when all those distances are 0.
//! - Each iteration assigns every row to its nearest centroid by squared Euclidean distance,
//!   the first of equally near ones. Then each centroid moves to the mean of its rows and its
//!   old position, which counts as one more row (linfa's "m_k-means" update).
//! - A run stops when the centroids move less than the tolerance (Euclidean distance over the
//!   whole centroid matrix) or after the maximum iterations. Its inertia is the sum of the
//!   squared distances of the last assignment.
//! - The runs share one random generator, and the first run with the lowest inertia wins.
//!
//! Like linfa, the returned model's cluster counts come from the last run's assignment, not
//! the winning run's. The model is linfa's `KMeans`, built through its serde form, so saved
//! models and predictions are unchanged.

use linfa_clustering::{KMeans, KMeansError, KMeansParamsError};
use linfa_nn::distance::L2Dist;
use ndarray::{Array1, Array2, ArrayView2};
use rand::distributions::{Distribution, WeightedIndex};
use rand::Rng;
use serde::Serialize;

use super::error::MlError;

/// Settings of one k-means fit, as linfa's `KMeansParams` names them.
#[derive(Clone, Copy, Debug)]
pub(super) struct KMeansSettings {
    pub clusters: usize,
    pub runs: usize,
    pub max_iterations: u64,
    pub tolerance: f64,
}

/// The fields of linfa's `KMeans<f64, L2Dist>` in its serde order, to build one.
#[derive(Serialize)]
struct KMeansFields {
    centroids: Array2<f64>,
    cluster_count: Array1<f64>,
    inertia: f64,
    dist_fn: L2Dist,
}

/// Fits k-means on the rows of `records` as linfa's `KMeans::params_with_rng(clusters, rng)`
/// with k-means++ initialisation does, and returns the same model.
///
/// Fails with linfa's errors for a zero setting, and when no run has a finite inertia.
pub(super) fn fit_kmeans_like_linfa<R: Rng>(
    records: ArrayView2<'_, f64>,
    settings: KMeansSettings,
    rng: &mut R,
) -> Result<KMeans<f64, L2Dist>, MlError> {
    check_settings(&settings)?;
    let (rows, width) = records.dim();
    let clusters = settings.clusters;
    if rows == 0 {
        return Err(MlError::EmptyInput {
            model: "segmenter",
            detail: "k-means needs at least one row",
        });
    }
    let data: Vec<f64> = records.rows().into_iter().flatten().copied().collect();

    let mut memberships = vec![0usize; rows];
    // An ndarray vector, so that the inertia is summed by ndarray's `sum`, as in linfa.
    let mut distances = Array1::<f64>::zeros(rows);
    let mut lowest_inertia = f64::INFINITY;
    let mut best: Option<Vec<f64>> = None;
    for _ in 0..settings.runs {
        let mut centroids = plus_plus_centroids(&data, rows, width, clusters, rng);
        let mut iterations = 0u64;
        let inertia = loop {
            let distances_slice = distances
                .as_slice_mut()
                .expect("a new ndarray vector is contiguous");
            assign_rows(&data, width, &centroids, &mut memberships, distances_slice);
            let moved = updated_centroids(&centroids, &data, width, &memberships);
            let shift = squared_distance(&centroids, &moved).sqrt();
            centroids = moved;
            iterations += 1;
            if shift < settings.tolerance || iterations == settings.max_iterations {
                break distances.sum();
            }
        };
        if inertia < lowest_inertia {
            lowest_inertia = inertia;
            best = Some(centroids);
        }
    }
    let Some(centroids) = best else {
        return Err(KMeansError::InertiaError.into());
    };

    let mut cluster_count = Array1::<f64>::zeros(clusters);
    for membership in &memberships {
        cluster_count[*membership] += 1.0;
    }
    let fields = KMeansFields {
        centroids: Array2::from_shape_vec((clusters, width), centroids)
            .expect("one centroid of the input width per cluster"),
        cluster_count,
        inertia: lowest_inertia / rows as f64,
        dist_fn: L2Dist,
    };
    // A serde_json value stores each f64 as a number, not as text, so the model gets the
    // exact values.
    let value = serde_json::to_value(fields)?;
    Ok(serde_json::from_value(value)?)
}

/// Rejects the settings that linfa's parameter check rejects, with its errors.
fn check_settings(settings: &KMeansSettings) -> Result<(), MlError> {
    let error = if settings.clusters == 0 {
        KMeansParamsError::NClusters
    } else if settings.runs == 0 {
        KMeansParamsError::NRuns
    } else if settings.tolerance <= 0.0 {
        KMeansParamsError::Tolerance
    } else if settings.max_iterations == 0 {
        KMeansParamsError::MaxIterations
    } else {
        return Ok(());
    };
    Err(KMeansError::InvalidParams(error).into())
}

/// Draws the initial centroids by k-means++, as linfa's `KMeansInit::KMeansPlusPlus` does,
/// and returns them row-major.
fn plus_plus_centroids<R: Rng>(
    data: &[f64],
    rows: usize,
    width: usize,
    clusters: usize,
    rng: &mut R,
) -> Vec<f64> {
    let row = |index: usize| &data[index * width..(index + 1) * width];
    let mut centroids = vec![0.0; clusters * width];
    let uniform = WeightedIndex::new(std::iter::repeat_n(1.0f64, rows))
        .expect("at least one row of weight 1");
    let first = uniform.sample(rng);
    centroids[..width].copy_from_slice(row(first));
    let mut distances = vec![0.0f64; rows];
    for chosen in 1..clusters {
        for (index, distance) in distances.iter_mut().enumerate() {
            *distance = nearest_centroid(&centroids[..chosen * width], width, row(index)).1;
        }
        // linfa multiplies the distances by weights of 1 here, which changes no value.
        let next = WeightedIndex::new(distances.iter())
            .map(|index| index.sample(rng))
            .unwrap_or(0);
        centroids[chosen * width..(chosen + 1) * width].copy_from_slice(row(next));
    }
    centroids
}

/// Returns the index of the centroid nearest to `point` and its squared distance. Of equally
/// near centroids the first wins.
fn nearest_centroid(centroids: &[f64], width: usize, point: &[f64]) -> (usize, f64) {
    let mut nearest = (0, squared_distance(&centroids[..width], point));
    for (index, centroid) in centroids.chunks_exact(width).enumerate().skip(1) {
        let distance = squared_distance(centroid, point);
        if distance < nearest.1 {
            nearest = (index, distance);
        }
    }
    nearest
}

/// Centroids whose distances to a row [`assign_rows`] sums side by side.
const LANES: usize = 4;

/// Assigns each row of `data` to its nearest centroid and stores its squared distance, with
/// the same result as [`nearest_centroid`] for each row.
///
/// The centroids are stored feature by feature, [`LANES`] of them side by side, so the
/// compiler can compute their distances in vector registers. Each distance is still summed
/// over the features in index order, so every value is that of [`squared_distance`].
fn assign_rows(
    data: &[f64],
    width: usize,
    centroids: &[f64],
    memberships: &mut [usize],
    distances: &mut [f64],
) {
    let clusters = centroids.len() / width;
    let blocks = clusters.div_ceil(LANES);
    // Block b holds centroids b * LANES.. as `width` groups of LANES values, padded with 0.
    let mut interleaved = vec![0.0; blocks * width * LANES];
    for (cluster, centroid) in centroids.chunks_exact(width).enumerate() {
        let (block, lane) = (cluster / LANES, cluster % LANES);
        for (feature, value) in centroid.iter().enumerate() {
            interleaved[(block * width + feature) * LANES + lane] = *value;
        }
    }
    let mut sums = vec![0.0; blocks * LANES];
    for ((point, membership), distance) in data
        .chunks_exact(width)
        .zip(memberships.iter_mut())
        .zip(distances.iter_mut())
    {
        for (block, sum) in interleaved
            .chunks_exact(width * LANES)
            .zip(sums.chunks_exact_mut(LANES))
        {
            let mut lanes = [0.0f64; LANES];
            for (value, group) in point.iter().zip(block.chunks_exact(LANES)) {
                for (total, coordinate) in lanes.iter_mut().zip(group) {
                    let difference = coordinate - value;
                    *total += difference * difference;
                }
            }
            sum.copy_from_slice(&lanes);
        }
        // The first of equally near centroids wins, as in `nearest_centroid`.
        let mut nearest = (0, sums[0]);
        for (cluster, &candidate) in sums[..clusters].iter().enumerate().skip(1) {
            if candidate < nearest.1 {
                nearest = (cluster, candidate);
            }
        }
        *membership = nearest.0;
        *distance = nearest.1;
    }
}

/// Returns the squared Euclidean distance, summed in index order as ndarray-stats'
/// `sq_l2_dist` sums it.
fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        let difference = x - y;
        sum += difference * difference;
    }
    sum
}

/// Returns the centroids after one update: each is the sum of its rows, plus its old position,
/// divided by the number of its rows plus one.
fn updated_centroids(
    centroids: &[f64],
    data: &[f64],
    width: usize,
    memberships: &[usize],
) -> Vec<f64> {
    let clusters = centroids.len() / width;
    let mut sums = vec![0.0; centroids.len()];
    let mut counts = vec![1usize; clusters];
    for (point, &cluster) in data.chunks_exact(width).zip(memberships) {
        let sum = &mut sums[cluster * width..(cluster + 1) * width];
        for (total, value) in sum.iter_mut().zip(point) {
            *total += value;
        }
        counts[cluster] += 1;
    }
    for (total, old) in sums.iter_mut().zip(centroids) {
        *total += old;
    }
    for (sum, count) in sums.chunks_exact_mut(width).zip(&counts) {
        let count = *count as f64;
        sum.iter_mut().for_each(|value| *value /= count);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Rows in three loose clumps, with a few exact duplicates.
    fn clumps(rows: usize, width: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, width), |(row, column)| {
            let centre = ((row % 3) as f64) * 2.5 - (column as f64) * 0.3;
            let noise: f64 = rng.gen_range(-1.0..1.0);
            if row % 17 == 0 {
                centre
            } else {
                centre + noise
            }
        })
    }

    fn linfa_fit(
        records: ArrayView2<'_, f64>,
        settings: KMeansSettings,
        seed: u64,
    ) -> KMeans<f64, L2Dist> {
        KMeans::params_with_rng(settings.clusters, ChaCha8Rng::seed_from_u64(seed))
            .n_runs(settings.runs)
            .max_n_iterations(settings.max_iterations)
            .tolerance(settings.tolerance)
            .fit(&DatasetBase::from(records))
            .unwrap()
    }

    #[test]
    fn kmeans_equals_linfa_bit_for_bit() {
        for (rows, width, clusters, seed) in [
            (300, 4, 2, 1),
            (500, 7, 5, 2),
            (200, 3, 8, 3),
            (40, 2, 3, 4),
        ] {
            let records = clumps(rows, width, seed);
            // A column-major copy, the layout the feature selector returns.
            let transposed = records.t().as_standard_layout().into_owned();
            let column_major = transposed.reversed_axes();
            for max_iterations in [2, 300] {
                let settings = KMeansSettings {
                    clusters,
                    runs: 5,
                    max_iterations,
                    tolerance: 1e-4,
                };
                let expected = linfa_fit(records.view(), settings, seed);
                for view in [records.view(), column_major.view()] {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    let fitted = fit_kmeans_like_linfa(view, settings, &mut rng).unwrap();
                    assert_eq!(
                        fitted, expected,
                        "{rows} rows, k = {clusters}, {max_iterations} iterations"
                    );
                    assert_eq!(fitted.inertia().to_bits(), expected.inertia().to_bits());
                }
            }
        }
    }

    #[test]
    fn assignment_equals_nearest_centroid() {
        let width = 3;
        let records = clumps(200, width, 6);
        let data: Vec<f64> = records.iter().copied().collect();
        for clusters in 1..=9 {
            // Centroids taken from the rows, with row 5 twice, so ties occur.
            let mut centroids: Vec<f64> = (0..clusters)
                .flat_map(|cluster| records.row(cluster * 7 % 200).to_vec())
                .collect();
            if clusters >= 3 {
                centroids[2 * width..3 * width].copy_from_slice(&data[5 * width..6 * width]);
                centroids[..width].copy_from_slice(&data[5 * width..6 * width]);
            }
            let mut memberships = vec![usize::MAX; 200];
            let mut distances = vec![f64::NAN; 200];
            assign_rows(&data, width, &centroids, &mut memberships, &mut distances);
            for (index, point) in data.chunks_exact(width).enumerate() {
                let (nearest, distance) = nearest_centroid(&centroids, width, point);
                assert_eq!(memberships[index], nearest, "k = {clusters}, row {index}");
                assert_eq!(
                    distances[index].to_bits(),
                    distance.to_bits(),
                    "k = {clusters}"
                );
            }
        }
    }

    #[test]
    fn kmeans_of_identical_rows_equals_linfa() {
        let records = Array2::from_elem((10, 3), 1.5);
        let settings = KMeansSettings {
            clusters: 2,
            runs: 3,
            max_iterations: 300,
            tolerance: 1e-4,
        };
        let expected = linfa_fit(records.view(), settings, 9);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let fitted = fit_kmeans_like_linfa(records.view(), settings, &mut rng).unwrap();
        assert_eq!(fitted, expected);
    }

    #[test]
    fn kmeans_rejects_zero_runs() {
        let records = Array2::from_elem((4, 2), 1.0);
        let settings = KMeansSettings {
            clusters: 2,
            runs: 0,
            max_iterations: 300,
            tolerance: 1e-4,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let error = fit_kmeans_like_linfa(records.view(), settings, &mut rng).unwrap_err();
        assert!(error.to_string().contains("n_runs"), "{error}");
    }
}
