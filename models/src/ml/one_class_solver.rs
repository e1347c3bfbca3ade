//! The one-class SVM fit of linfa-svm 0.8.1 (SMO solver, Gaussian kernel, no shrinking), with
//! the same coefficients and offset bit for bit, in less time.
//!
//! linfa builds the whole n × n kernel matrix before it solves, and copies a strided column of
//! it for every kernel row that the solver reads. The solver reads only the rows of the
//! starting coefficients that are not 0 and the two rows of each step, so this module
//! computes a row the first time it is read and caches it. Each kernel value is computed as
//! linfa's `KernelMethod::Gaussian` computes it. The kernel is symmetric bit for bit, because
//! `x - y` and `y - x` differ only in sign, so row `i` equals linfa's column `i`.
//!
//! The solver follows linfa's `fit_one_class` and `SolverState` for one class: every target
//! is positive, the linear term is 0 and every coefficient is bounded by 1. Without shrinking,
//! every variable stays active, so linfa's gradient of the bounded variables and its
//! shrinking steps change no result and are left out.

use super::kmeans::InterleavedCentroids;

/// The Gaussian kernel of the rows of a row-major buffer, `exp(-|x - y|^2 / eps)`, with each
/// row computed when first read.
pub(super) struct GaussianKernel<'a> {
    data: &'a [f64],
    width: usize,
    eps: f64,
    rows: Vec<Option<Box<[f64]>>>,
    /// The rows of `data` four side by side, so that a row's squared distances to the others
    /// are summed four at a time. `None` without rows.
    interleaved: Option<InterleavedCentroids>,
}

impl<'a> GaussianKernel<'a> {
    /// Creates the kernel of the rows of `data`, `width` values each, as linfa's
    /// `KernelMethod::Gaussian(eps)`.
    pub(super) fn new(data: &'a [f64], width: usize, eps: f64) -> GaussianKernel<'a> {
        let size = data.len().checked_div(width).unwrap_or(0);
        GaussianKernel {
            data,
            width,
            eps,
            rows: vec![None; size],
            interleaved: (size > 0).then(|| InterleavedCentroids::new(data, width)),
        }
    }

    /// Returns the number of rows.
    pub(super) fn size(&self) -> usize {
        self.rows.len()
    }

    fn record(&self, index: usize) -> &[f64] {
        &self.data[index * self.width..(index + 1) * self.width]
    }

    /// Returns the kernel value of two rows, summed and scaled as linfa's
    /// `KernelMethod::distance` does.
    pub(super) fn value(a: &[f64], b: &[f64], eps: f64) -> f64 {
        let distance = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x - *y) * (*x - *y))
            .sum::<f64>();
        (-distance / eps).exp()
    }

    /// Computes row `index` unless it is cached. Entries of rows already cached are copied from
    /// them, since the kernel is symmetric.
    ///
    /// Each squared distance is summed over the features in index order from 0, and
    /// `(y - x)^2` equals `(x - y)^2`, so every value is that of [`GaussianKernel::value`].
    fn compute(&mut self, index: usize) {
        if self.rows[index].is_some() {
            return;
        }
        let record = &self.data[index * self.width..(index + 1) * self.width];
        let interleaved = self
            .interleaved
            .as_mut()
            .expect("a kernel with a row to compute has interleaved rows");
        let squared = interleaved.distances_from(record, 0);
        let row: Box<[f64]> = squared
            .iter()
            .zip(&self.rows)
            .map(|(distance, cached)| match cached {
                Some(cached) => cached[index],
                None => (-distance / self.eps).exp(),
            })
            .collect();
        self.rows[index] = Some(row);
    }

    /// Returns row `index`, computing it if needed.
    pub(super) fn row(&mut self, index: usize) -> &[f64] {
        self.compute(index);
        self.rows[index].as_deref().expect("computed above")
    }

    /// Returns row `index` if it was computed.
    pub(super) fn cached_row(&self, index: usize) -> Option<&[f64]> {
        self.rows[index].as_deref()
    }

    /// Returns rows `first` and `second`, computing them if needed.
    fn two_rows(&mut self, first: usize, second: usize) -> (&[f64], &[f64]) {
        self.compute(first);
        self.compute(second);
        let cached = |index: usize| self.rows[index].as_deref().expect("computed above");
        (cached(first), cached(second))
    }

    /// Returns the kernel value of each row with itself.
    fn diagonal(&self) -> Vec<f64> {
        (0..self.size())
            .map(|index| GaussianKernel::value(self.record(index), self.record(index), self.eps))
            .collect()
    }
}

