//! Load balancers over a set of instances (being written).
