//! The audit trail's integrity against tampering and schema edits: the real server, the
//! real CLI, and sever's audit API read directly.

mod integrity;