/// Coefficients and offset of a fitted one-class SVM, as linfa's `Svm::alpha` and `Svm::rho`.
#[derive(Debug)]
pub(super) struct OneClassSolution {
    /// Dual coefficient of each training row, in row order.
    pub alpha: Vec<f64>,
    pub rho: f64,
}

/// Returns whether a coefficient is at its upper bound of 1, as linfa's
/// `Alpha::reached_upper` does.
fn at_upper(alpha: f64) -> bool {
    alpha >= 1.0
}

/// Returns whether a coefficient is 0, as linfa's `Alpha::reached_lower` does.
fn at_lower(alpha: f64) -> bool {
    alpha == 0.0
}

/// Solves the one-class problem with `nu` and stopping tolerance `eps` as linfa-svm 0.8.1's
/// `fit_one_class` does with shrinking off, its default. The rows of `kernel` that the solver
/// read stay cached, among them the row of every coefficient that is not 0.
pub(super) fn solve_one_class(
    kernel: &mut GaussianKernel<'_>,
    nu: f64,
    eps: f64,
) -> OneClassSolution {
    let size = kernel.size();
    // linfa: `(nu * F::cast(size)).to_usize().unwrap()`, which truncates.
    let full = (nu * size as f64) as usize;
    let mut alpha: Vec<f64> = (0..size)
        .map(|index| match index.cmp(&full) {
            std::cmp::Ordering::Less => 1.0,
            std::cmp::Ordering::Greater => 0.0,
            std::cmp::Ordering::Equal => nu * size as f64 - index as f64,
        })
        .collect();
    let diagonal = kernel.diagonal();

    // The gradient is `Q alpha`, because the linear term is 0.
    let mut gradient = vec![0.0; size];
    for (index, &value) in alpha.iter().enumerate() {
        if !at_lower(value) {
            let row = kernel.row(index);
            for (total, entry) in gradient.iter_mut().zip(row) {
                *total += value * entry;
            }
        }
    }

    let max_iterations = if size > usize::MAX / 100 {
        usize::MAX
    } else {
        (100 * size).max(10_000_000)
    };
    let mut iterations = 0;
    while iterations < max_iterations {
        let Some((first, second)) = select_working_set(kernel, &alpha, &gradient, &diagonal, eps)
        else {
            break;
        };
        iterations += 1;
        update_pair(kernel, &mut alpha, &mut gradient, &diagonal, first, second);
    }

    OneClassSolution {
        rho: offset(&alpha, &gradient),
        alpha,
    }
}

/// Returns the pair of coefficients that violates the optimality conditions most, or `None`
/// when the solution is optimal within `eps`, as linfa's `SolverState::select_working_set`.
fn select_working_set(
    kernel: &mut GaussianKernel<'_>,
    alpha: &[f64],
    gradient: &[f64],
    diagonal: &[f64],
    eps: f64,
) -> Option<(usize, usize)> {
    // Ties go to the later index, as in linfa.
    let mut up = (f64::NEG_INFINITY, None);
    let mut low = f64::NEG_INFINITY;
    for (index, (&value, &slope)) in alpha.iter().zip(gradient).enumerate() {
        if !at_upper(value) && -slope >= up.0 {
            up = (-slope, Some(index));
        }
        if !at_lower(value) && slope >= low {
            low = slope;
        }
    }

    let mut best = (f64::INFINITY, None);
    if let (up_gradient, Some(first)) = up {
        let row = kernel.row(first);
        for (second, (&value, &slope)) in alpha.iter().zip(gradient).enumerate() {
            if at_lower(value) {
                continue;
            }
            let gradient_difference = up_gradient + slope;
            if gradient_difference > 0.0 {
                let quadratic = diagonal[first] + diagonal[second] - 2.0 * row[second];
                let squared = gradient_difference * gradient_difference;
                let objective_change = if quadratic > 0.0 {
                    -squared / quadratic
                } else {
                    -squared / 1e-10
                };
                if objective_change <= best.0 {
                    best = (objective_change, Some(second));
                }
            }
        }
    }

    if up.0 + low < eps {
        return None;
    }
    Some((up.1?, best.1?))
}

