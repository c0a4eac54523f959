//! The DAS semantic-ID model: quantizers, collaborative model, alignment, training and inference.
//!
//! Layout, bottom-up:
//! - [`data`]: the in-memory input ([`TrainingData`]), its validation, user inputs, the dataset
//!   loader and (with the `testing` feature, so in tests and benches) a synthetic generator
//!   with planted structure.
//! - [`config`]: [`DasConfig`], every size and weight of the model with documented defaults.
//! - [`nn`]: the tiny parameter store and MLPs (seeded init, so runs are reproducible).
//! - [`ops`]: two fused candle ops with hand-written backward passes (the trainer's hot spots).
//! - [`kmeans`]: k-means++ / Lloyd with candle matmul + argmin, and residual k-means (RQ-KMeans).
//! - [`rqvae`]: one residual-quantized VAE (UISM side) with straight-through, code losses and
//!   dead-code re-seeding.
//! - [`sparse`]: ID tables with a row-wise (lazy) Adam: only the rows of a batch move.
//! - [`icdm`]: the ID-based CF model with popularity debiasing.
//! - [`mdam`]: InfoNCE with masked accidental positives, co-occurrence partner sampling, and the
//!   route alignment (a user picks its item's level-1 code).
//! - [`das`]: the one-stage trainer, its baselines, checkpoints and batched inference.
//! - [`recommend`]: `Recommend`'s retrieval (route beam, candidates, ranking), shared by the
//!   server and the evaluation.
//! - [`sid`]: dedup suffixes and the SID quality report.
//! - [`align`]: code matching across versions (relabel a retrained model's codes so code numbers
//!   keep their meaning).
//!
//! **API boundary:** this module knows nothing about storage, gRPC or tokio. It takes plain
//! vectors and interaction tuples and returns codes and vectors.

pub mod align;
pub mod config;
pub mod das;
pub mod data;
pub mod icdm;
pub mod kmeans;
pub mod mdam;
pub mod neighbours;
pub mod nn;
pub mod ops;
pub mod recommend;
pub mod rqvae;
pub mod sid;
pub mod sparse;
#[cfg(any(test, feature = "testing"))]
pub mod synth;
pub mod trainer;

pub use align::{align_codes, CodeAlignment, LevelAlignment};
pub use config::DasConfig;
pub use das::{mean_length, Encoded, Method, TrainedModel};
pub use data::{profile_input, Interaction, TrainingData};
pub use trainer::{train, train_with, Progress, TrainControl, TrainStats};

/// Errors of the model layer, by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input data is malformed (wrong sizes, out-of-range ids, non-finite values, empty).
    #[error("invalid training data: {0}")]
    InvalidData(String),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Vectors given to inference do not match the model's input dimension.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimMismatch {
        /// Dimension the model was trained with.
        expected: usize,
        /// Dimension of the vectors given.
        got: usize,
    },
    /// A dataset or checkpoint file could not be read or written.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A dataset or checkpoint file is malformed.
    #[error("malformed file {path}: {reason}")]
    Format {
        /// The file concerned.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Training diverged (a loss became NaN or infinite).
    #[error("training diverged at step {step}: {what} is not finite")]
    Diverged {
        /// The step at which the problem was detected.
        step: usize,
        /// Which quantity.
        what: String,
    },
    /// Training was cancelled through [`TrainControl::cancel`].
    #[error("training cancelled")]
    Cancelled,
    /// Two models cannot be matched (different quantizer kinds or shapes).
    #[error("incompatible models: {0}")]
    Incompatible(String),
    /// The trainer's own machinery failed (a thread could not be started or stopped early).
    #[error("trainer: {0}")]
    Internal(String),
    /// An error from the tensor library (a bug in this module, not in the input).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The one mapping of model errors to the crate's error classes, variant by variant. The
/// server's models are fed from the store (validated when written), so bad data or settings
/// mean the collection cannot be modelled as it is (FAILED_PRECONDITION), not a bad request;
/// a malformed checkpoint is DATA_LOSS; a cancelled training ends because the server or the
/// collection is going away (UNAVAILABLE); the rest are bugs or unexpected I/O failures.
impl From<ModelError> for crate::error::Error {
    fn from(e: ModelError) -> Self {
        use crate::error::Error;
        match e {
            ModelError::InvalidData(m) => Error::FailedPrecondition(format!("model data: {m}")),
            ModelError::InvalidConfig(m) => {
                Error::FailedPrecondition(format!("model settings: {m}"))
            }
            ModelError::Incompatible(m) => {
                Error::FailedPrecondition(format!("incompatible models: {m}"))
            }
            ModelError::Cancelled => Error::Unavailable("training cancelled".into()),
            ModelError::Format { path, reason } => {
                Error::DataLoss(format!("malformed model file {path}: {reason}"))
            }
            ModelError::Io { path, source } => Error::io(format!("model file {path}"), source),
            e @ (ModelError::DimMismatch { .. }
            | ModelError::Diverged { .. }
            | ModelError::Internal(_)
            | ModelError::Tensor(_)) => Error::Internal(format!("model: {e}")),
        }
    }
}

/// Result type of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;

#[cfg(test)]
mod error_class_tests {
    use super::ModelError;
    use crate::error::Error;

    #[test]
    fn every_model_error_has_its_class() {
        let io = |kind| ModelError::Io {
            path: "m.safetensors".into(),
            source: std::io::Error::new(kind, "x"),
        };
        let cases = [
            (ModelError::InvalidData("d".into()), "FailedPrecondition"),
            (ModelError::InvalidConfig("c".into()), "FailedPrecondition"),
            (ModelError::Incompatible("i".into()), "FailedPrecondition"),
            (ModelError::Cancelled, "Unavailable"),
            (
                ModelError::Format {
                    path: "model.json".into(),
                    reason: "r".into(),
                },
                "DataLoss",
            ),
            (io(std::io::ErrorKind::StorageFull), "ResourceExhausted"),
            (io(std::io::ErrorKind::PermissionDenied), "Internal"),
            (
                ModelError::DimMismatch {
                    expected: 3,
                    got: 2,
                },
                "Internal",
            ),
            (
                ModelError::Diverged {
                    step: 1,
                    what: "loss".into(),
                },
                "Internal",
            ),
            (ModelError::Internal("t".into()), "Internal"),
        ];
        for (e, class) in cases {
            let shown = e.to_string();
            let mapped = Error::from(e);
            let got = format!("{mapped:?}");
            assert!(got.starts_with(class), "{shown} -> {got}, expected {class}");
        }
        let Error::DataLoss(m) = Error::from(ModelError::Format {
            path: "model.json".into(),
            reason: "bad".into(),
        }) else {
            unreachable!("checked above")
        };
        assert!(m.contains("model.json") && m.contains("bad"), "{m}");
    }
}
