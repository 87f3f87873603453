//! Integration tests of the persister: one binary, one module per concern.

mod crash;
mod firehose;
mod lake;
mod leases;
mod memory;
mod parquet;
mod s3;
mod support;
