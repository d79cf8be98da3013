//! helios engines.
