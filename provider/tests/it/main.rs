//! Runs the provider binary as Terraform would and talks to it over the wire.

mod handshake;
