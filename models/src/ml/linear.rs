//! A multi-output linear regression trained by full-batch gradient descent.
//!
//! The model minimises `(1 / 2n) * |Y - X W - b|^2 + (l2 / 2) * |W|^2` over standardized
//! inputs. Written here because linfa-linear 0.8 solves least squares in closed form or fits
//! one-output GLMs, while the interest model is specified as a linear model trained by gradient
//! descent over several outputs.
//!
//! The loss depends on the data only through `G = A^T A / n` and `C = A^T Y / n`, where `A` is
//! `X` with a column of ones, so both are computed once and each step costs `O(p^2)` per
//! output, whatever the number of rows. The step size is `1 / L`, with `L` the largest
//! eigenvalue of `G` plus `l2`, estimated by power iteration. A step that would raise the loss
//! (after an estimate that came out too low) is retried with half the step size. Training
//! starts from zero, so it needs no seed and is deterministic.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::error::{check_matrix, check_positive_count, check_row, invalid, MlError};
use super::preprocess::Standardizer;

/// Settings of [`LinearRegressor`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearParams {
    /// Maximum gradient steps.
    pub epochs: usize,
    /// Ridge penalty on the weights (not the intercepts), in units of the standardized inputs.
    pub l2: f64,
    /// Training stops once every gradient component is below this.
    pub tolerance: f64,
}

impl Default for LinearParams {
    fn default() -> Self {
        LinearParams {
            epochs: 5000,
            l2: 1e-4,
            tolerance: 1e-9,
        }
    }
}

impl LinearParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        check_positive_count("linear regression", "epochs", self.epochs)?;
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(invalid(
                "linear regression",
                "l2",
                self.l2,
                "a finite number >= 0",
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(invalid(
                "linear regression",
                "tolerance",
                self.tolerance,
                "a finite number > 0",
            ));
        }
        Ok(())
    }
}

/// A fitted linear map from a feature row to a vector of outputs.
///
/// # Examples
///
/// ```
/// use ndarray::{Array2, Axis};
/// use veer_models::ml::{LinearParams, LinearRegressor};
///
/// let records = Array2::from_shape_fn((20, 2), |(row, column)| (row * (column + 1) % 7) as f64);
/// let targets = records.map_axis(Axis(1), |row| 2.0 * row[0] - row[1] + 1.0).insert_axis(Axis(1));
/// let model = LinearRegressor::fit(records.view(), targets.view(), &LinearParams::default()).unwrap();
/// let predicted = model.predict_row(&[3.0, 1.0]).unwrap()[0];
/// assert!((predicted - 6.0).abs() < 0.01, "{predicted}");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearRegressor {
    standardizer: Standardizer,
    /// Weights over standardized inputs, features × outputs.
    weights: Array2<f64>,
    intercepts: Array1<f64>,
    /// Gradient steps taken.
    epochs_run: usize,
}

