//! `sealpost`: parses the command line and runs it through the library (`sealpost::cli`).

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: the delivery path allocates many small, short-lived
/// buffers on both runtime threads, where glibc's arenas cost a quarter of the process's CPU
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match sealpost::cli::run(sealpost::cli::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (some errors repeat their source's
/// text in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
