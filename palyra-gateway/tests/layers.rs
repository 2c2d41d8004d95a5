//! The gateway's modules form layers and every `crate::` path points down: a module uses only
//! modules of lower layers. This test reads the sources, so a new upward import fails CI.

use std::collections::BTreeMap;
use std::path::Path;

/// Lowest first. A module may use the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &[
        "util",
        "notify",
        "limits",
        "signals",
        "control",
        "runtime",
        "node_client",
        "ws_app",
    ],
    &["store", "provider"],
    &["trust", "grpc", "access"],
    &["enroll"],
    &["node", "browser"],
    &["run"],
    &["console"],
    &["operator"],
    &["serve"],
    &["config", "browser_link"],
    &["client", "daemon"],
    &["palyrad", "browserd"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `path` (one file or a directory), skipping tests.
fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            let entry = entry.expect("dir entry").path();
            let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "tests" || name == "tests.rs" {
                continue;
            }
            sources(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The top-level modules a source file names with `crate::`, outside comments.
fn used_modules(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.push(name);
            }
        }
    }
    used
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let module = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("module {module} is in no layer of tests/layers.rs"));
        let mut files = Vec::new();
        sources(&path, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for used in used_modules(&text) {
                if used == module {
                    continue;
                }
                let Some(theirs) = layer_of(&used) else {
                    continue; // not a module (e.g. `crate::WRITE_STALL`)
                };
                if theirs >= own {
                    violations
                        .entry(format!("{module} -> {used}"))
                        .or_insert_with(|| file.display().to_string());
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that do not point down (module -> what it uses, first file): {violations:#?}"
    );
}
