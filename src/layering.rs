//! The layering rule, checked on the sources: each layer names only the layers below it.
//!
//! `wire` (0) < `core` (1) < `net` (2) < `cluster` (3) < `napi` (4). A file of a layer may name
//! its own layer and any lower one, whether as `crate::<layer>`, inside a `crate::{..}` group or
//! through `super::` chains that climb to the crate root; `wire` and `core` use no tokio, napi or
//! Redis (as a path, an alias or `extern crate`), `net` no napi or Redis, `cluster` no napi. The
//! crate root only declares modules (no re-export could hide a name). The fuzz harness
//! (`fuzz.rs`) may name anything but `napi` and `cluster`. Comments and string literals are not
//! code. Not seen: macros defined in a higher layer (there are none).

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

/// The source with comments and the contents of string literals blanked out (newlines kept),
/// so that what the checks below find is code.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, c: u8| out.push(if c == b'\n' { '\n' } else { ' ' });
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            out.push_str("\"\"");
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            i += close.len();
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            out.push_str("\"\"");
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a source names: `crate::x`, each `x` of a group `crate::{x::A, y}`,
/// and `super::` chains that climb to the crate root from `module` (the file's module path,
/// e.g. `["net", "tests", "close"]`), with their line numbers.
fn named_layers(src: &str, module: &[&str]) -> Vec<(usize, String)> {
    let code = code_only(src);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.push((line_of(at), ident(rest)));
            continue;
        };
        let start = at + "crate::{".len();
        let mut depth = 0;
        let mut item_start = true;
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && !c.is_whitespace() => {
                    out.push((line_of(start + j), ident(&group[j..])));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    let mut from = 0;
    while let Some(found) = code[from..].find("super::") {
        let at = from + found;
        let before = code[..at].chars().last();
        let mut climbs = 0;
        let mut tail = &code[at..];
        while let Some(t) = tail.strip_prefix("super::") {
            climbs += 1;
            tail = t;
        }
        from = code.len() - tail.len();
        let part_of_a_name = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !part_of_a_name && climbs >= module.len() {
            out.push((line_of(at), ident(tail)));
        }
    }
    out
}

/// The first line where a source uses crate `krate` (`krate::`, `use krate as ..`, `extern crate
/// krate`, and for napi `#[napi`), in code. `tokio_tungstenite`'s re-export of tungstenite
/// (parsing, no runtime) is not tokio.
fn uses(src: &str, krate: &str) -> Option<usize> {
    let code = code_only(src);
    code.lines().enumerate().find_map(|(n, line)| {
        let hit = line.match_indices(krate).any(|(i, _)| {
            let before = line[..i].chars().last();
            let after = &line[i + krate.len()..];
            let whole = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            // `x::tokio` is another path's segment; `use ::tokio` is the crate.
            let lead = line[..i].trim_end();
            let is_path_start = !lead.ends_with("::") || lead.ends_with("use ::");
            whole
                && is_path_start
                && (after.starts_with("::")
                    || after.trim_start().starts_with("as ")
                    || line[..i].trim_end().ends_with("extern crate")
                    || (krate == "napi" && after.starts_with(']')))
        }) || (krate == "napi" && line.contains("#[napi"));
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
            // lib.rs only declares the modules: a `use` there could re-export a higher layer
            // under a name the checks would not see.
            _ if rel == "lib.rs" => {
                if code_only(&text).contains("use ") {
                    wrong.push("lib.rs: a `use` (re-export) in the crate root".into());
                }
                continue;
            }
            // This test.
            _ => continue,
        };
        let module: Vec<&str> = rel
            .trim_end_matches(".rs")
            .split('/')
            .filter(|m| *m != "mod")
            .collect();
        for (line, name) in named_layers(&text, &module) {
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
    let at = |src: &str, module: &[&str]| -> Vec<String> {
        named_layers(src, module)
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    };
    let names = named_layers(
        "use crate::net::server::X; // crate::napi\nlet a = crate::core::y;",
        &["wire"],
    );
    assert_eq!(names, [(1, "net".into()), (2, "core".into())]);
    assert_eq!(
        at("use crate::{napi::X, core::{a, b}, net};", &["wire"]),
        ["napi", "core", "net"]
    );
    assert_eq!(
        named_layers("use crate::{\n    napi::X,\n};", &["wire"]),
        [(2, "napi".into())],
        "a group over several lines"
    );
    assert_eq!(
        at("use super::super::napi::X;", &["net", "server"]),
        ["napi"]
    );
    assert_eq!(at("use super::napi::X;", &["net"]), ["napi"]);
    assert_eq!(
        at("use super::events::X;", &["net", "server"]),
        Vec::<String>::new()
    );
    assert_eq!(
        at(r#"let s = "a // b"; let x = crate::napi::y;"#, &["wire"]),
        ["napi"]
    );
    assert_eq!(
        at(r#"let s = "crate::napi";"#, &["wire"]),
        Vec::<String>::new()
    );
    assert_eq!(uses("use tokio::sync::Notify;", "tokio"), Some(1));
    assert_eq!(uses("use tokio_tungstenite::tungstenite;", "tokio"), None);
    assert_eq!(uses("// tokio::spawn", "tokio"), None);
    assert_eq!(uses("#[napi(object)]", "napi"), Some(1));
    assert_eq!(uses("use ::tokio as rt;", "tokio"), Some(1));
    assert_eq!(uses("extern crate tokio as rt;", "tokio"), Some(1));
    assert_eq!(
        uses("use crate::napi::x;", "napi"),
        None,
        "a layer, not the crate"
    );
    assert_eq!(uses("/* tokio::spawn */ let a = 1;", "tokio"), None);
}
