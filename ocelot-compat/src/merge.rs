//! Combining configuration files the way an Ocelot gateway sees them:
//! ASP.NET configuration layering ([`overlay`]), Ocelot's `AddOcelot(folder,
//! env)` merge of `ocelot.*.json` ([`merge_folder`]), and the two together
//! ([`load`]).
//!
//! Behaviour follows Ocelot 25.0's
//! `src/DependencyInjection/ConfigurationBuilderExtensions.cs`. Where Ocelot
//! depends on the file system's enumeration order we sort file names instead,
//! so a merge is reproducible.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::diag::{Diagnostic, Diagnostics};
use crate::read;

/// The sections Ocelot concatenates across files, with the pre-16.0 names
/// that we also accept (Ocelot 16+ silently ignores those; old configs are
/// common enough that dropping their routes would be a trap).
const ARRAY_SECTIONS: [(&str, Option<&str>); 3] = [
    ("Routes", Some("ReRoutes")),
    ("DynamicRoutes", Some("DynamicReRoutes")),
    ("Aggregates", None),
];
const GLOBAL_SECTION: &str = "GlobalConfiguration";
const GLOBAL_FILE: &str = "ocelot.global.json";
const PRIMARY_FILE: &str = "ocelot.json";
/// MMLib.SwaggerForOcelot's `AddOcelotWithSwaggerSupport` takes this section
/// only from this file (or its `.{Environment}` variant).
const SWAGGER_SECTION: &str = "SwaggerEndPoints";
const SWAGGER_FILE: &str = "ocelot.SwaggerEndPoints";
const DEFAULT_ENVIRONMENT: &str = "Development";

/// The result of merging a folder of `ocelot.*.json` files.
#[derive(Debug, Clone)]
pub struct MergedFolder {
    /// The merged configuration: an object with `Routes`, `DynamicRoutes`,
    /// `Aggregates` (arrays) and `GlobalConfiguration` (object), in that order,
    /// and `SwaggerEndPoints` when a file gave it.
    pub value: Value,
    /// The files merged, in merge order.
    pub files: Vec<PathBuf>,
    /// Things that did not stop the merge but that a user should know about.
    pub warnings: Vec<Diagnostic>,
}

/// A configuration ready for the model: one file or a merged folder, with the
/// environment file laid over it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration (always a JSON object).
    pub value: Value,
    /// Every file read, in the order they were applied.
    pub files: Vec<PathBuf>,
    /// Things that did not stop the load but that a user should know about.
    pub warnings: Vec<Diagnostic>,
}

