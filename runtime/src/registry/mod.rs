//! The embedded schema registry (in progress).
