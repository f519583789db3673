//! The layering rule, checked on the sources: each layer names only the layers below it.
//!
//! `wire` (0) < `core` (1) < `net` (2) < `cluster` (3) < `napi` (4). A file of a layer may name
//! (`crate::<layer>`) its own layer and any lower one; `wire` and `core` use no tokio and no
//! napi, `net` and `cluster` no napi. The fuzz harness (`fuzz.rs`) sits beside `napi`: it may
//! name anything but `napi` and `cluster`.

use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["wire", "core", "net", "cluster", "napi"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layers a source names, as `crate::<layer>` paths, outside comments.
fn named_layers(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in src.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
        }
    }
    out
}

/// Whether a source uses a crate (`tokio::`, `napi::`, `#[napi`), outside comments. `tokio_tungstenite`'s
/// re-export of tungstenite (parsing, no runtime) is not tokio.
fn uses(src: &str, krate: &str) -> Option<usize> {
    src.lines().enumerate().find_map(|(n, line)| {
        let code = line.split("//").next().unwrap_or("");
        let hit = code.match_indices(krate).any(|(i, _)| {
            let before = code[..i].chars().last();
            let after = &code[i + krate.len()..];
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && (after.starts_with("::") || (krate == "napi" && after.starts_with(']')))
        }) || (krate == "napi" && code.contains("#[napi"));
        hit.then_some(n + 1)
    })
}

#[test]
fn each_layer_names_only_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen_layers = [0usize; 5];
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let text = std::fs::read_to_string(f).unwrap();
        let own = match (rank(top), top) {
            (Some(r), _) => {
                seen_layers[r] += 1;
                r
            }
            // The harness: below napi and cluster, above net.
            (None, "fuzz" | "fuzz_tests") => 2,
            // lib.rs (the map) and this test name layers only in docs.
            _ => continue,
        };
        for (line, name) in named_layers(&text) {
            if let Some(r) = rank(&name) {
                if r > own {
                    wrong.push(format!("{rel}:{line} names crate::{name}"));
                }
            }
        }
        let forbidden: &[&str] = match own {
            0 | 1 => &["tokio", "napi", "napi_derive", "redis"],
            2 => &["napi", "napi_derive", "redis"],
            3 => &["napi", "napi_derive"],
            _ => &[],
        };
        for k in forbidden {
            if let Some(line) = uses(&text, k) {
                wrong.push(format!("{rel}:{line} uses {k}"));
            }
        }
    }
    assert!(
        seen_layers.iter().all(|&n| n > 0),
        "a layer has no files: {seen_layers:?}"
    );
    assert!(
        wrong.is_empty(),
        "upward or forbidden names:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    let names = named_layers("use crate::net::server::X; // crate::napi\nlet a = crate::core::y;");
    assert_eq!(names, [(1, "net".into()), (2, "core".into())]);
    assert_eq!(uses("use tokio::sync::Notify;", "tokio"), Some(1));
    assert_eq!(uses("use tokio_tungstenite::tungstenite;", "tokio"), None);
    assert_eq!(uses("// tokio::spawn", "tokio"), None);
    assert_eq!(uses("#[napi(object)]", "napi"), Some(1));
}
