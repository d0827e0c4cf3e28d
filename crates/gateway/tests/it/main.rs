//! The gateway's tests: one binary, the gateway in-process on a static
//! instance source or a real registry, in front of tiny hyper backends
//! ([`support`]).

mod lifecycle;
mod proxy;
mod registry;
mod support;
