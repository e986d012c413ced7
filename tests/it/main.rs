//! End-to-end tests against real servers: one test binary, each test with its own nats-server.

mod eventstore;
mod schemas;
mod support;
