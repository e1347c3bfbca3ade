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
//! These shortcuts skip work without changing any value:
//!
//! - After the first assignment of a run, Hamerly's distance bounds (see [`DistanceBounds`])
//!   keep a row's centroid without computing its distances when the bounds prove that the
//!   centroid is still strictly the nearest.
//! - The squared distances for the inertia are computed once, after the last assignment.
//! - The sums of each cluster's rows are kept when no row joined or left the cluster.
//! - k-means++ keeps each row's distance to its nearest chosen centroid and compares it with
//!   the newest centroid only.
//! - On a CPU with AVX, the distances and member sums are computed in 256-bit registers,
//!   with the same operations per value and no fused multiply-add, so the same values.
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
    let mut bounds = DistanceBounds::new(&data, width, clusters);
    let mut member_sums = MemberSums::new(rows, width, clusters);
    let mut interleaved_rows = InterleavedCentroids::new(&data, width);
    let mut lowest_inertia = f64::INFINITY;
    let mut best: Option<Vec<f64>> = None;
    for _ in 0..settings.runs {
        let mut centroids =
            plus_plus_centroids(&data, &mut interleaved_rows, rows, width, clusters, rng);
        bounds.assign_all(&data, &centroids, &mut memberships);
        let mut iterations = 0u64;
        let (inertia, last) = loop {
            member_sums.refresh(&data, &memberships, &bounds.changed);
            let moved = member_sums.moved(&centroids);
            let shift = squared_distance(&centroids, &moved).sqrt();
            iterations += 1;
            if shift < settings.tolerance || iterations == settings.max_iterations {
                let distances_slice = distances
                    .as_slice_mut()
                    .expect("a new ndarray vector is contiguous");
                assigned_distances(&data, width, &centroids, &memberships, distances_slice);
                break (distances.sum(), moved);
            }
            bounds.assign_moved(&data, &centroids, &moved, &mut memberships);
            centroids = moved;
        };
        if inertia < lowest_inertia {
            lowest_inertia = inertia;
            best = Some(last);
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
    let value = serde_json::to_value(fields).map_err(MlError::KMeansBuild)?;
    serde_json::from_value(value).map_err(MlError::KMeansBuild)
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
/// and returns them row-major. `interleaved_rows` contains the rows of `data`, so that the
/// distances of a centroid to four rows are summed side by side.
fn plus_plus_centroids<R: Rng>(
    data: &[f64],
    interleaved_rows: &mut InterleavedCentroids,
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
    // Each row's squared distance to its nearest chosen centroid, updated with each new
    // centroid. The minimum is the value that `nearest_centroid` returns over all of them.
    let mut distances = vec![f64::INFINITY; rows];
    for chosen in 1..clusters {
        let newest = &centroids[(chosen - 1) * width..chosen * width];
        for (distance, &candidate) in distances.iter_mut().zip(interleaved_rows.distances(newest))
        {
            if candidate < *distance {
                *distance = candidate;
            }
        }
        // linfa multiplies the distances by weights of 1 here, which changes no value.
        let next = WeightedIndex::new(distances.iter())
            .map(|index| index.sample(rng))
            .unwrap_or(0);
        centroids[chosen * width..(chosen + 1) * width].copy_from_slice(row(next));
    }
    centroids
}

/// Returns the index of the centroid nearest to `point` and its squared distance, as linfa's
/// `closest_centroid` does for `L2Dist`. Of equally near centroids the first wins.
pub(super) fn nearest_centroid(centroids: &[f64], width: usize, point: &[f64]) -> (usize, f64) {
    let mut nearest = (0, squared_distance(&centroids[..width], point));
    for (index, centroid) in centroids.chunks_exact(width).enumerate().skip(1) {
        let distance = squared_distance(centroid, point);
        if distance < nearest.1 {
            nearest = (index, distance);
        }
    }
    nearest
}

/// Centroids whose distances to a row [`InterleavedCentroids`] sums side by side.
pub(super) const LANES: usize = 4;

/// Centroids stored feature by feature, [`LANES`] of them side by side, so the compiler can
/// compute a row's distances to them in vector registers. Each distance is still summed over
/// the features in index order, so every value is that of [`squared_distance`].
pub(super) struct InterleavedCentroids {
    width: usize,
    clusters: usize,
    /// Block b holds centroids b * LANES.. as `width` groups of LANES values, padded with 0.
    values: Vec<f64>,
    /// The squared distances of the last row, padded to whole blocks.
    sums: Vec<f64>,
    /// Whether the CPU has AVX, so that [`block_distances_avx`] computes the distances.
    avx: bool,
}

impl InterleavedCentroids {
    /// Stores the rows of `centroids`, a row-major buffer of rows of `width` values.
    pub(super) fn new(centroids: &[f64], width: usize) -> Self {
        let clusters = centroids.len() / width;
        let blocks = clusters.div_ceil(LANES);
        let mut values = vec![0.0; blocks * width * LANES];
        for (cluster, centroid) in centroids.chunks_exact(width).enumerate() {
            let (block, lane) = (cluster / LANES, cluster % LANES);
            for (feature, value) in centroid.iter().enumerate() {
                values[(block * width + feature) * LANES + lane] = *value;
            }
        }
        InterleavedCentroids {
            width,
            clusters,
            values,
            sums: vec![0.0; blocks * LANES],
            avx: has_avx(),
        }
    }

    /// Returns the squared distances of `point` to every centroid, in centroid order.
    fn distances(&mut self, point: &[f64]) -> &[f64] {
        self.distances_from(point, 0)
    }

    /// Returns the squared distances of `point` to the centroids from `first_block * LANES`
    /// on, in centroid order.
    pub(super) fn distances_from(&mut self, point: &[f64], first_block: usize) -> &[f64] {
        let (values, sums) = (&self.values, &mut self.sums);
        #[cfg(target_arch = "x86_64")]
        if self.avx {
            // SAFETY: `avx` is true only when the running CPU supports AVX.
            unsafe { block_distances_avx(values, self.width, point, first_block, sums) };
            return &self.sums[first_block * LANES..self.clusters];
        }
        block_distances(values, self.width, point, first_block, sums);
        &self.sums[first_block * LANES..self.clusters]
    }
}

/// Returns whether the running CPU supports AVX (the standard library caches the check).
fn has_avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Stores in `sums` the squared distances of `point` to the interleaved centroids of `values`
/// from block `first_block` on, for [`InterleavedCentroids::distances_from`].
#[inline(always)]
fn block_distances(
    values: &[f64],
    width: usize,
    point: &[f64],
    first_block: usize,
    sums: &mut [f64],
) {
    let block_len = width * LANES;
    // Blocks are counted in chunks of the constant LANES, because splitting `values` into
    // chunks of `block_len` would divide by a variable on every call.
    for (index, sum) in sums.chunks_exact_mut(LANES).enumerate().skip(first_block) {
        let block = &values[index * block_len..(index + 1) * block_len];
        let mut lanes = [0.0f64; LANES];
        for (value, group) in point.iter().zip(block.chunks_exact(LANES)) {
            for (total, coordinate) in lanes.iter_mut().zip(group) {
                let difference = coordinate - value;
                *total += difference * difference;
            }
        }
        sum.copy_from_slice(&lanes);
    }
}

/// [`block_distances`] compiled for AVX, so that the four lanes of a block take one 256-bit
/// register where the baseline x86-64 target takes two 128-bit ones. Each lane still rounds
/// the same subtraction, multiplication and addition in the same order, and only AVX is
/// enabled, not FMA, so no multiplication and addition are fused: every sum is that of
/// [`block_distances`], bit for bit.
///
/// # Safety
///
/// The running CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block_distances_avx(
    values: &[f64],
    width: usize,
    point: &[f64],
    first_block: usize,
    sums: &mut [f64],
) {
    block_distances(values, width, point, first_block, sums);
}

/// Returns the index of the smallest of `distances`, the first of equal ones as in
/// [`nearest_centroid`], with its value and the smallest of the others (infinity when there
/// are none).
fn nearest_two(distances: &[f64]) -> (usize, f64, f64) {
    let mut nearest = (0, distances[0]);
    for (cluster, &candidate) in distances.iter().enumerate().skip(1) {
        if candidate < nearest.1 {
            nearest = (cluster, candidate);
        }
    }
    let second = distances
        .iter()
        .enumerate()
        .filter(|(cluster, _)| *cluster != nearest.0)
        .fold(f64::INFINITY, |low, (_, &distance)| low.min(distance));
    (nearest.0, nearest.1, second)
}

/// Assigns each row of `data` to its nearest centroid and stores its squared distance, with
/// the same result as [`nearest_centroid`] for each row.
#[cfg(test)]
fn assign_rows(
    data: &[f64],
    width: usize,
    centroids: &[f64],
    memberships: &mut [usize],
    distances: &mut [f64],
) {
    let mut interleaved = InterleavedCentroids::new(centroids, width);
    for ((point, membership), distance) in data
        .chunks_exact(width)
        .zip(memberships.iter_mut())
        .zip(distances.iter_mut())
    {
        let (nearest, value, _) = nearest_two(interleaved.distances(point));
        *membership = nearest;
        *distance = value;
    }
}

/// Stores each row's squared distance to the centroid it is assigned to.
fn assigned_distances(
    data: &[f64],
    width: usize,
    centroids: &[f64],
    memberships: &[usize],
    distances: &mut [f64],
) {
    for ((point, &cluster), distance) in data
        .chunks_exact(width)
        .zip(memberships)
        .zip(distances.iter_mut())
    {
        *distance = squared_distance(&centroids[cluster * width..(cluster + 1) * width], point);
    }
}

/// Values above which [`DistanceBounds`] is not used: below it no squared distance of the
/// rows or of their means can overflow, so every computed distance has a small relative error.
const BOUNDED_MAGNITUDE: f64 = 1e100;

/// Absolute slack of each bound, far above the error of a squared distance whose terms fall
/// below the smallest normal float.
const BOUND_FLOOR: f64 = 1e-140;

/// Hamerly's bounds for k-means: per row, an upper bound on the distance to its assigned
/// centroid and a lower bound on the distance to every other centroid. A row whose upper
/// bound is below its lower bound, or below half the distance from its centroid to the
/// nearest other centroid, keeps its centroid without computing any distance.
///
/// The assignments are those of computing every distance, bit for bit. Each bound carries a
/// relative slack (`slack`) many times the rounding error of a squared distance, so a row is
/// skipped only when the computed distance to its centroid is strictly smaller than every
/// other computed distance. Ties and near ties are always computed, and the first of equally
/// near centroids wins as in [`nearest_centroid`].
struct DistanceBounds {
    width: usize,
    upper: Vec<f64>,
    lower: Vec<f64>,
    /// Whether the bounds are used. False when a value reaches [`BOUNDED_MAGNITUDE`].
    enabled: bool,
    slack: f64,
    /// Per cluster, whether the last assignment moved a row into or out of it.
    changed: Vec<bool>,
    /// The rows whose bounds did not settle their cluster, first in the buffer.
    pending: Vec<usize>,
}

impl DistanceBounds {
    fn new(data: &[f64], width: usize, clusters: usize) -> Self {
        let rows = data.len() / width;
        let enabled = clusters > 1 && data.iter().all(|value| value.abs() < BOUNDED_MAGNITUDE);
        // A squared distance over `width` features has a relative error of at most about
        // (width + 2) * EPSILON, and each bound update adds a few EPSILON more.
        let slack = (1e-9f64).max(1024.0 * (width as f64 + 2.0) * f64::EPSILON);
        DistanceBounds {
            width,
            upper: vec![0.0; rows],
            lower: vec![0.0; rows],
            enabled,
            slack,
            changed: vec![true; clusters],
            pending: vec![0; rows],
        }
    }

    /// Returns `value` raised by the slack, for an upper bound.
    fn raised(&self, value: f64) -> f64 {
        value * (1.0 + self.slack) + BOUND_FLOOR
    }

    /// Returns `value` lowered by the slack, for a lower bound.
    fn lowered(&self, value: f64) -> f64 {
        value * (1.0 - self.slack) - BOUND_FLOOR
    }

    /// Assigns every row to its nearest centroid by computing all distances, and sets the
    /// bounds.
    fn assign_all(&mut self, data: &[f64], centroids: &[f64], memberships: &mut [usize]) {
        self.changed.fill(true);
        let mut interleaved = InterleavedCentroids::new(centroids, self.width);
        for (row, point) in data.chunks_exact(self.width).enumerate() {
            let (nearest, distance, second) = nearest_two(interleaved.distances(point));
            memberships[row] = nearest;
            self.upper[row] = self.raised(distance.sqrt());
            self.lower[row] = self.lowered(second.sqrt());
        }
    }

    /// Assigns every row to its nearest centroid of `moved`, the centroids after one update
    /// from `centroids`, with the same result as [`DistanceBounds::assign_all`].
    fn assign_moved(
        &mut self,
        data: &[f64],
        centroids: &[f64],
        moved: &[f64],
        memberships: &mut [usize],
    ) {
        if !self.enabled {
            self.assign_all(data, moved, memberships);
            return;
        }
        let width = self.width;
        let centroid = |cluster: usize| &moved[cluster * width..(cluster + 1) * width];

        // How far each centroid moved, and the largest move of any other centroid.
        let shifts: Vec<f64> = centroids
            .chunks_exact(width)
            .zip(moved.chunks_exact(width))
            .map(|(old, new)| self.raised(squared_distance(old, new).sqrt()))
            .collect();
        let clusters: Vec<ClusterMove> = (0..shifts.len())
            .map(|cluster| {
                let other_shift = shifts
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != cluster)
                    .fold(0.0f64, |high, (_, &shift)| high.max(shift));
                // Half the distance from the centroid to its nearest other centroid: a row
                // nearer than that to its centroid is nearer to it than to any other.
                let nearest_other = (0..shifts.len())
                    .filter(|other| *other != cluster)
                    .map(|other| squared_distance(centroid(cluster), centroid(other)))
                    .fold(f64::INFINITY, f64::min);
                ClusterMove {
                    shift: shifts[cluster],
                    other_shift,
                    half_gap: self.lowered(nearest_other.sqrt() / 2.0),
                }
            })
            .collect();

        // First every bound moves with the centroids, and the rows that the bounds do not
        // settle are listed, without a branch per row. Then those rows get every distance.
        let (raise, lower_by) = (1.0 + self.slack, 1.0 - self.slack);
        let rows = memberships.len();
        let (uppers, lowers) = (&mut self.upper[..rows], &mut self.lower[..rows]);
        let pending_rows = &mut self.pending[..rows];
        let mut pending = 0;
        for (row, &cluster) in memberships.iter().enumerate() {
            let change = &clusters[cluster];
            // The same arithmetic as `raised` and `lowered`.
            let upper = (uppers[row] + change.shift) * raise + BOUND_FLOOR;
            let lower = (lowers[row] - change.other_shift) * lower_by - BOUND_FLOOR;
            uppers[row] = upper;
            lowers[row] = lower;
            // `upper < half_gap.max(lower)`, without the branches of `max`'s NaN handling.
            let settled = (upper < change.half_gap) | (upper < lower);
            pending_rows[pending] = row;
            pending += usize::from(!settled);
        }

        self.changed.fill(false);
        let mut interleaved = InterleavedCentroids::new(moved, width);
        for &row in &self.pending[..pending] {
            let point = &data[row * width..(row + 1) * width];
            let (nearest, distance, second) = nearest_two(interleaved.distances(point));
            if nearest != memberships[row] {
                self.changed[memberships[row]] = true;
                self.changed[nearest] = true;
                memberships[row] = nearest;
            }
            self.upper[row] = self.raised(distance.sqrt());
            self.lower[row] = self.lowered(second.sqrt());
        }
    }
}

