//! The whole load pipeline in one call: read and merge the files, build the
//! typed model, validate it, and say which file each problem is in.

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{self, FileConfiguration};
use crate::table::{RouteTable, UpstreamSpec};
use crate::{merge, read, validate};
use std::path::{Path, PathBuf};

/// A configuration that loaded: no errors, possibly warnings.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The merged configuration as Ocelot JSON (what the admin API shows).
    pub value: serde_json::Value,
    pub config: FileConfiguration,
    pub warnings: Vec<Diagnostic>,
    /// The files that were read, in merge order.
    pub files: Vec<PathBuf>,
}

/// Loads `path` (an `ocelot.json` or a folder of `ocelot.*.json`) with the
/// optional environment overlay, and validates it. On failure every error is
/// returned at once, each naming its file.
pub fn load(path: &Path, environment: Option<&str>) -> Result<LoadedConfig, Diagnostics> {
    let loaded = merge::load(path, environment)?;
    let (config, mut diags) = model::from_value(&loaded.value);
    diags.extend(validate::validate(&config));
    let origins = Origins::of(path, &loaded.files, environment);
    let mut all: Vec<Diagnostic> = loaded.warnings;
    all.extend(diags.into_iter().map(|d| origins.attach(d)));
    if all.iter().any(Diagnostic::is_error) {
        // Errors first: they are what the reader has to act on.
        all.sort_by_key(|d| !d.is_error());
        return Err(Diagnostics(all));
    }
    Ok(LoadedConfig {
        value: loaded.value,
        config,
        warnings: all,
        files: loaded.files,
    })
}

/// Validates a configuration given as JSON (e.g. posted to the admin API);
/// diagnostics name `origin` as their file.
pub fn from_json(value: serde_json::Value, origin: &Path) -> Result<LoadedConfig, Diagnostics> {
    if !value.is_object() {
        return Err(Diagnostics(vec![Diagnostic::error(
            "",
            "",
            "the configuration must be a JSON object",
        )
        .in_file(origin)]));
    }
    let (config, mut diags) = model::from_value(&value);
    diags.extend(validate::validate(&config));
    let all: Vec<Diagnostic> = diags.into_iter().map(|d| d.in_file(origin)).collect();
    if all.iter().any(Diagnostic::is_error) {
        let mut all = all;
        all.sort_by_key(|d| !d.is_error());
        return Err(Diagnostics(all));
    }
    Ok(LoadedConfig {
        value,
        config,
        warnings: all,
        files: vec![origin.to_path_buf()],
    })
}

/// The route table of a validated configuration.
pub fn route_table(config: &FileConfiguration) -> RouteTable {
    let clamp = |p: i64| p.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    let routes = config
        .routes
        .iter()
        .map(|r| UpstreamSpec {
            template: r.upstream_path_template.clone().unwrap_or_default(),
            methods: r.upstream_http_method.clone(),
            host: r.upstream_host.clone().filter(|h| !h.is_empty()),
            header_templates: r.upstream_header_templates.clone(),
            case_sensitive: r.route_is_case_sensitive,
            priority: clamp(r.priority),
        })
        .collect();
    let aggregates = config
        .aggregates
        .iter()
        .map(|a| UpstreamSpec {
            template: a.upstream_path_template.clone().unwrap_or_default(),
            methods: a.upstream_http_method.clone(),
            host: a.upstream_host.clone().filter(|h| !h.is_empty()),
            header_templates: a.upstream_header_templates.clone(),
            case_sensitive: a.route_is_case_sensitive,
            priority: clamp(a.priority),
        })
        .collect();
    RouteTable::new(routes, aggregates)
}

/// Which file each route and aggregate came from, so a diagnostic about
/// `Routes[42]` of a merged folder names the file that route is written in.
struct Origins {
    whole: PathBuf,
    routes: Vec<PathBuf>,
    aggregates: Vec<PathBuf>,
}

