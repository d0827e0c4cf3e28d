//! The store's tests: one binary.
//!
//! - [`model`]: random command sequences applied to the store and to a
//!   plain in-memory model; every read must agree.
//! - [`checkpoint_race`]: checkpoints racing commits and compactions.

mod checkpoint_race;
mod model;
