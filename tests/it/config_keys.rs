//! No dead configuration keys: every field of the validated configuration (the structs
//! `config::parse` returns) must be read somewhere outside `src/config/`. A key that is parsed,
//! validated and then read nowhere is a setting the user believes in and the daemon ignores.
//!
//! The raw structs need no such check: a `Deserialize`-only field that is never read is a
//! `dead_code` warning, which `cargo clippy -D warnings` refuses.

use std::path::{Path, PathBuf};

/// The structs of `src/config/mod.rs` that the rest of the program reads.
const VALIDATED: &[&str] = &[
    "Config",
    "Server",
    "Import",
    "Inbox",
    "Portfolio",
    "TemplateRef",
    "Line",
    "Answer",
    "Campaign",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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

/// `(struct, field)` for every `pub field:` of the named `pub struct` blocks.
fn fields(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            current = (VALIDATED.contains(&name.as_str()) && rest.trim_end().ends_with('{'))
                .then_some(name);
        } else if line.starts_with('}') {
            current = None;
        } else if let (Some(s), Some(rest)) = (&current, t.strip_prefix("pub ")) {
            if let Some((field, _)) = rest.split_once(':') {
                out.push((s.clone(), field.trim().to_string()));
            }
        }
    }
    out
}

/// Whether `text` reads `.field` (a field access or method-free path) anywhere.
fn reads(text: &str, field: &str) -> bool {
    let needle = format!(".{field}");
    text.match_indices(&needle).any(|(i, _)| {
        let after = text[i + needle.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn every_validated_config_field_is_read_outside_config() {
    let config = std::fs::read_to_string(src().join("config/mod.rs")).unwrap();
    let fields = fields(&config);
    let found: std::collections::BTreeSet<&str> = fields.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        found.len(),
        VALIDATED.len(),
        "the parser of this test found the structs {found:?}; it no longer matches src/config/mod.rs"
    );
    assert!(fields.len() > 50, "only {} fields found", fields.len());

    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let elsewhere: String = files
        .iter()
        .filter(|p| !p.starts_with(src().join("config")))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");

    let dead: Vec<String> = fields
        .iter()
        .filter(|(_, f)| !reads(&elsewhere, f))
        .map(|(s, f)| format!("{s}.{f}"))
        .collect();
    assert!(
        dead.is_empty(),
        "configuration fields read nowhere outside src/config/ (implement them or refuse the \
         key): {dead:?}"
    );
}

#[test]
fn the_scan_would_see_a_dead_field() {
    let text = "pub struct Line {\n    pub name: String,\n    pub ghost_key: u32,\n}\n";
    let fields = fields(text);
    assert_eq!(
        fields,
        [
            ("Line".to_string(), "name".to_string()),
            ("Line".to_string(), "ghost_key".to_string())
        ]
    );
    assert!(reads("let x = line.name;", "name"));
    assert!(!reads("let x = line.names;", "name"));
    assert!(!reads("let x = line.name_of;", "name"));
    assert!(!reads("fn ghost_key() {}", "ghost_key"));
}