impl Origins {
    fn of(path: &Path, files: &[PathBuf], environment: Option<&str>) -> Origins {
        let mut origins = Origins {
            whole: files.first().cloned().unwrap_or_else(|| path.to_path_buf()),
            routes: Vec::new(),
            aggregates: Vec::new(),
        };
        if !path.is_dir() {
            return origins;
        }
        origins.whole = path.to_path_buf();
        // A merged folder concatenates each file's arrays in merge order, so the
        // counts per file give each index its file back.
        for file in files {
            let Ok(bytes) = std::fs::read(file) else {
                continue;
            };
            let Ok(value) = read::parse(&bytes, file) else {
                continue;
            };
            // The merge reads the first spelling of each section only.
            let count = |names: &[&str]| -> usize {
                value.as_object().map_or(0, |m| {
                    names
                        .iter()
                        .filter_map(|n| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)))
                        .filter_map(|(_, v)| v.as_array())
                        .map(Vec::len)
                        .sum()
                })
            };
            // The environment file is laid over the merged routes by index; it adds none.
            let overlay_name = format!("ocelot.{}.json", environment.unwrap_or("Development"));
            if file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case(&overlay_name))
            {
                continue;
            }
            origins.routes.extend(std::iter::repeat_n(
                file.clone(),
                count(&["Routes", "ReRoutes"]),
            ));
            origins
                .aggregates
                .extend(std::iter::repeat_n(file.clone(), count(&["Aggregates"])));
        }
        origins
    }

    fn attach(&self, d: Diagnostic) -> Diagnostic {
        if d.file.is_some() {
            return d;
        }
        let indexed = |prefix: &str, files: &[PathBuf]| -> Option<PathBuf> {
            let rest = d.location.strip_prefix(prefix)?;
            let index: usize = rest.split(']').next()?.parse().ok()?;
            files.get(index).cloned()
        };
        let file = indexed("Routes[", &self.routes)
            .or_else(|| indexed("Aggregates[", &self.aggregates))
            .unwrap_or_else(|| self.whole.clone());
        d.in_file(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ocelot-corpus")
    }

    #[test]
    fn the_abp_split_folder_loads_like_its_merged_file() {
        let root = corpus().join("abp-next-admin");
        let split = load(&root.join("split-OcelotConfig"), None).expect("split folder loads");
        let merged = load(&root.join("merged/ocelot.json"), None).expect("merged file loads");
        assert_eq!(split.config.routes.len(), 60);
        assert_eq!(split.config.aggregates.len(), 5);
        assert_eq!(merged.config.routes.len(), 60);
        // Field-by-field equality is merge.rs's test; here the loaded routes must
        // agree on what routing uses. The merged file was written one commit
        // later, after the files route lost its doubled `/api/api/` prefix.
        let shape = |r: &crate::model::FileRoute| {
            let methods: Vec<String> = r
                .upstream_http_method
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (
                r.upstream_path_template.clone(),
                r.downstream_path_template.clone(),
                methods,
                r.downstream_host_and_ports.clone(),
                r.key.clone(),
            )
        };
        let merged_shapes: Vec<_> = merged.config.routes.iter().map(shape).collect();
        let differing: Vec<_> = split
            .config
            .routes
            .iter()
            .map(shape)
            .filter(|s| !merged_shapes.contains(s))
            .collect();
        assert_eq!(differing.len(), 1, "{differing:#?}");
        assert_eq!(
            differing[0].0.as_deref(),
            Some("/api/api/files/{everything}")
        );
        let aggregate_keys = |c: &crate::model::FileConfiguration| -> Vec<_> {
            c.aggregates
                .iter()
                .map(|a| {
                    (
                        a.upstream_path_template.clone(),
                        a.route_keys.clone(),
                        a.aggregator.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(
            aggregate_keys(&split.config),
            aggregate_keys(&merged.config)
        );
        assert_eq!(route_table(&split.config).len(), 65);
    }

    #[test]
    fn errors_in_a_folder_name_the_file_of_the_route() {
        let dir = std::env::temp_dir().join(format!("ocelot-origins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = r#"{"Routes":[{"UpstreamPathTemplate":"/a","DownstreamPathTemplate":"/a","DownstreamHostAndPorts":[{"Host":"h","Port":1}]}]}"#;
        let bad = r#"{"Routes":[{"UpstreamPathTemplate":"/b","DownstreamPathTemplate":"/b","DownstreamHostAndPorts":[{"Host":"h","Port":0}]}]}"#;
        std::fs::write(dir.join("ocelot.a.json"), good).expect("write");
        std::fs::write(dir.join("ocelot.b.json"), bad).expect("write");
        let err = load(&dir, None).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("ocelot.b.json: Routes[1] (/b): DownstreamHostAndPorts[0].Port: 0 is not a port number"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
