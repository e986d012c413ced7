//! Shared helpers for the end-to-end tests live in `sealpost-testkit`; this crate only hosts `tests/it`.
