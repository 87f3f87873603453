//! Kinesis.