/// Movement of one centroid in an update, for [`DistanceBounds::assign_moved`].
struct ClusterMove {
    /// Distance the centroid moved, raised by the slack.
    shift: f64,
    /// The largest distance any other centroid moved, raised by the slack.
    other_shift: f64,
    /// Half the distance to the nearest other centroid after the move, lowered by the slack.
    half_gap: f64,
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

/// Each cluster's sum of its rows, and its row count plus one. A cluster's sum depends only on
/// which rows it has, so the sum of a cluster that no row joined or left is kept from the
/// previous iteration, bit for bit the value that summing again would give.
struct MemberSums {
    rows: usize,
    width: usize,
    sums: Vec<f64>,
    counts: Vec<usize>,
    /// Cluster c's rows in row order at `members[c * rows..]`, `counts[c] - 1` of them.
    members: Vec<usize>,
    /// Whether the CPU has AVX, for [`sum_rows`].
    avx: bool,
}

impl MemberSums {
    fn new(rows: usize, width: usize, clusters: usize) -> Self {
        MemberSums {
            rows,
            width,
            sums: vec![0.0; clusters * width],
            counts: vec![1; clusters],
            members: vec![0; clusters * rows],
            avx: has_avx(),
        }
    }

    /// Sums the rows of each cluster marked in `changed` again, in row order.
    fn refresh(&mut self, data: &[f64], memberships: &[usize], changed: &[bool]) {
        if !changed.contains(&true) {
            return;
        }
        let (rows, width) = (self.rows, self.width);
        self.counts.fill(1);
        for (row, &cluster) in memberships.iter().enumerate() {
            self.members[cluster * rows + self.counts[cluster] - 1] = row;
            self.counts[cluster] += 1;
        }
        for (cluster, _) in changed.iter().enumerate().filter(|(_, changed)| **changed) {
            let start = cluster * rows;
            let members = &self.members[start..start + self.counts[cluster] - 1];
            sum_rows(
                data,
                width,
                members,
                &mut self.sums[cluster * width..(cluster + 1) * width],
                self.avx,
            );
        }
    }

