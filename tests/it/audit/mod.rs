//! The audit trail's integrity against tampering and schema edits.

mod integrity;
