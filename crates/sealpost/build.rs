//! Embeds the event schemas of `schemas/events/` (repository root) for `sealpost replay
//! --verify`: every `<event_type>.v<N>.json`, found by listing the folder, so a new schema
//! version needs no list to be edited. Writes `$OUT_DIR/event_schemas.rs`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dir = manifest.join("../../schemas/events");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut code =
        String::from("/// `(event type, schema version, schema text)` of every event schema.\n");
    code.push_str("pub const EVENT_SCHEMAS: &[(&str, u32, &str)] = &[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (ty, version) = stem
            .rsplit_once(".v")
            .unwrap_or_else(|| panic!("{} is not named <event_type>.v<N>.json", f.display()));
        let version: u32 = version
            .parse()
            .unwrap_or_else(|_| panic!("{} is not named <event_type>.v<N>.json", f.display()));
        let _ = writeln!(
            code,
            "    ({ty:?}, {version}, include_str!({:?})),",
            f.display().to_string()
        );
    }
    code.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("event_schemas.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