    /// Returns the centroids after one update: each is the sum of its rows, plus its old
    /// position, divided by the number of its rows plus one.
    fn moved(&self, centroids: &[f64]) -> Vec<f64> {
        let mut moved = self.sums.clone();
        for (total, old) in moved.iter_mut().zip(centroids) {
            *total += old;
        }
        for (sum, count) in moved.chunks_exact_mut(self.width).zip(&self.counts) {
            let count = *count as f64;
            sum.iter_mut().for_each(|value| *value /= count);
        }
        moved
    }
}

/// Stores in `sum` the element-wise sum of the rows `members` of `data`, added in the order
/// of `members` from 0. With `avx` (which must be true only on a CPU with AVX), the sums
/// are computed by [`sum_rows_avx`], which returns the same values.
fn sum_rows(data: &[f64], width: usize, members: &[usize], sum: &mut [f64], avx: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: the caller passes `avx` true only when the running CPU supports AVX.
        unsafe { sum_rows_avx(data, width, members, sum) };
        return;
    }
    let _ = avx;
    sum_rows_grouped::<SUM_GROUP>(data, width, members, sum);
}

/// [`sum_rows`] compiled for AVX, in groups of 16 columns (4 registers of 256 bits). Each
/// column's sum adds the same values in the same order as [`sum_rows_grouped`] with
/// [`SUM_GROUP`], so every sum is the same bit for bit.
///
/// # Safety
///
/// The running CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn sum_rows_avx(data: &[f64], width: usize, members: &[usize], sum: &mut [f64]) {
    sum_rows_grouped::<{ 2 * SUM_GROUP }>(data, width, members, sum);
}

