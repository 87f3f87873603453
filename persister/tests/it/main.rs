//! Integration tests of the persister: one binary, one module per concern.

mod lake;
mod support;
