//! What the `fanner` binary shares with the engine's tests: the in-process link between the
//! control plane and the fan-out engine.

pub mod link;