/// Lays `over` on top of `base` the way ASP.NET layers configuration
/// providers (`AddJsonFile("ocelot.json").AddJsonFile("ocelot.Dev.json")`).
///
/// ASP.NET flattens JSON to keys such as `Routes:0:UpstreamPathTemplate`,
/// compared case-insensitively, and a later provider only overrides the keys
/// it has. Hence: objects merge key by key (the base's spelling of a key is
/// kept), arrays merge index by index (an overlay cannot shorten an array, so
/// base elements past its end stay and extra overlay elements are appended),
/// scalars replace, and `null` never removes anything. When the two sides
/// have different kinds (say an object over a string) the overlay replaces
/// the base, which is what the binder ends up seeing in practice.
pub fn overlay(base: &mut Value, over: &Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.iter_mut().find(|(k, _)| keys_equal(k, key)) {
                    Some((_, slot)) => overlay(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(over)) => {
            for (i, value) in over.iter().enumerate() {
                match base.get_mut(i) {
                    Some(slot) => overlay(slot, value),
                    None => base.push(value.clone()),
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// Merges the `ocelot.*.json` files of `dir` as Ocelot's
/// `AddOcelot(folder, env)` does.
///
/// * Files: those directly in `dir` whose name matches `^ocelot\.(.*?)\.json$`
///   ignoring case, except `ocelot.{environment}.json` (ignoring case;
///   an empty `environment` means `Development`, as in Ocelot). The pattern
///   needs two dots, so the primary `ocelot.json` never matches (Ocelot's
///   "skip the primary file" rule only bites for custom primary names).
///   Files are merged in name order (ordinal, ignoring case).
/// * `Routes`, `DynamicRoutes` and `Aggregates` are concatenated; section
///   names are matched ignoring case, and `ReRoutes`/`DynamicReRoutes` are
///   taken as `Routes`/`DynamicRoutes`.
/// * `GlobalConfiguration` comes only from `ocelot.global.json`, replacing
///   (not merging into) the empty default.
/// * `SwaggerEndPoints` comes only from `ocelot.SwaggerEndPoints.json`, or
///   from `ocelot.SwaggerEndPoints.{environment}.json` when that exists, as
///   MMLib.SwaggerForOcelot's `AddOcelotWithSwaggerSupport` merges it.
/// * Any other top-level property is dropped, as Ocelot 25 drops it; custom
///   properties inside routes and `GlobalConfiguration` are kept verbatim.
///
/// Every file's errors are reported together.
pub fn merge_folder(dir: &Path, environment: &str) -> Result<MergedFolder, Diagnostics> {
    let environment = if environment.is_empty() {
        DEFAULT_ENVIRONMENT
    } else {
        environment
    };
    let environment_file = format!("ocelot.{environment}.json");
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let all = match list_files(dir) {
        Ok(all) => all,
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic::error(
                "",
                "",
                format!("cannot read configuration folder: {e}"),
            )
            .in_file(dir)]));
        }
    };
    let primary = all
        .iter()
        .find(|name| keys_equal(name, PRIMARY_FILE))
        .cloned();
    let mut names: Vec<String> = all
        .into_iter()
        .filter(|name| is_sub_config(name) && !keys_equal(name, &environment_file))
        .collect();
    names.sort_by(|a, b| compare_names(a, b));

    if names.is_empty() {
        warnings.push(
            Diagnostic::warning(
                "",
                "",
                "no ocelot.*.json files to merge in this folder; the configuration is empty",
            )
            .in_file(dir),
        );
    }
    if let Some(primary) = primary {
        warnings.push(
            Diagnostic::warning(
                "",
                "",
                "ocelot.json is not part of a folder merge: Ocelot merges only ocelot.*.json \
                 files and overwrites ocelot.json with the result",
            )
            .in_file(dir.join(primary)),
        );
    }

    let mut sections: Vec<Vec<Value>> = vec![Vec::new(); ARRAY_SECTIONS.len()];
    let mut global = Value::Object(Map::new());
    let swagger_environment_file = format!("{SWAGGER_FILE}.{environment}.json");
    let swagger_environment_present = names
        .iter()
        .any(|n| keys_equal(n, &swagger_environment_file));
    let swagger_file = if swagger_environment_present {
        swagger_environment_file
    } else {
        format!("{SWAGGER_FILE}.json")
    };
    let mut swagger: Option<Value> = None;
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let value = match read_json(&path) {
            Ok(value) => value,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        files.push(path.clone());
        let Value::Object(object) = value else {
            warnings.push(
                Diagnostic::warning(
                    "",
                    "",
                    "the top-level JSON value is not an object, so Ocelot merges nothing from this file",
                )
                .in_file(&path),
            );
            continue;
        };
        let is_global = keys_equal(&name, GLOBAL_FILE);
        let is_swagger = keys_equal(&name, &swagger_file);
        merge_file(
            &path,
            object,
            (is_global, is_swagger),
            &mut sections,
            (&mut global, &mut swagger),
            &mut errors,
            &mut warnings,
        );
    }

    if !errors.is_empty() {
        errors.extend(warnings);
        return Err(Diagnostics(errors));
    }

    let mut value = Map::new();
    for ((name, _), items) in ARRAY_SECTIONS.iter().zip(sections) {
        value.insert((*name).to_string(), Value::Array(items));
    }
    value.insert(GLOBAL_SECTION.to_string(), global);
    if let Some(swagger) = swagger {
        value.insert(SWAGGER_SECTION.to_string(), swagger);
    }
    Ok(MergedFolder {
        value: Value::Object(value),
        files,
        warnings,
    })
}

/// Takes one file's sections into the merge.
fn merge_file(
    path: &Path,
    object: Map<String, Value>,
    (is_global, is_swagger): (bool, bool),
    sections: &mut [Vec<Value>],
    (global, swagger): (&mut Value, &mut Option<Value>),
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) {
    // Ocelot looks each section up by name ignoring case and takes the first
    // match, so a second spelling of the same section is never read.
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in object {
        let folded: String = key.chars().map(simple_upper).collect();
        if seen.contains(&folded) {
            warnings.push(
                Diagnostic::warning(
                    "",
                    key.as_str(),
                    "ignored: the file already has this property under another spelling, \
                     and Ocelot reads only the first",
                )
                .in_file(path),
            );
            continue;
        }
        seen.push(folded);

        if keys_equal(&key, GLOBAL_SECTION) {
            if !is_global {
                if !value.is_null() {
                    warnings.push(
                        Diagnostic::warning(
                            "",
                            key.as_str(),
                            format!(
                                "ignored: Ocelot takes GlobalConfiguration only from {GLOBAL_FILE}"
                            ),
                        )
                        .in_file(path),
                    );
                }
                continue;
            }
            match value {
                Value::Object(_) => *global = value,
                // Ocelot skips a null section.
                Value::Null => {}
                other => errors.push(
                    Diagnostic::error(
                        "",
                        key.as_str(),
                        format!("must be an object, found {}", kind(&other)),
                    )
                    .in_file(path),
                ),
            }
            continue;
        }

        if keys_equal(&key, SWAGGER_SECTION) {
            match value {
                Value::Null => {}
                Value::Array(_) if is_swagger => *swagger = Some(value),
                Value::Array(_) => warnings.push(
                    Diagnostic::warning(
                        "",
                        key.as_str(),
                        format!(
                            "ignored: MMLib.SwaggerForOcelot takes SwaggerEndPoints only from \
                             {SWAGGER_FILE}.json (or its .{{Environment}} variant)"
                        ),
                    )
                    .in_file(path),
                ),
                other => errors.push(
                    Diagnostic::error(
                        "",
                        key.as_str(),
                        format!("must be an array, found {}", kind(&other)),
                    )
                    .in_file(path),
                ),
            }
            continue;
        }

        let section = ARRAY_SECTIONS.iter().position(|(name, legacy)| {
            keys_equal(&key, name) || legacy.is_some_and(|legacy| keys_equal(&key, legacy))
        });
        let Some(index) = section else {
            warnings.push(
                Diagnostic::warning(
                    "",
                    key.as_str(),
                    "ignored: a folder merge keeps only Routes, DynamicRoutes, Aggregates \
                     and GlobalConfiguration from each file",
                )
                .in_file(path),
            );
            continue;
        };
        let (name, _) = ARRAY_SECTIONS[index];
        if !keys_equal(&key, name) {
            warnings.push(
                Diagnostic::warning(
                    "",
                    key.as_str(),
                    format!(
                        "legacy name (Ocelot before 16.0), merged as {name}; \
                         Ocelot 16 and later ignore it, so rename it to {name}"
                    ),
                )
                .in_file(path),
            );
        }
        match value {
            Value::Array(items) => sections[index].extend(items),
            Value::Null => {}
            other => errors.push(
                Diagnostic::error(
                    "",
                    key.as_str(),
                    format!("must be an array, found {}", kind(&other)),
                )
                .in_file(path),
            ),
        }
    }
}

/// Loads a configuration from a file or a folder, then lays the environment
/// file over it.
///
/// * `path` is a file: it is parsed (it must hold a JSON object); then, when
///   `environment` is given, `ocelot.{environment}.json` from the same folder
///   (file name matched ignoring case) is laid over it with [`overlay`],
///   unless that is the file itself.
/// * `path` is a folder: [`merge_folder`] with `environment` (or
///   `Development`), then the same environment overlay from that folder.
///
/// A missing or unreadable path, or any syntax error, fails with every error
/// found.
pub fn load(path: &Path, environment: Option<&str>) -> Result<Loaded, Diagnostics> {
    let metadata = fs::metadata(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::error(
            "",
            "",
            format!("cannot read configuration: {e}"),
        )
        .in_file(path)])
    })?;

    let (mut value, mut files, mut warnings, dir) = if metadata.is_dir() {
        let merged = merge_folder(path, environment.unwrap_or(DEFAULT_ENVIRONMENT))?;
        (
            merged.value,
            merged.files,
            merged.warnings,
            path.to_path_buf(),
        )
    } else {
        let value = read_json(path).map_err(|d| Diagnostics(vec![d]))?;
        if !value.is_object() {
            return Err(Diagnostics(vec![Diagnostic::error(
                "",
                "",
                format!(
                    "the top-level JSON value must be an object, found {}",
                    kind(&value)
                ),
            )
            .in_file(path)]));
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (value, vec![path.to_path_buf()], Vec::new(), dir)
    };

    let Some(environment) = environment.filter(|e| !e.is_empty()) else {
        return Ok(Loaded {
            value,
            files,
            warnings,
        });
    };
    let wanted = format!("ocelot.{environment}.json");
    let found = match find_file(&dir, &wanted) {
        Ok(found) => found,
        Err(e) => {
            let d = Diagnostic::error("", "", format!("cannot read configuration folder: {e}"))
                .in_file(&dir);
            warnings.insert(0, d);
            return Err(Diagnostics(warnings));
        }
    };
    let Some(env_name) = found else {
        return Ok(Loaded {
            value,
            files,
            warnings,
        });
    };
    let env_path = dir.join(&env_name);
    let is_itself = metadata.is_file()
        && path
            .file_name()
            .is_some_and(|own| keys_equal(&own.to_string_lossy(), &env_name));
    if is_itself {
        return Ok(Loaded {
            value,
            files,
            warnings,
        });
    }
    let env_value = match read_json(&env_path) {
        Ok(v) => v,
        Err(d) => {
            warnings.insert(0, d);
            return Err(Diagnostics(warnings));
        }
    };
    if !env_value.is_object() {
        let d = Diagnostic::error(
            "",
            "",
            format!(
                "the top-level JSON value must be an object, found {}",
                kind(&env_value)
            ),
        )
        .in_file(&env_path);
        warnings.insert(0, d);
        return Err(Diagnostics(warnings));
    }
    overlay(&mut value, &env_value);
    files.push(env_path);
    Ok(Loaded {
        value,
        files,
        warnings,
    })
}

