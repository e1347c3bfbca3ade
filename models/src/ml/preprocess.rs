//! Preprocessing fitted on training rows: feature selection and standardization.
//!
//! [`FeatureSelector`] drops columns that carry no information on the training set, and
//! [`Standardizer`] scales the rest to zero mean and unit variance.

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::error::{check_matrix, check_row, invalid, FitWarning, MlError};

/// Per-feature scaling to zero mean and unit variance, fitted on training rows.
///
/// A feature that is constant on the training rows has no scale. It is mapped to 0 for every
/// input, so it never produces NaN or infinity.
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use veer_models::ml::Standardizer;
///
/// let rows = array![[1.0, 5.0], [3.0, 5.0]];
/// let standardizer = Standardizer::fit(rows.view()).unwrap();
/// assert_eq!(standardizer.transform_row(&[2.0, 5.0]).unwrap(), vec![0.0, 0.0]);
/// assert_eq!(standardizer.transform_row(&[3.0, 9.0]).unwrap(), vec![1.0, 0.0]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    means: Vec<f64>,
    /// Standard deviation per feature, or 0 for a constant feature.
    scales: Vec<f64>,
}

impl Standardizer {
    /// Fits the mean and the population standard deviation of each column.
    pub fn fit(records: ArrayView2<'_, f64>) -> Result<Standardizer, MlError> {
        check_matrix("standardizer", records, None)?;
        let mut means = Vec::with_capacity(records.ncols());
        let mut scales = Vec::with_capacity(records.ncols());
        for column in records.columns() {
            let (mean, std) = mean_and_std(column.iter().copied());
            means.push(mean);
            scales.push(if is_constant(mean, std) { 0.0 } else { std });
        }
        Ok(Standardizer { means, scales })
    }

    /// Returns the number of features.
    pub fn width(&self) -> usize {
        self.means.len()
    }

    /// Returns whether a fitted column was constant on the training rows.
    pub fn is_constant_column(&self, column: usize) -> bool {
        self.scales.get(column) == Some(&0.0)
    }

    /// Scales one row, rejecting a wrong width or a NaN or infinite value.
    pub fn transform_row(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        let mut scaled = row.to_vec();
        self.transform_in_place(&mut scaled)?;
        Ok(scaled)
    }

    /// Scales one row in place, as [`Standardizer::transform_row`] does.
    pub fn transform_in_place(&self, row: &mut [f64]) -> Result<(), MlError> {
        check_row("standardizer", row, self.width(), None)?;
        for (value, (mean, scale)) in row.iter_mut().zip(self.means.iter().zip(&self.scales)) {
            *value = if *scale == 0.0 {
                0.0
            } else {
                (*value - mean) / scale
            };
        }
        Ok(())
    }

    /// Scales every row of a matrix, and returns the rows in row-major (standard) layout.
    ///
    /// The layout matters for speed only. K-means reads whole rows, and
    /// [`FeatureSelector::select`] returns a column-major matrix, whose rows are strided.
    pub fn transform(&self, records: ArrayView2<'_, f64>) -> Result<Array2<f64>, MlError> {
        check_matrix("standardizer", records, None)?;
        if records.ncols() != self.width() {
            return Err(MlError::WidthMismatch {
                model: "standardizer",
                expected: self.width(),
                found: records.ncols(),
            });
        }
        let mut scaled = records.as_standard_layout().into_owned();
        for (column, mut values) in scaled.axis_iter_mut(Axis(1)).enumerate() {
            let (mean, scale) = (self.means[column], self.scales[column]);
            values.mapv_inplace(|value| {
                if scale == 0.0 {
                    0.0
                } else {
                    (value - mean) / scale
                }
            });
        }
        Ok(scaled)
    }
}

/// Returns the mean and population standard deviation, in two passes for accuracy.
fn mean_and_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let count = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / count;
    let variance = values.map(|value| (value - mean).powi(2)).sum::<f64>() / count;
    (mean, variance.sqrt())
}

/// Returns whether a spread is only rounding noise around the mean: the mean of identical
/// values may differ from them in the last bits, which would otherwise be scaled up to ±1.
fn is_constant(mean: f64, std: f64) -> bool {
    std <= 1e-12 * (1.0 + mean.abs())
}