/// Sums the columns for [`sum_rows`] in groups of `GROUP` (then 8, 4, and one at a time),
/// each group's totals in registers, so no total goes through memory between two rows. Each
/// column's sum depends only on the order of `members`, not on the grouping.
#[inline(always)]
fn sum_rows_grouped<const GROUP: usize>(
    data: &[f64],
    width: usize,
    members: &[usize],
    sum: &mut [f64],
) {
    let mut column = 0;
    while column + GROUP <= width {
        sum[column..column + GROUP]
            .copy_from_slice(&column_totals::<GROUP>(data, width, members, column));
        column += GROUP;
    }
    if GROUP > 8 && column + 8 <= width {
        sum[column..column + 8].copy_from_slice(&column_totals::<8>(data, width, members, column));
        column += 8;
    }
    if column + 4 <= width {
        sum[column..column + 4].copy_from_slice(&column_totals::<4>(data, width, members, column));
        column += 4;
    }
    for column in column..width {
        sum[column] = column_totals::<1>(data, width, members, column)[0];
    }
}

/// Columns that [`sum_rows`] sums at once without AVX: 8 totals fit in 4 SSE2 registers.
const SUM_GROUP: usize = 8;

/// Returns the sums of the `N` columns from `column` over the rows `members` of `data`.
#[inline(always)]
fn column_totals<const N: usize>(
    data: &[f64],
    width: usize,
    members: &[usize],
    column: usize,
) -> [f64; N] {
    let mut totals = [0.0; N];
    for &row in members {
        let start = row * width + column;
        let values: &[f64; N] = data[start..start + N]
            .try_into()
            .expect("a slice of N values");
        for (total, value) in totals.iter_mut().zip(values) {
            *total += value;
        }
    }
    totals
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
            // Enough rows and clusters that most rows keep their centroid by the bounds.
            (3000, 6, 8, 5),
            // Widths whose member sums take groups of 8, 4 and single columns, and the
            // segmenter's 20 features.
            (600, 13, 4, 6),
            (1500, 20, 8, 7),
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_distances_equal_baseline() {
        if !has_avx() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        // Values of every magnitude, with subnormals, signed zeros and infinities.
        let special = [0.0, -0.0, 5e-324, -2.5e-310, 1e-160, 1e154, -1e300, f64::INFINITY];
        let draw = |rng: &mut ChaCha8Rng| {
            if rng.gen_range(0..4) == 0 {
                special[rng.gen_range(0..special.len())]
            } else {
                rng.gen_range(-3.0..3.0) * 10f64.powi(rng.gen_range(-5..5))
            }
        };
        for (width, clusters) in [(1, 1), (3, 5), (7, 8), (20, 8), (20, 3)] {
            let centroids: Vec<f64> = (0..width * clusters).map(|_| draw(&mut rng)).collect();
            let interleaved = InterleavedCentroids::new(&centroids, width);
            for _ in 0..50 {
                let point: Vec<f64> = (0..width).map(|_| draw(&mut rng)).collect();
                for first_block in 0..clusters.div_ceil(LANES) {
                    let mut baseline = vec![0.0; interleaved.sums.len()];
                    let mut avx = vec![0.0; interleaved.sums.len()];
                    let values = &interleaved.values;
                    block_distances(values, width, &point, first_block, &mut baseline);
                    // SAFETY: `has_avx` returned true above.
                    unsafe { block_distances_avx(values, width, &point, first_block, &mut avx) };
                    for (lane, (a, b)) in avx.iter().zip(&baseline).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "width {width}, lane {lane}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_member_sums_equal_baseline() {
        if !has_avx() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for width in 1..=41 {
            let rows = 50;
            let data: Vec<f64> = (0..rows * width)
                .map(|_| rng.gen_range(-3.0..3.0) * 10f64.powi(rng.gen_range(-12..12)))
                .collect();
            // Members out of row order and with a row twice, so the order of the sum matters.
            let members: Vec<usize> = (0..rows).rev().step_by(3).chain([7, 7]).collect();
            let mut baseline = vec![f64::NAN; width];
            let mut avx = vec![f64::NAN; width];
            sum_rows_grouped::<SUM_GROUP>(&data, width, &members, &mut baseline);
            // SAFETY: `has_avx` returned true above.
            unsafe { sum_rows_avx(&data, width, &members, &mut avx) };
            for (column, (a, b)) in avx.iter().zip(&baseline).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "width {width}, column {column}");
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
    fn bounded_assignment_equals_nearest_centroid() {
        let width = 4;
        let rows = 600;
        let records = clumps(rows, width, 8);
        let data: Vec<f64> = records.iter().copied().collect();
        let clusters = 6;
        // Centroids from the rows, the last two equal to each other, so ties occur.
        let mut centroids: Vec<f64> = (0..clusters)
            .flat_map(|cluster| records.row(cluster * 37 % rows).to_vec())
            .collect();
        centroids.copy_within(4 * width..5 * width, 5 * width);
        let mut memberships = vec![0usize; rows];
        let mut bounds = DistanceBounds::new(&data, width, clusters);
        bounds.assign_all(&data, &centroids, &mut memberships);
        let mut member_sums = MemberSums::new(rows, width, clusters);
        member_sums.refresh(&data, &memberships, &bounds.changed);

        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for step in 0..40 {
            // Small moves, and every fifth step a large one, as early k-means iterations make.
            let scale = if step % 5 == 0 { 1.0 } else { 0.01 };
            let mut moved: Vec<f64> = centroids
                .iter()
                .map(|value| value + scale * rng.gen_range(-1.0..1.0))
                .collect();
            if step % 2 == 0 {
                moved.copy_within(4 * width..5 * width, 5 * width);
            }

            bounds.assign_moved(&data, &centroids, &moved, &mut memberships);
            for (row, point) in data.chunks_exact(width).enumerate() {
                let (nearest, _) = nearest_centroid(&moved, width, point);
                assert_eq!(memberships[row], nearest, "step {step}, row {row}");
            }
            // Sums kept for the clusters that no row joined or left equal sums from scratch.
            member_sums.refresh(&data, &memberships, &bounds.changed);
            let mut fresh = MemberSums::new(rows, width, clusters);
            fresh.refresh(&data, &memberships, &vec![true; clusters]);
            assert_eq!(member_sums.counts, fresh.counts, "step {step}");
            for (kept, summed) in member_sums.sums.iter().zip(&fresh.sums) {
                assert_eq!(kept.to_bits(), summed.to_bits(), "step {step}");
            }
            centroids = moved;
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