impl LinearRegressor {
    /// Fits the weights on `records` (rows × features) and `targets` (rows × outputs).
    pub fn fit(
        records: ArrayView2<'_, f64>,
        targets: ArrayView2<'_, f64>,
        params: &LinearParams,
    ) -> Result<LinearRegressor, MlError> {
        params.validate()?;
        check_matrix("linear regression (targets)", targets, None)?;
        if targets.nrows() != records.nrows() {
            return Err(MlError::WidthMismatch {
                model: "linear regression (target rows)",
                expected: records.nrows(),
                found: targets.nrows(),
            });
        }
        let standardizer = Standardizer::fit(records)?;
        let scaled = standardizer.transform(records)?;

        let rows = scaled.nrows() as f64;
        let features = scaled.ncols();
        let mut augmented = Array2::ones((scaled.nrows(), features + 1));
        augmented
            .slice_mut(ndarray::s![.., ..features])
            .assign(&scaled);
        let gram = augmented.t().dot(&augmented) / rows;
        let cross = augmented.t().dot(&targets) / rows;
        let mut penalty = Array2::<f64>::eye(features + 1) * params.l2;
        penalty[[features, features]] = 0.0;
        let hessian = &gram + &penalty;
        let step = 1.0 / largest_eigenvalue(&hessian).max(f64::MIN_POSITIVE);

        // theta stacks the weights over the intercepts: (features + 1) × outputs.
        let mut theta = Array2::<f64>::zeros((features + 1, targets.ncols()));
        let mut step = step;
        let mut loss = quadratic_loss(&hessian, &cross, &theta);
        let mut epochs_run = 0;
        while epochs_run < params.epochs {
            let gradient = hessian.dot(&theta) - &cross;
            epochs_run += 1;
            let largest = gradient
                .iter()
                .fold(0.0_f64, |max, value| max.max(value.abs()));
            if largest < params.tolerance {
                break;
            }
            let mut candidate = theta.clone();
            candidate.scaled_add(-step, &gradient);
            let candidate_loss = quadratic_loss(&hessian, &cross, &candidate);
            if candidate_loss > loss && step > f64::MIN_POSITIVE {
                // The eigenvalue estimate was too low for this matrix: retry with half the step.
                step /= 2.0;
                continue;
            }
            theta = candidate;
            loss = candidate_loss;
        }

        let weights = theta.slice(ndarray::s![..features, ..]).to_owned();
        let intercepts = theta.index_axis(Axis(0), features).to_owned();
        Ok(LinearRegressor {
            standardizer,
            weights,
            intercepts,
            epochs_run,
        })
    }

    /// Returns the number of input features.
    pub fn width(&self) -> usize {
        self.standardizer.width()
    }

    /// Returns the gradient steps that training took.
    pub fn epochs_run(&self) -> usize {
        self.epochs_run
    }

    /// Predicts the outputs of one row.
    pub fn predict_row(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        check_row("linear regression", row, self.width(), None)?;
        let scaled = Array1::from(self.standardizer.transform_row(row)?);
        Ok((scaled.dot(&self.weights) + &self.intercepts).to_vec())
    }

    /// Predicts the outputs of every row.
    pub fn predict(&self, records: ArrayView2<'_, f64>) -> Result<Array2<f64>, MlError> {
        let scaled = self.standardizer.transform(records)?;
        Ok(scaled.dot(&self.weights) + &self.intercepts)
    }
}

/// Returns the loss up to a constant: `sum over outputs of theta' H theta / 2 - theta' C`.
fn quadratic_loss(hessian: &Array2<f64>, cross: &Array2<f64>, theta: &Array2<f64>) -> f64 {
    let curvature = (theta * &hessian.dot(theta)).sum() / 2.0;
    curvature - (theta * cross).sum()
}

/// Estimates the largest eigenvalue of a symmetric positive semi-definite matrix by power
/// iteration from the all-ones vector, raised by 1% because the iteration approaches it from
/// below. The estimate is too low when the top eigenvector is orthogonal to the start.
fn largest_eigenvalue(matrix: &Array2<f64>) -> f64 {
    let mut vector = Array1::<f64>::ones(matrix.nrows());
    let mut eigenvalue = 0.0;
    for _ in 0..200 {
        let next = matrix.dot(&vector);
        let norm = next.dot(&next).sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let estimate = vector.dot(&next) / vector.dot(&vector);
        vector = next / norm;
        if (estimate - eigenvalue).abs() <= 1e-9 * estimate.abs() {
            eigenvalue = estimate;
            break;
        }
        eigenvalue = estimate;
    }
    eigenvalue * 1.01
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn eigenvalue_of_diagonal_matrix() {
        let matrix = array![[3.0, 0.0], [0.0, 1.0]];
        let eigenvalue = largest_eigenvalue(&matrix);
        assert!((eigenvalue - 3.03).abs() < 1e-6, "{eigenvalue}");
    }

    #[test]
    fn constant_feature_fits_intercept() {
        let records = array![[1.0], [1.0], [1.0]];
        let targets = array![[2.0], [4.0], [6.0]];
        let model =
            LinearRegressor::fit(records.view(), targets.view(), &LinearParams::default()).unwrap();
        let predicted = model.predict_row(&[1.0]).unwrap()[0];
        assert!((predicted - 4.0).abs() < 1e-6, "{predicted}");
    }
}
