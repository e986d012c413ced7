//! Embeds the stream and consumer definitions of `nats/` (repository root): every
//! `nats/streams/*.json` and `nats/consumers/<STREAM>/*.json`, found by listing the folders, so
//! a new definition needs no list to be edited. Writes `$OUT_DIR/definitions.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    out
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let nats = manifest.join("../../nats");
    let streams_dir = nats.join("streams");
    let consumers_dir = nats.join("consumers");
    println!("cargo:rerun-if-changed={}", streams_dir.display());
    println!("cargo:rerun-if-changed={}", consumers_dir.display());

    let mut code = String::from("/// `(file name, json)` of every stream definition.\n");
    code.push_str("pub const STREAMS: &[(&str, &str)] = &[\n");
    for f in json_files(&streams_dir) {
        println!("cargo:rerun-if-changed={}", f.display());
        let _ = writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            name(&f),
            f.display().to_string()
        );
    }
    code.push_str("];\n/// `(stream, file name, json)` of every consumer definition.\n");
    code.push_str("pub const CONSUMERS: &[(&str, &str, &str)] = &[\n");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&consumers_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", consumers_dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        println!("cargo:rerun-if-changed={}", d.display());
        for f in json_files(&d) {
            println!("cargo:rerun-if-changed={}", f.display());
            let _ = writeln!(
                code,
                "    ({:?}, {:?}, include_str!({:?})),",
                name(&d),
                name(&f),
                f.display().to_string()
            );
        }
    }
    code.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("definitions.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
