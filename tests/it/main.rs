//! End-to-end tests against real servers: one test binary, each test with its own nats-server.

mod blobstore;
mod carriers;
mod delivery;
mod eventstore;
mod gateway;
mod schemas;
mod support;
