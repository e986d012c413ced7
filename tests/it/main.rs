//! End-to-end tests against real servers: one test binary, each test with its own nats-server.

mod alerts;
mod audit;
mod blobstore;
mod carriers;
mod chaos;
mod cluster;
mod dashboard;
mod delivery;
mod dr;
mod eventstore;
mod gateway;
mod keys;
mod keys_role;
mod leaks;
mod limits;
mod metrics;
mod projections;
mod replay;
mod schemas;
mod sdk;
mod support;
mod tenancy;
mod tlog;
