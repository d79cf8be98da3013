//! helios daemon.
