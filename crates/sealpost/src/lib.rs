//! # sealpost
//!
//! The Sealpost application: configuration, the wiring of every role, and the commands. The
//! binary (`main.rs`) only parses the command line and calls [`cli::run`].
//!
//! **Owns:**
//! - [`config`]: the typed [`Config`] (embedded commented defaults, file, `SEALPOST_*`
//!   environment, validation that names the key and the fix);
//! - [`app`]: [`App::start`]`(config, roles, shutdown) -> `[`Running`], the one production wiring
//!   that `serve`, the demo, the benches and the integration tests all start;
//! - what the roles need from the application: the status source over the `messages` view
//!   ([`status`]), the dashboard ([`dashboard`]), the projector with its gauges and the rebuild
//!   ([`views`]); the `keys` role's directories, API and publishers ([`keys`]);
//! - the commands: [`cli`] (the command line and its dispatch), [`client`] (send, status,
//!   cancel, upload as a tenant), [`replay`] (the auditor's NDJSON replay and `--verify`),
//!   [`demo`], the [`harness`] the demo and the delivery bench run in, and [`bench`].
//!
//! **Must not:** hold business rules (those are in `sealpost-domain`), storage logic (in
//! `sealpost-eventstore`) or transport logic (in `sealpost-gateway`); it wires them together.
//! It is the edge: commands report errors with `anyhow`, keeping every source in the chain.

pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod harness;
pub mod keys;
pub mod keys_cli;
pub mod replay;
pub mod roles;
pub mod sdk_cli;
pub mod status;
pub mod views;

pub use app::{App, Running};
pub use config::Config;
pub use sealpost_eventstore::names::Role;
