//! The store's tests: one binary.
//!
//! - [`model`]: random command sequences applied to the store and to a
//!   plain in-memory model; every read must agree.
//! - [`checkpoint_race`]: checkpoints racing commits and compactions.
//! - [`damage`]: a flipped byte anywhere in the database file is an error
//!   at open or read, or a state that was durable; never a panic.

mod checkpoint_race;
mod damage;
mod model;
