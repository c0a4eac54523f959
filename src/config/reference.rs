//! The README's configuration reference is generated from the `///` comments of the config
//! structs and the values of `Config::default()`, and this test fails when the two drift apart.
//! `SIDB_BLESS=1 cargo test config::reference` rewrites the README's table.
//!
//! The structs are read from their source text (rustdoc comments do not exist at run time): a
//! `pub struct` lists `/// doc` lines followed by `pub name: Type,`; a field whose type is
//! another config struct is a subsection (`retrieval.recommend.*`).

use std::collections::BTreeMap;

use super::Config;

/// Where the config structs are defined.
const SOURCES: [&str; 4] = [
    include_str!("../config.rs"),
    include_str!("../auth.rs"),
    include_str!("../model/recommend.rs"),
    include_str!("../model/neighbours.rs"),
];
const BEGIN: &str =
    "<!-- BEGIN configuration reference: generated from src/config.rs by `SIDB_BLESS=1 cargo test config::reference` -->";
const END: &str = "<!-- END configuration reference -->";

/// One `pub` field: its name, its type's last path segment and its doc comment.
struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// Every `pub struct` of the sources with its documented fields, by struct name.
fn structs() -> BTreeMap<String, Vec<Field>> {
    let mut out: BTreeMap<String, Vec<Field>> = BTreeMap::new();
    for source in SOURCES {
        let mut current: Option<String> = None;
        let mut doc: Vec<String> = Vec::new();
        for line in source.lines() {
            let t = line.trim();
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.strip_suffix(" {").map(str::to_string);
                doc.clear();
            } else if line == "}" {
                current = None;
            } else if let (Some(name), true) = (&current, line.starts_with("    ")) {
                if let Some(text) = t.strip_prefix("///") {
                    doc.push(text.trim().to_string());
                } else if let Some(decl) = t.strip_prefix("pub ") {
                    let (field, ty) = decl
                        .trim_end_matches(',')
                        .split_once(": ")
                        .expect("a pub field is `pub name: Type,`");
                    let ty = ty.rsplit("::").next().unwrap_or(ty).to_string();
                    let field = Field {
                        name: field.to_string(),
                        ty,
                        doc: doc.join(" "),
                    };
                    out.entry(name.clone()).or_default().push(field);
                    doc.clear();
                } else if !t.starts_with("#[") {
                    doc.clear();
                }
            }
        }
    }
    out
}

/// Rustdoc links (`[`x`]`, `[`x`](y)`) read as plain code in a table.
fn plain(doc: &str) -> String {
    let mut s = doc.replace("[`", "`").replace("`]", "`");
    while let Some(start) = s.find("`(") {
        let Some(len) = s[start..].find(')') else {
            break;
        };
        s.replace_range(start + 1..start + len + 1, "");
    }
    s.replace('|', "\\|")
}

fn render(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("`\"{s}\"`"),
        other => format!("`{other}`"),
    }
}

/// The rows `| key | default | meaning |` of every setting under `prefix`.
fn rows(
    types: &BTreeMap<String, Vec<Field>>,
    ty: &str,
    prefix: &str,
    defaults: &toml::Value,
    out: &mut Vec<String>,
) {
    let fields = types
        .get(ty)
        .unwrap_or_else(|| panic!("config struct {ty} not found in the sources"));
    for f in fields {
        let key = format!("{prefix}{}", f.name);
        let value = defaults
            .get(&f.name)
            .unwrap_or_else(|| panic!("{key} has no default in Config::default()"));
        assert!(!f.doc.is_empty(), "{key} has no doc comment");
        if types.contains_key(&f.ty) {
            rows(types, &f.ty, &format!("{key}."), value, out);
        } else {
            out.push(format!(
                "| `{key}` | {} | {} |",
                render(value),
                plain(&f.doc)
            ));
        }
    }
}

/// The generated table.
fn table() -> String {
    let types = structs();
    let defaults = toml::Value::try_from(Config::default()).expect("the defaults serialize");
    let mut lines = vec![
        "| key | default | meaning |".to_string(),
        "|---|---|---|".to_string(),
    ];
    for section in &types["Config"] {
        rows(
            &types,
            &section.ty,
            &format!("{}.", section.name),
            &defaults[section.name.as_str()],
            &mut lines,
        );
    }
    lines.join("\n")
}

#[test]
fn readme_configuration_reference_matches_the_config_docs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md is readable");
    let start = readme.find(BEGIN).expect("README.md has the BEGIN marker") + BEGIN.len();
    let end = readme.find(END).expect("README.md has the END marker");
    let generated = format!("\n{}\n", table());
    if std::env::var_os("SIDB_BLESS").is_some() {
        let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
        std::fs::write(path, updated).expect("README.md is writable");
        return;
    }
    assert!(
        readme[start..end] == generated,
        "README.md's configuration table differs from the config structs' doc comments and \
         defaults; run `SIDB_BLESS=1 cargo test config::reference` and review the diff.\n\
         generated:\n{generated}"
    );
}

#[test]
fn every_default_is_in_the_reference() {
    let table = table();
    let defaults = toml::Value::try_from(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    collect_keys(&defaults, "", &mut keys);
    for key in keys {
        assert!(
            table.contains(&format!("| `{key}` |")),
            "{key} is missing from the reference"
        );
    }
}

fn collect_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                collect_keys(v, &format!("{prefix}{k}."), out);
            }
        }
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}
