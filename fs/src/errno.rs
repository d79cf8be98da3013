//! The one place where core errors become errno values for the kernel. Expected errors
//! (ENOENT, EEXIST, ...) are logged at `debug!`; failures of the store or the machine
//! become their errno (EIO for corruption) and are logged at `error!`.

use fuser::Errno;
use helios_snapshot::Error;

/// Converts a core error to the errno a FUSE reply carries, logging it.
pub(crate) fn errno(op: &str, e: &Error) -> Errno {
    let code = e.errno();
    if e.is_internal() {
        tracing::error!(op, error = %e, "filesystem operation failed");
    } else {
        tracing::debug!(op, error = %e, code, "filesystem operation refused");
    }
    Errno::from_i32(code)
}

/// Converts an I/O error on a backing file.
pub(crate) fn io_errno(op: &str, e: &std::io::Error) -> Errno {
    tracing::debug!(op, error = %e, "backing file I/O failed");
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}