/// Reads and parses one file; an I/O failure names the file.
#[allow(clippy::result_large_err)] // same shape as `read::parse`
fn read_json(path: &Path) -> Result<Value, Diagnostic> {
    let bytes = fs::read(path).map_err(|e| {
        Diagnostic::error("", "", format!("cannot read configuration file: {e}")).in_file(path)
    })?;
    read::parse(&bytes, path)
}

/// Names of the regular files (or links to them) directly in `dir`.
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // `Path::is_file` follows links, as .NET's EnumerateFiles lists them.
        if entry.path().is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// The file in `dir` named `name`: the exact spelling if present, otherwise
/// the first name (in sorted order) equal to it ignoring case.
fn find_file(dir: &Path, name: &str) -> std::io::Result<Option<String>> {
    if dir.join(name).is_file() {
        return Ok(Some(name.to_string()));
    }
    let mut names: Vec<String> = list_files(dir)?
        .into_iter()
        .filter(|n| keys_equal(n, name))
        .collect();
    names.sort_by(|a, b| compare_names(a, b));
    Ok(names.into_iter().next())
}

/// `^ocelot\.(.*?)\.json$`, ignoring case: a prefix and a suffix that do not
/// overlap, so `ocelot.json` itself does not match but `ocelot..json` does.
fn is_sub_config(name: &str) -> bool {
    const PREFIX: &str = "ocelot.";
    const SUFFIX: &str = ".json";
    let bytes = name.as_bytes();
    bytes.len() >= PREFIX.len() + SUFFIX.len()
        && bytes[..PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
        && bytes[bytes.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX.as_bytes())
}

/// Ordinal comparison ignoring case, then ordinal, so that the order is total
/// and the same on every file system.
fn compare_names(a: &str, b: &str) -> Ordering {
    let folded = |s: &str| s.chars().map(simple_upper).collect::<Vec<char>>();
    folded(a).cmp(&folded(b)).then_with(|| a.cmp(b))
}

/// Key equality as .NET's `StringComparer.OrdinalIgnoreCase`: character by
/// character after simple upper-casing.
fn keys_equal(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(simple_upper).eq(b.chars().map(simple_upper))
}

/// Upper case of a character when it is a single character (.NET's ordinal
/// ignore-case does not expand `ß` to `SS`).
fn simple_upper(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ocelot-corpus/abp-next-admin")
    }

    /// A fresh empty folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("ocelot-compat-merge-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// JSON equality where numbers compare by value (`1` equals `1.0`) and
    /// `small`'s object keys must all be in `big` (which may have more): the
    /// merged corpus file was written by Ocelot with every default filled in.
    fn contained(big: &Value, small: &Value) -> bool {
        match (big, small) {
            (Value::Object(b), Value::Object(s)) => s
                .iter()
                .all(|(k, v)| b.get(k).is_some_and(|bv| contained(bv, v))),
            (Value::Array(b), Value::Array(s)) => {
                b.len() == s.len() && b.iter().zip(s).all(|(b, s)| contained(b, s))
            }
            (Value::Number(b), Value::Number(s)) => b.as_f64() == s.as_f64(),
            _ => big == small,
        }
    }

    /// Pairs every item of `split` with a distinct item of `merged` that
    /// contains it; returns the split items left unpaired.
    fn unmatched(split: &[Value], merged: &[Value]) -> Vec<Value> {
        let mut used = vec![false; merged.len()];
        let mut left = Vec::new();
        for s in split {
            match (0..merged.len()).find(|&i| !used[i] && contained(&merged[i], s)) {
                Some(i) => used[i] = true,
                None => left.push(s.clone()),
            }
        }
        left
    }

    #[test]
    fn overlay_objects_case_insensitive_keeping_base_spelling() {
        let mut base = json!({"GlobalConfiguration": {"BaseUrl": "http://a", "RequestIdKey": "X"}});
        overlay(
            &mut base,
            &json!({"globalconfiguration": {"BASEURL": "http://b", "New": 1}}),
        );
        assert_eq!(
            base,
            json!({"GlobalConfiguration": {"BaseUrl": "http://b", "RequestIdKey": "X", "New": 1}})
        );
        let keys: Vec<_> = base["GlobalConfiguration"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["BaseUrl", "RequestIdKey", "New"]);
    }

    #[test]
    fn overlay_arrays_by_index() {
        let mut base = json!({"Routes": [
            {"UpstreamPathTemplate": "/a", "Port": 1},
            {"UpstreamPathTemplate": "/b"},
            {"UpstreamPathTemplate": "/c"}
        ]});
        overlay(&mut base, &json!({"routes": [{"port": 2}, null]}));
        assert_eq!(
            base,
            json!({"Routes": [
                {"UpstreamPathTemplate": "/a", "Port": 2},
                {"UpstreamPathTemplate": "/b"},
                {"UpstreamPathTemplate": "/c"}
            ]})
        );

        let mut base = json!([1]);
        overlay(&mut base, &json!([5, 6, {"x": 1}]));
        assert_eq!(base, json!([5, 6, {"x": 1}]));

        // An empty overlay array cannot remove anything.
        let mut base = json!({"A": [1, 2]});
        overlay(&mut base, &json!({"A": []}));
        assert_eq!(base, json!({"A": [1, 2]}));
    }

    #[test]
    fn overlay_scalars_replace_and_null_keeps() {
        let mut base = json!({"a": 1, "b": "x", "c": {"d": true}, "e": [1]});
        overlay(
            &mut base,
            &json!({"A": "1", "b": null, "c": null, "e": "s", "f": null}),
        );
        assert_eq!(
            base,
            json!({"a": "1", "b": "x", "c": {"d": true}, "e": "s", "f": null})
        );
        let mut base = json!("old");
        overlay(&mut base, &json!({"k": 1}));
        assert_eq!(base, json!({"k": 1}));
    }

    #[test]
    fn overlay_non_ascii_keys_ignore_case() {
        let mut base = json!({"Ärger": 1});
        overlay(&mut base, &json!({"äRGER": 2}));
        assert_eq!(base, json!({"Ärger": 2}));
    }

    #[test]
    fn sub_config_pattern() {
        for yes in [
            "ocelot.a.json",
            "OCELOT.Global.JSON",
            "ocelot..json",
            "ocelot.a.b.json",
        ] {
            assert!(is_sub_config(yes), "{yes}");
        }
        for no in [
            "ocelot.json",
            "Ocelot.json",
            "xocelot.a.json",
            "ocelot.a.json.bak",
            "ocelot-a.json",
            "ocelot.a.jsonc",
            "configuration.json",
            "é",
        ] {
            assert!(!is_sub_config(no), "{no}");
        }
    }

    #[test]
    fn name_order_is_ordinal_ignoring_case() {
        let mut v = vec![
            "ocelot.b.json",
            "ocelot.A.json",
            "ocelot.a.json",
            "ocelot._.json",
        ];
        v.sort_by(|a, b| compare_names(a, b));
        // '_' (0x5F) sorts after upper-case letters in an upper-cased comparison.
        assert_eq!(
            v,
            [
                "ocelot.A.json",
                "ocelot.a.json",
                "ocelot.b.json",
                "ocelot._.json"
            ]
        );
    }

    #[test]
    fn merge_folder_abp_split_matches_merged_file() {
        let dir = corpus().join("split-OcelotConfig");
        let merged = merge_folder(&dir, "Development").unwrap();
        assert!(merged.warnings.is_empty(), "{:?}", merged.warnings);
        assert_eq!(
            names(&merged.files),
            [
                "ocelot.aggregate.json",
                "ocelot.backendadmin.json",
                "ocelot.global.json",
                "ocelot.idsadmin.json",
                "ocelot.localization.json",
                "ocelot.messages.json",
                "ocelot.platform.json",
                "ocelot.task.json",
                "ocelot.webhook.json"
            ]
        );
        let v = &merged.value;
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "Routes",
                "DynamicRoutes",
                "Aggregates",
                "GlobalConfiguration"
            ]
        );
        let routes = v["Routes"].as_array().unwrap();
        let aggregates = v["Aggregates"].as_array().unwrap();
        assert_eq!(routes.len(), 60);
        assert_eq!(aggregates.len(), 5);
        assert_eq!(v["DynamicRoutes"], json!([]));

        let global_file = dir.join("ocelot.global.json");
        let global = read::parse(&fs::read(&global_file).unwrap(), &global_file).unwrap();
        assert_eq!(v["GlobalConfiguration"], global["GlobalConfiguration"]);

        let reference_file = corpus().join("merged/ocelot.json");
        let reference = read::parse(&fs::read(&reference_file).unwrap(), &reference_file).unwrap();
        let ref_routes = reference["Routes"].as_array().unwrap();
        let ref_aggregates = reference["Aggregates"].as_array().unwrap();
        assert_eq!(ref_routes.len(), 60);
        assert!(unmatched(aggregates, ref_aggregates).is_empty());

        // The reference was committed later than the split files and differs
        // in exactly one route: its authors changed the upstream path
        // `/api/api/files/{everything}` to `/api/files/{everything}` (leaving
        // two identical routes). Undo that one edit and the sets coincide.
        let left = unmatched(routes, ref_routes);
        assert_eq!(left.len(), 1, "{left:#?}");
        assert_eq!(
            left[0]["UpstreamPathTemplate"],
            "/api/api/files/{everything}"
        );
        let mut edited = routes.clone();
        for route in &mut edited {
            if route["UpstreamPathTemplate"] == "/api/api/files/{everything}" {
                route["UpstreamPathTemplate"] = json!("/api/files/{everything}");
            }
        }
        assert!(unmatched(&edited, ref_routes).is_empty());
    }

    #[test]
    fn merge_folder_legacy_root_with_gbk_comments() {
        let dir = corpus().join("split-legacy-root");
        let merged = merge_folder(&dir, "Development").unwrap();
        assert_eq!(merged.files.len(), 9);
        assert_eq!(merged.value["Routes"].as_array().unwrap().len(), 54);
        assert_eq!(merged.value["Aggregates"].as_array().unwrap().len(), 5);
        assert_eq!(
            merged.value["GlobalConfiguration"]["BaseUrl"],
            "http://localhost:30000"
        );
        // Routes come in file-name order: aggregate (none), backendadmin first.
        assert_eq!(
            merged.value["Routes"][0]["DownstreamHostAndPorts"][0]["Port"],
            30010
        );
    }

    #[test]
    fn merge_folder_legacy_names_are_normalised() {
        let tmp = TempDir::new("legacy");
        tmp.write(
            "ocelot.old.json",
            r#"{"ReRoutes": [{"UpstreamPathTemplate": "/old"}],
                "DynamicReRoutes": [{"ServiceName": "svc"}]}"#,
        );
        tmp.write(
            "ocelot.new.json",
            r#"{"routes": [{"UpstreamPathTemplate": "/new"}], "AGGREGATES": [{"RouteKeys": []}]}"#,
        );
        let merged = merge_folder(&tmp.0, "Production").unwrap();
        assert_eq!(
            merged.value,
            json!({
                "Routes": [{"UpstreamPathTemplate": "/new"}, {"UpstreamPathTemplate": "/old"}],
                "DynamicRoutes": [{"ServiceName": "svc"}],
                "Aggregates": [{"RouteKeys": []}],
                "GlobalConfiguration": {}
            })
        );
        assert_eq!(merged.warnings.len(), 2, "{:?}", merged.warnings);
        assert!(merged.warnings.iter().all(|w| w.message.contains("legacy")));
    }

    #[test]
    fn merge_folder_file_selection_and_global() {
        let tmp = TempDir::new("select");
        tmp.write(
            "ocelot.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/primary"}]}"#,
        );
        tmp.write(
            "ocelot.staging.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/env"}]}"#,
        );
        tmp.write(
            "ocelot.b.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/b", "Custom": {"x": 1}}],
                "GlobalConfiguration": {"BaseUrl": "http://ignored"},
                "SwaggerEndPoints": []}"#,
        );
        tmp.write(
            "OCELOT.GLOBAL.JSON",
            "{ // global\n \"GlobalConfiguration\": {\"BaseUrl\": \"http://g\", \"MyOption\": 1},\n \"Routes\": [{\"UpstreamPathTemplate\": \"/g\"},],\n}",
        );
        tmp.write(
            "ocelot.a.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/a"}]}"#,
        );
        tmp.write("appsettings.json", "not json at all");
        fs::create_dir(tmp.0.join("ocelot.dir.json")).unwrap();

        let merged = merge_folder(&tmp.0, "STAGING").unwrap();
        assert_eq!(
            names(&merged.files),
            ["ocelot.a.json", "ocelot.b.json", "OCELOT.GLOBAL.JSON"]
        );
        let templates: Vec<_> = merged.value["Routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["UpstreamPathTemplate"].as_str().unwrap())
            .collect();
        assert_eq!(templates, ["/a", "/b", "/g"]);
        // Custom properties inside routes and GlobalConfiguration survive.
        assert_eq!(merged.value["Routes"][1]["Custom"], json!({"x": 1}));
        assert_eq!(
            merged.value["GlobalConfiguration"],
            json!({"BaseUrl": "http://g", "MyOption": 1})
        );
        let messages: Vec<String> = merged.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("ocelot.json is not part")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("GlobalConfiguration: ignored")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("SwaggerEndPoints: ignored: MMLib")),
            "{messages:?}"
        );
        assert!(merged.value.get("SwaggerEndPoints").is_none());

        // The default environment is Development, so ocelot.staging.json joins.
        let merged = merge_folder(&tmp.0, "").unwrap();
        assert_eq!(merged.files.len(), 4);
    }

    #[test]
    fn merge_folder_takes_swagger_end_points_from_their_own_file() {
        let tmp = TempDir::new("swagger");
        let endpoints = |key: &str| {
            format!(
                r#"{{"SwaggerEndPoints": [{{"Key": "{key}", "Config": []}}], "Routes": [{{"UpstreamPathTemplate": "/{key}"}}]}}"#
            )
        };
        tmp.write("ocelot.a.json", &endpoints("ignored"));
        tmp.write("ocelot.SwaggerEndPoints.json", &endpoints("base"));
        let merged = merge_folder(&tmp.0, "Staging").unwrap();
        assert_eq!(merged.value["SwaggerEndPoints"][0]["Key"], "base");
        assert_eq!(merged.value["Routes"].as_array().map(Vec::len), Some(2));
        assert_eq!(merged.warnings.len(), 1, "{:?}", merged.warnings);

        tmp.write(
            "ocelot.swaggerendpoints.staging.json",
            &endpoints("staging"),
        );
        let merged = merge_folder(&tmp.0, "Staging").unwrap();
        assert_eq!(merged.value["SwaggerEndPoints"][0]["Key"], "staging");
        let merged = merge_folder(&tmp.0, "Production").unwrap();
        assert_eq!(merged.value["SwaggerEndPoints"][0]["Key"], "base");
    }

    #[test]
    fn merge_folder_reports_every_file_error() {
        let tmp = TempDir::new("errors");
        tmp.write("ocelot.a.json", "{\n  \"Routes\": [ }\n");
        tmp.write("ocelot.b.json", r#"{"Routes": []}"#);
        tmp.write("ocelot.c.json", "{ /* open");
        tmp.write(
            "ocelot.d.json",
            r#"{"Routes": {"UpstreamPathTemplate": "/x"}}"#,
        );
        tmp.write("ocelot.global.json", r#"{"GlobalConfiguration": []}"#);
        let d = merge_folder(&tmp.0, "Development").unwrap_err();
        let errors: Vec<_> = d.errors().collect();
        assert_eq!(errors.len(), 4, "{d}");
        let files: Vec<_> = errors
            .iter()
            .map(|e| {
                e.file
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            files,
            [
                "ocelot.a.json",
                "ocelot.c.json",
                "ocelot.d.json",
                "ocelot.global.json"
            ]
        );
        assert_eq!(errors[0].line_col, Some((2, 15)));
        assert!(errors[1].message.contains("unterminated block comment"));
        assert!(errors[2].message.contains("must be an array"));
        assert!(errors[3].message.contains("must be an object"));
    }

    #[test]
    fn merge_folder_non_object_file_is_skipped_with_warning() {
        let tmp = TempDir::new("nonobject");
        tmp.write("ocelot.a.json", "[1, 2]");
        tmp.write(
            "ocelot.b.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/b"}]}"#,
        );
        let merged = merge_folder(&tmp.0, "Development").unwrap();
        assert_eq!(merged.value["Routes"].as_array().unwrap().len(), 1);
        assert_eq!(merged.warnings.len(), 1);
    }

    #[test]
    fn merge_folder_missing_dir() {
        let missing = Path::new("/definitely/not/here");
        let d = merge_folder(missing, "Development").unwrap_err();
        assert!(d.has_errors());
        assert!(d.to_string().contains("/definitely/not/here"), "{d}");
    }

    #[test]
    fn load_file_with_environment_overlay() {
        let file = corpus().join("merged/ocelot.json");
        let plain = load(&file, None).unwrap();
        assert_eq!(plain.files, std::slice::from_ref(&file));
        let loaded = load(&file, Some("Development")).unwrap();
        assert_eq!(
            names(&loaded.files),
            ["ocelot.json", "ocelot.Development.json"]
        );
        // ocelot.Development.json is `{}`, so the overlay changes nothing.
        assert_eq!(loaded.value, plain.value);
        assert_eq!(loaded.value["Routes"].as_array().unwrap().len(), 60);

        // The environment file is found ignoring case; a missing one is fine.
        let loaded = load(&file, Some("development")).unwrap();
        assert_eq!(loaded.files.len(), 2);
        let loaded = load(&file, Some("Production")).unwrap();
        assert_eq!(loaded.files.len(), 1);
    }

    #[test]
    fn load_overlays_environment_values() {
        let tmp = TempDir::new("loadenv");
        let main = tmp.write(
            "ocelot.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamHostAndPorts": [{"Host": "prod", "Port": 80}]}],
                "GlobalConfiguration": {"BaseUrl": "https://prod"}}"#,
        );
        tmp.write(
            "ocelot.dev.json",
            r#"{"routes": [{"downstreamHostAndPorts": [{"Host": "localhost"}]}],
                "GlobalConfiguration": {"BaseUrl": "http://localhost"}}"#,
        );
        let loaded = load(&main, Some("Dev")).unwrap();
        assert_eq!(
            loaded.value,
            json!({"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamHostAndPorts": [{"Host": "localhost", "Port": 80}]}],
                   "GlobalConfiguration": {"BaseUrl": "http://localhost"}})
        );

        // Loading the environment file itself does not overlay it twice.
        let env_file = tmp.0.join("ocelot.dev.json");
        let loaded = load(&env_file, Some("dev")).unwrap();
        assert_eq!(loaded.files, [env_file]);
    }

    #[test]
    fn load_folder_merges_then_overlays_environment() {
        let tmp = TempDir::new("loaddir");
        tmp.write(
            "ocelot.a.json",
            r#"{"Routes": [{"UpstreamPathTemplate": "/a", "Priority": 1}]}"#,
        );
        tmp.write(
            "ocelot.global.json",
            r#"{"GlobalConfiguration": {"BaseUrl": "http://g"}}"#,
        );
        tmp.write(
            "ocelot.Test.json",
            r#"{"Routes": [{"Priority": 5}], "GlobalConfiguration": {"RequestIdKey": "Rid"}}"#,
        );
        let loaded = load(&tmp.0, Some("Test")).unwrap();
        assert_eq!(
            names(&loaded.files),
            ["ocelot.a.json", "ocelot.global.json", "ocelot.Test.json"]
        );
        assert_eq!(
            loaded.value["Routes"],
            json!([{"UpstreamPathTemplate": "/a", "Priority": 5}])
        );
        assert_eq!(
            loaded.value["GlobalConfiguration"],
            json!({"BaseUrl": "http://g", "RequestIdKey": "Rid"})
        );

        // Without an environment, the Development file is excluded but
        // ocelot.Test.json is an ordinary sub-config and is concatenated.
        let loaded = load(&tmp.0, None).unwrap();
        assert_eq!(loaded.files.len(), 3);
        assert_eq!(loaded.value["Routes"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn load_errors_name_the_path() {
        let d = load(Path::new("/no/such/ocelot.json"), None).unwrap_err();
        assert!(d.to_string().contains("/no/such/ocelot.json"), "{d}");

        let tmp = TempDir::new("loaderr");
        let file = tmp.write("ocelot.json", "[]");
        let d = load(&file, None).unwrap_err();
        assert!(d.to_string().contains("must be an object"), "{d}");

        tmp.write("ocelot.json", "{}");
        tmp.write("ocelot.Bad.json", "{,}");
        let d = load(&file, Some("Bad")).unwrap_err();
        assert!(d.to_string().contains("ocelot.Bad.json:1:2"), "{d}");
    }
}
