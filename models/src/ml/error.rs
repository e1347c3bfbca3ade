//! Errors and fit warnings shared by the models in [`crate::ml`], and the input checks that
//! raise them.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

/// A failure to build, fit, apply, save or load a model.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A parameter outside its valid range, named with its value.
    #[error("invalid {model} setting {name} = {value}: expected {expected}")]
    InvalidParameter {
        model: &'static str,
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    /// A NaN or infinite value in the input.
    #[error(
        "invalid input to {model}: value {value} at row {row}, column {column} ({feature}) is \
         not finite; drop or impute NaN and infinite values first"
    )]
    NonFinite {
        model: &'static str,
        row: usize,
        column: usize,
        feature: String,
        value: f64,
    },

    /// An input with no rows, or rows with no columns.
    #[error("empty input to {model}: {detail}")]
    EmptyInput {
        model: &'static str,
        detail: &'static str,
    },

    /// A row or matrix whose width differs from the one the model was fitted on.
    #[error("invalid input to {model}: expected {expected} columns, found {found}")]
    WidthMismatch {
        model: &'static str,
        expected: usize,
        found: usize,
    },

    /// A share vector that is negative or sums to zero.
    #[error("invalid {input}: {detail}")]
    InvalidShares { input: &'static str, detail: String },

    /// A saved model set written by an incompatible version of this crate.
    #[error(
        "unsupported model file version {found}: this build reads version {expected}; refit the \
         models with this build"
    )]
    VersionMismatch { found: String, expected: u32 },

    /// A model set that could not be written.
    #[error("failed to save models: {0}")]
    Save(serde_json::Error),

    /// A saved model set that could not be parsed.
    #[error("failed to load models: {0}")]
    Load(serde_json::Error),

    /// Fitted k-means centroids that could not be turned into linfa's model.
    #[error("failed to build the k-means model from its centroids: {0}")]
    KMeansBuild(serde_json::Error),

    /// A failure inside linfa's k-means.
    #[error("k-means failed: {0}")]
    KMeans(#[from] linfa_clustering::KMeansError),

    /// A failure inside linfa's support vector machine.
    #[error("one-class SVM failed: {0}")]
    Svm(#[from] linfa_svm::SvmError),
}

/// A setting that a fit changed because the data could not support it, or a fallback it took.
///
/// Fits return these beside the model so that the caller can log them. They are not errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FitWarning {
    /// Fewer distinct rows than requested clusters, so k was lowered.
    ClustersReduced {
        requested: usize,
        used: usize,
        distinct_rows: usize,
    },
    /// Fewer distinct rows than the largest automatic k, so the range of k tried was cut.
    ClusterRangeReduced {
        requested: usize,
        used: usize,
        distinct_rows: usize,
    },
    /// A sample size larger than the training set, lowered to the number of rows.
    SampleSizeReduced {
        model: String,
        requested: usize,
        used: usize,
    },
    /// A training set larger than a model's row limit, so a seeded subsample was used.
    RowsSubsampled {
        model: String,
        rows: usize,
        used: usize,
    },
    /// Every feature was near-constant, so the selector kept one to keep the models defined.
    NoVaryingFeature { feature: String },
}

impl std::fmt::Display for FitWarning {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitWarning::ClustersReduced {
                requested,
                used,
                distinct_rows,
            } => write!(
                formatter,
                "{}, k reduced from {requested} to {used}",
                distinct_profiles(*distinct_rows)
            ),
            FitWarning::ClusterRangeReduced {
                requested,
                used,
                distinct_rows,
            } => write!(
                formatter,
                "{}, largest k tried reduced from {requested} to {used}",
                distinct_profiles(*distinct_rows)
            ),
            FitWarning::SampleSizeReduced {
                model,
                requested,
                used,
            } => write!(
                formatter,
                "{model}: {used} training rows, sample size reduced from {requested} to {used}"
            ),
            FitWarning::RowsSubsampled { model, rows, used } => write!(
                formatter,
                "{model}: fitted on a seeded subsample of {used} of {rows} rows"
            ),
            FitWarning::NoVaryingFeature { feature } => write!(
                formatter,
                "no feature varies across the training rows, so {feature} was kept to keep the \
                 models defined"
            ),
        }
    }
}

fn distinct_profiles(count: usize) -> String {
    match count {
        1 => "1 distinct profile".into(),
        _ => format!("{count} distinct profiles"),
    }
}

/// Checks that a matrix has rows and columns and only finite values.
pub(crate) fn check_matrix(
    model: &'static str,
    records: ArrayView2<'_, f64>,
    names: Option<&[String]>,
) -> Result<(), MlError> {
    if records.nrows() == 0 {
        return Err(MlError::EmptyInput {
            model,
            detail: "no rows to fit on",
        });
    }
    if records.ncols() == 0 {
        return Err(MlError::EmptyInput {
            model,
            detail: "rows have no columns",
        });
    }
    for (row, values) in records.rows().into_iter().enumerate() {
        for (column, value) in values.iter().enumerate() {
            if !value.is_finite() {
                return Err(non_finite(model, row, column, *value, names));
            }
        }
    }
    Ok(())
}

/// Checks that one row has the fitted width and only finite values.
pub(crate) fn check_row(
    model: &'static str,
    row: &[f64],
    width: usize,
    names: Option<&[String]>,
) -> Result<(), MlError> {
    if row.len() != width {
        return Err(MlError::WidthMismatch {
            model,
            expected: width,
            found: row.len(),
        });
    }
    match row.iter().position(|value| !value.is_finite()) {
        Some(column) => Err(non_finite(model, 0, column, row[column], names)),
        None => Ok(()),
    }
}

fn non_finite(
    model: &'static str,
    row: usize,
    column: usize,
    value: f64,
    names: Option<&[String]>,
) -> MlError {
    let feature = names
        .and_then(|names| names.get(column))
        .cloned()
        .unwrap_or_else(|| format!("feature {column}"));
    MlError::NonFinite {
        model,
        row,
        column,
        feature,
        value,
    }
}

/// Builds the error for a parameter outside its range.
pub(crate) fn invalid(
    model: &'static str,
    name: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> MlError {
    MlError::InvalidParameter {
        model,
        name,
        value: value.to_string(),
        expected,
    }
}

/// Rejects a value outside the open interval (0, 1).
pub(crate) fn check_unit_open(
    model: &'static str,
    name: &'static str,
    value: f64,
) -> Result<(), MlError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(invalid(
            model,
            name,
            value,
            "a number strictly between 0 and 1",
        ))
    }
}

/// Rejects a value outside (0, 1].
pub(crate) fn check_fraction(
    model: &'static str,
    name: &'static str,
    value: f64,
) -> Result<(), MlError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(invalid(model, name, value, "a number in (0, 1]"))
    }
}

/// Rejects zero.
pub(crate) fn check_positive_count(
    model: &'static str,
    name: &'static str,
    value: usize,
) -> Result<(), MlError> {
    if value > 0 {
        Ok(())
    } else {
        Err(invalid(model, name, value, "at least 1"))
    }
}
