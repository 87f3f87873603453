mod support;

mod access;
mod audit;
mod catalog;
mod console;
mod gatekeeping;
mod http;
mod leases;
mod replicas;
mod routes;
mod streams;