/// Moves the coefficients `first` and `second` to the optimum of their two-variable problem
/// and updates the gradient, as linfa's `SolverState::update` for two positive targets.
fn update_pair(
    kernel: &mut GaussianKernel<'_>,
    alpha: &mut [f64],
    gradient: &mut [f64],
    diagonal: &[f64],
    first: usize,
    second: usize,
) {
    let (first_row, second_row) = kernel.two_rows(first, second);
    let (old_first, old_second) = (alpha[first], alpha[second]);

    let mut quadratic = diagonal[first] + diagonal[second] - 2.0 * first_row[second];
    if quadratic <= 0.0 {
        quadratic = 1e-10;
    }
    let delta = (gradient[first] - gradient[second]) / quadratic;
    let sum = alpha[first] + alpha[second];
    let mut first_value = alpha[first] - delta;
    let mut second_value = alpha[second] + delta;
    clip_to_bounds(sum, &mut first_value, &mut second_value);
    clip_to_bounds(sum, &mut second_value, &mut first_value);
    alpha[first] = first_value;
    alpha[second] = second_value;

    let first_change = alpha[first] - old_first;
    let second_change = alpha[second] - old_second;
    for ((total, a), b) in gradient.iter_mut().zip(first_row).zip(second_row) {
        *total += a * first_change + b * second_change;
    }
}

/// Moves a pair whose sum is `sum` back inside the bounds 0 and 1, as one of the two checks of
/// linfa's update: `value` is clipped at 1 when the sum exceeds 1, or else `other` at 0.
fn clip_to_bounds(sum: f64, value: &mut f64, other: &mut f64) {
    if sum > 1.0 {
        if *value > 1.0 {
            *value = 1.0;
            *other = sum - 1.0;
        }
    } else if *other < 0.0 {
        *other = 0.0;
        *value = sum;
    }
}

/// Returns the offset `rho`, as linfa's `SolverState::calculate_rho` for positive targets: the
/// mean gradient of the free coefficients, or the middle of the bounds when none is free.
fn offset(alpha: &[f64], gradient: &[f64]) -> f64 {
    let mut free = 0usize;
    let mut free_sum = 0.0;
    let mut upper = f64::INFINITY;
    let mut lower = f64::NEG_INFINITY;
    for (&value, &slope) in alpha.iter().zip(gradient) {
        if at_upper(value) {
            lower = f64::max(lower, slope);
        } else if at_lower(value) {
            upper = f64::min(upper, slope);
        } else {
            free += 1;
            free_sum += slope;
        }
    }
    if free > 0 {
        free_sum / free as f64
    } else {
        (upper + lower) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::dataset::Pr;
    use linfa::prelude::*;
    use linfa_svm::Svm;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Rows around two centres, with a few far rows and exact duplicates.
    fn scattered(rows: usize, width: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, width), |(row, column)| {
            let centre = if row % 2 == 0 { 0.0 } else { 1.5 } + column as f64 * 0.1;
            let noise: f64 = rng.gen_range(-1.0..1.0);
            match row % 23 {
                0 => centre * 6.0 - 4.0,
                7 => centre,
                _ => centre + noise,
            }
        })
    }

    #[test]
    fn solution_equals_linfa_bit_for_bit() {
        for (rows, width, nu, eps, seed) in [
            (300, 4, 0.05, 1e-3, 1),
            (500, 7, 0.1, 1e-3, 2),
            (120, 2, 0.5, 1e-4, 3),
            (64, 20, 0.05, 1e-3, 4),
            (7, 3, 1.0, 1e-3, 5),
        ] {
            let records = scattered(rows, width, seed);
            let kernel_eps = width as f64;
            let expected = Svm::<f64, Pr>::params()
                .nu_weight(nu)
                .gaussian_kernel(kernel_eps)
                .eps(eps)
                .fit(&DatasetBase::from(records.clone()))
                .unwrap();
            let data: Vec<f64> = records.iter().copied().collect();
            let mut kernel = GaussianKernel::new(&data, width, kernel_eps);
            let solution = solve_one_class(&mut kernel, nu, eps);
            let case = format!("{rows} rows of {width}, nu = {nu}");
            assert_eq!(solution.rho.to_bits(), expected.rho.to_bits(), "{case}");
            assert_eq!(solution.alpha.len(), expected.alpha.len(), "{case}");
            for (index, (found, wanted)) in solution.alpha.iter().zip(&expected.alpha).enumerate() {
                assert_eq!(found.to_bits(), wanted.to_bits(), "{case}, row {index}");
            }
        }
    }

    #[test]
    fn kernel_rows_are_symmetric() {
        let records = scattered(40, 5, 9);
        let data: Vec<f64> = records.iter().copied().collect();
        let mut kernel = GaussianKernel::new(&data, 5, 5.0);
        let third = kernel.row(3).to_vec();
        // Row 11 copies its entry 3 from the cached row 3, so compare it with a direct computation.
        let eleventh = kernel.row(11).to_vec();
        assert_eq!(eleventh[3].to_bits(), third[11].to_bits());
        let direct = GaussianKernel::value(&data[55..60], &data[15..20], 5.0);
        assert_eq!(eleventh[3].to_bits(), direct.to_bits());
        assert_eq!(third[3], 1.0);
    }
}