/// Settings of [`FeatureSelector`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectorParams {
    /// A feature whose variance on the training rows (in its own units) is at most this is
    /// dropped as near-constant.
    pub min_variance: f64,
    /// Of two features whose absolute Pearson correlation exceeds this, the later is dropped.
    pub max_correlation: f64,
}

impl Default for SelectorParams {
    fn default() -> Self {
        SelectorParams {
            min_variance: 1e-10,
            max_correlation: 0.95,
        }
    }
}

impl SelectorParams {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        if !(self.min_variance.is_finite() && self.min_variance >= 0.0) {
            return Err(invalid(
                "feature selector",
                "min_variance",
                self.min_variance,
                "a finite number >= 0",
            ));
        }
        if !(self.max_correlation > 0.0 && self.max_correlation <= 1.0) {
            return Err(invalid(
                "feature selector",
                "max_correlation",
                self.max_correlation,
                "a number in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// The features kept for modelling, chosen on training rows.
///
/// First every near-constant feature is dropped. Then the survivors are read in order and a
/// feature is dropped when it is correlated above `max_correlation` with one already kept, so
/// the earlier feature of each such pair stays.
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use veer_models::ml::{FeatureSelector, SelectorParams};
///
/// // b is 2 * a, and c never changes.
/// let rows = array![[1.0, 2.0, 7.0, 0.5], [2.0, 4.0, 7.0, 0.1], [3.0, 6.0, 7.0, 0.9]];
/// let names = ["a", "b", "c", "d"].map(String::from).to_vec();
/// let (selector, warnings) =
///     FeatureSelector::fit(rows.view(), &names, &SelectorParams::default()).unwrap();
/// assert_eq!(selector.selected_names(), &["a", "d"]);
/// assert!(warnings.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSelector {
    input_width: usize,
    selected: Vec<usize>,
    selected_names: Vec<String>,
}

impl FeatureSelector {
    /// Chooses features on training rows whose columns are named by `names`.
    ///
    /// When every feature is near-constant, the first one is kept with a warning, so the
    /// models after the selector still have a column (which the standardizer maps to 0).
    pub fn fit(
        records: ArrayView2<'_, f64>,
        names: &[String],
        params: &SelectorParams,
    ) -> Result<(FeatureSelector, Vec<FitWarning>), MlError> {
        params.validate()?;
        check_matrix("feature selector", records, Some(names))?;
        if names.len() != records.ncols() {
            return Err(MlError::WidthMismatch {
                model: "feature selector (names)",
                expected: records.ncols(),
                found: names.len(),
            });
        }

        let varying: Vec<usize> = (0..records.ncols())
            .filter(|column| {
                let values = records.column(*column);
                let (mean, std) = mean_and_std(values.iter().copied());
                !is_constant(mean, std) && std * std > params.min_variance
            })
            .collect();
        let mut selected: Vec<usize> = Vec::new();
        for &candidate in &varying {
            let redundant = selected.iter().any(|&earlier| {
                let correlation = pearson(records, earlier, candidate);
                correlation.abs() > params.max_correlation
            });
            if !redundant {
                selected.push(candidate);
            }
        }

        let mut warnings = Vec::new();
        if selected.is_empty() {
            selected.push(0);
            warnings.push(FitWarning::NoVaryingFeature {
                feature: names[0].clone(),
            });
        }
        let selected_names = selected
            .iter()
            .map(|column| names[*column].clone())
            .collect();
        let selector = FeatureSelector {
            input_width: records.ncols(),
            selected,
            selected_names,
        };
        Ok((selector, warnings))
    }

    /// Returns the kept features' names, in input order.
    pub fn selected_names(&self) -> &[String] {
        &self.selected_names
    }

    /// Returns the kept features' columns in the input.
    pub fn selected_columns(&self) -> &[usize] {
        &self.selected
    }

    /// Returns the kept values of one input row.
    pub fn select_row(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        check_row("feature selector", row, self.input_width, None)?;
        Ok(self.selected.iter().map(|column| row[*column]).collect())
    }

    /// Returns the kept columns of a matrix.
    pub fn select(&self, records: ArrayView2<'_, f64>) -> Result<Array2<f64>, MlError> {
        check_matrix("feature selector", records, None)?;
        if records.ncols() != self.input_width {
            return Err(MlError::WidthMismatch {
                model: "feature selector",
                expected: self.input_width,
                found: records.ncols(),
            });
        }
        Ok(records.select(Axis(1), &self.selected))
    }
}

/// Returns the Pearson correlation of two columns that both vary.
fn pearson(records: ArrayView2<'_, f64>, left: usize, right: usize) -> f64 {
    let (x, y) = (records.column(left), records.column(right));
    let count = x.len() as f64;
    let (mean_x, mean_y) = (x.sum() / count, y.sum() / count);
    let mut covariance = 0.0;
    let mut variance_x = 0.0;
    let mut variance_y = 0.0;
    for (a, b) in x.iter().zip(y.iter()) {
        covariance += (a - mean_x) * (b - mean_y);
        variance_x += (a - mean_x).powi(2);
        variance_y += (b - mean_y).powi(2);
    }
    covariance / (variance_x * variance_y).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standardizer_returns_row_major_rows() {
        let rows = array![
            [1.0, 4.0, 0.5],
            [2.0, 5.0, 0.5],
            [3.0, 9.0, 1.5],
            [4.0, 1.0, 2.5]
        ];
        let selector = FeatureSelector::fit(
            rows.view(),
            &["a".to_string(), "b".to_string(), "c".to_string()],
            &SelectorParams::default(),
        )
        .unwrap()
        .0;
        let selected = selector.select(rows.view()).unwrap();
        let standardizer = Standardizer::fit(selected.view()).unwrap();
        let scaled = standardizer.transform(selected.view()).unwrap();
        assert!(scaled.is_standard_layout());
    }

    #[test]
    fn standardizer_constant_column_is_zero() {
        let rows = array![[0.1, 1.0], [0.1, 2.0], [0.1, 3.0]];
        let standardizer = Standardizer::fit(rows.view()).unwrap();
        assert!(standardizer.is_constant_column(0));
        let scaled = standardizer.transform(rows.view()).unwrap();
        assert!(scaled.column(0).iter().all(|value| *value == 0.0));
        let mean: f64 = scaled.column(1).sum() / 3.0;
        assert!(mean.abs() < 1e-12);
    }

    #[test]
    fn standardizer_rejects_nan_with_position() {
        let rows = array![[0.0, 1.0], [f64::NAN, 2.0]];
        let error = Standardizer::fit(rows.view()).unwrap_err().to_string();
        assert!(error.contains("row 1, column 0"), "{error}");
        assert!(error.contains("NaN"), "{error}");
    }

    #[test]
    fn selector_keeps_earlier_of_correlated_pair() {
        let rows = array![
            [1.0, -3.0, 0.2],
            [2.0, -6.0, 0.9],
            [3.0, -9.0, 0.4],
            [4.0, -12.1, 0.1]
        ];
        let names = ["x", "minus_3x", "noise"].map(String::from).to_vec();
        let (selector, _) =
            FeatureSelector::fit(rows.view(), &names, &SelectorParams::default()).unwrap();
        assert_eq!(selector.selected_names(), &["x", "noise"]);
        assert_eq!(
            selector.select_row(&[5.0, 1.0, 2.0]).unwrap(),
            vec![5.0, 2.0]
        );
    }

    #[test]
    fn selector_all_constant_keeps_first() {
        let rows = array![[1.0, 2.0], [1.0, 2.0]];
        let names = ["a", "b"].map(String::from).to_vec();
        let (selector, warnings) =
            FeatureSelector::fit(rows.view(), &names, &SelectorParams::default()).unwrap();
        assert_eq!(selector.selected_names(), &["a"]);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn selector_rejects_correlation_above_one() {
        let params = SelectorParams {
            max_correlation: 1.5,
            ..SelectorParams::default()
        };
        let error = params.validate().unwrap_err().to_string();
        assert!(error.contains("max_correlation = 1.5"), "{error}");
    }
}
