//! The state of `audit.checkpoint_file` as the checkpoint writer last found it, shared with
//! readiness: a checkpoint that reaches the store but not the file leaves the store's
//! checkpoints without their outside copy, which an operator must hear about.

use std::path::Path;
use std::sync::Mutex;

/// Whether the last append to the checkpoint file succeeded; cheap to read.
#[derive(Debug, Default)]
pub struct CheckpointFileHealth {
    configured: bool,
    /// The last append's error, `None` after a successful one (or before any: the file was
    /// found appendable at start).
    error: Mutex<Option<String>>,
}

impl CheckpointFileHealth {
    /// The state for a server with (`configured`) or without a checkpoint file.
    pub fn new(configured: bool) -> Self {
        Self {
            configured,
            error: Mutex::new(None),
        }
    }

    /// `None` without a checkpoint file; otherwise the outcome of the last append.
    pub fn state(&self) -> Option<Result<(), String>> {
        if !self.configured {
            return None;
        }
        Some(match &*self.lock() {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        })
    }

    /// Records the outcome of an append to `path`; logs when appends work again after failing
    /// (the failure itself is logged by the caller, with the checkpoint it concerns).
    pub(super) fn record(&self, path: &Path, result: &std::io::Result<()>) {
        let mut error = self.lock();
        match result {
            Ok(()) => {
                if error.take().is_some() {
                    tracing::info!(path = %path.display(), "the checkpoint file is appended to again");
                }
            }
            // Readiness is unauthenticated: the answer says what failed, the log says where.
            Err(e) => *error = Some(format!("cannot append to the checkpoint file: {e}")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock leaves a plain value behind, still valid.
        self.error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_append_decides() {
        assert_eq!(CheckpointFileHealth::new(false).state(), None);
        let health = CheckpointFileHealth::new(true);
        let path = Path::new("/var/lib/sever/checkpoints.jsonl");
        assert_eq!(health.state(), Some(Ok(())));
        health.record(path, &Err(std::io::Error::from_raw_os_error(24)));
        let Some(Err(e)) = health.state() else {
            panic!("{:?}", health.state())
        };
        assert!(
            e.starts_with("cannot append to the checkpoint file: ") && e.contains("(os error 24)"),
            "{e}"
        );
        health.record(path, &Ok(()));
        assert_eq!(health.state(), Some(Ok(())));
    }
}
