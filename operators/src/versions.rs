//! The model versions in force on one worker, and which of them scores a window.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use veer_models::ml::{MlError, ModelSet};

use crate::fit::{FittedVersion, ModelUpdate};

/// Treatment of a window, returned by [`ModelVersions::lookup`].
pub enum Lookup<'a> {
    /// The window passes its alerts on unchanged: it is in the bootstrap period, or its version
    /// has no models.
    Pass,
    /// The window's version has not arrived yet.
    Wait,
    /// The window is scored by these models.
    Score(&'a Arc<ModelSet>),
}

/// One version with the window starts it scores.
struct Version {
    number: u64,
    from_ms: u64,
    until_ms: Option<u64>,
    models: Option<Arc<ModelSet>>,
}

/// The model versions that [`crate::fit_models`] sent, in version order.
///
/// Each window is scored by exactly one version, chosen by its start, so a swap to a new
/// version is atomic per window and the same on every worker.
#[derive(Default)]
pub struct ModelVersions {
    /// Windows that start earlier are not scored.
    unscored_before: u64,
    versions: Vec<Version>,
    /// Whether no more updates can come, so waiting windows take the latest version.
    closed: bool,
}

impl ModelVersions {
    /// Applies one update. A version whose fit failed keeps the previous version's models.
    /// Returns the version number when `update` brought a new version.
    pub fn apply(&mut self, update: ModelUpdate) -> Option<u64> {
        match update {
            ModelUpdate::Unscored { before_ms } => {
                self.unscored_before = self.unscored_before.max(before_ms);
                None
            }
            ModelUpdate::ScoresUntil { until_ms } => {
                if let Some(latest) = self.versions.last_mut() {
                    latest.until_ms = latest.until_ms.map(|until| until.max(until_ms));
                }
                None
            }
            ModelUpdate::Fitted(fitted) => {
                let FittedVersion {
                    version,
                    applies_from_ms,
                    applies_until_ms,
                    models,
                    ..
                } = *fitted;
                let models = match models {
                    Ok(models) => Some(Arc::new(models)),
                    Err(_) => self.versions.last().and_then(|last| last.models.clone()),
                };
                self.versions.push(Version {
                    number: version,
                    from_ms: applies_from_ms,
                    until_ms: applies_until_ms,
                    models,
                });
                Some(version)
            }
        }
    }

    /// Records that no more updates will come.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Returns whether [`ModelVersions::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Returns how to handle a window that starts at `start_ms`.
    pub fn lookup(&self, start_ms: u64) -> Lookup<'_> {
        if start_ms < self.unscored_before {
            return Lookup::Pass;
        }
        let position = self
            .versions
            .partition_point(|version| version.from_ms <= start_ms);
        let Some(version) = position.checked_sub(1).map(|index| &self.versions[index]) else {
            return match (self.closed, self.versions.is_empty()) {
                (false, true) => Lookup::Wait,
                _ => Lookup::Pass,
            };
        };
        let later_needed = version.until_ms.is_some_and(|until| start_ms >= until);
        if later_needed && !self.closed {
            return Lookup::Wait;
        }
        match &version.models {
            Some(models) => Lookup::Score(models),
            None => Lookup::Pass,
        }
    }

    /// Forgets the versions that only score windows starting before `start_ms`, keeping the
    /// latest one. Returns whether any version was forgotten.
    pub fn forget_before(&mut self, start_ms: u64) -> bool {
        let done = self
            .versions
            .iter()
            .take(self.versions.len().saturating_sub(1))
            .take_while(|version| version.until_ms.is_some_and(|until| until <= start_ms))
            .count();
        self.versions.drain(..done);
        done > 0
    }

    /// Returns the number of the latest version.
    pub fn latest(&self) -> Option<u64> {
        self.versions.last().map(|version| version.number)
    }
}

/// [`ModelVersions`] as a checkpoint stores them, with each version's models as the JSON
/// document of [`ModelSet::save`], the form a model file contains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedVersions {
    unscored_before: u64,
    versions: Vec<SavedVersion>,
}

/// One version of [`SavedVersions`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedVersion {
    number: u64,
    from_ms: u64,
    until_ms: Option<u64>,
    models: Option<Vec<u8>>,
}

impl ModelVersions {
    /// Returns the versions in their stored form. The versions of a checkpoint are never
    /// closed, because a checkpoint is taken before the end of the input.
    pub fn to_saved(&self) -> Result<SavedVersions, MlError> {
        let mut versions = Vec::with_capacity(self.versions.len());
        for version in &self.versions {
            let models = match &version.models {
                Some(models) => {
                    let mut document = Vec::new();
                    models.save(&mut document)?;
                    Some(document)
                }
                None => None,
            };
            versions.push(SavedVersion {
                number: version.number,
                from_ms: version.from_ms,
                until_ms: version.until_ms,
                models,
            });
        }
        Ok(SavedVersions {
            unscored_before: self.unscored_before,
            versions,
        })
    }

    /// Reads versions stored by [`ModelVersions::to_saved`].
    pub fn from_saved(saved: SavedVersions) -> Result<ModelVersions, MlError> {
        let mut versions = Vec::with_capacity(saved.versions.len());
        for version in saved.versions {
            let models = match version.models {
                Some(document) => Some(Arc::new(ModelSet::load(&document[..])?)),
                None => None,
            };
            versions.push(Version {
                number: version.number,
                from_ms: version.from_ms,
                until_ms: version.until_ms,
                models,
            });
        }
        Ok(ModelVersions {
            unscored_before: saved.unscored_before,
            versions,
            closed: false,
        })
    }
}
