//! Loading a configuration: defaults, then the file, then `SHOAL_*` variables
//! (figment); refusing what this version does not know (unknown keys in the file,
//! unknown `SHOAL_*` variables, each with the closest known name); figment's
//! errors rendered with the key and file they concern.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::{Config, ConfigError};

impl Config {
    /// Defaults, then `file` (if any), then `SHOAL_*` environment variables.
    /// Flags are layered on top by the caller with [`Config::figment`].
    /// Refuses a key or variable this version does not know.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            check_file(path)?;
            fig = fig.merge(Toml::file_exact(path));
        }
        check_env(
            std::env::vars_os().filter_map(|(k, v)| {
                Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
            }),
        )?;
        Ok(fig.merge(
            Env::prefixed("SHOAL_")
                .filter(|k| env_is_config(&format!("SHOAL_{k}")))
                .split("__"),
        ))
    }

    /// Extracts and validates a configuration from a figment. `file` is the
    /// configuration file as the user gave it, for messages.
    pub fn from_figment(fig: Figment, file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| render(&e, file))?;
        if super::topology::url_given(&fig)
            && config.redis.topology() != super::Topology::Standalone
        {
            return Err(ConfigError::Invalid {
                key: "redis.url".into(),
                problem: format!(
                    "is set together with [redis.{}]: configure exactly one of redis.url, \
                     [redis.sentinel] and [redis.cluster]",
                    config.redis.topology().as_str()
                ),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Loads defaults + file + environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(file)?, file)
    }
}

/// where an app's client connects) or by the test and bench harness.
/// `SHOAL_*` variables that are not configuration keys: read by shoald itself
/// (the config file, the log and span filters), by applications (`SHOAL_SOCKET`,
pub const ENV_NOT_CONFIG: &[&str] = &["SHOAL_CONFIG", "SHOAL_LOG", "SHOAL_TRACE", "SHOAL_SOCKET"];

/// Prefixes of `SHOAL_*` variables that are not configuration keys.
pub const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["SHOAL_TEST_", "SHOAL_BENCH_"];

/// Keys that moved: the old name gets the new one as its hint.
const MOVED: &[(&str, &str)] = &[("telemetry.log_format", "log.format")];

pub(super) fn env_is_config(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    upper.starts_with("SHOAL_")
        && !ENV_NOT_CONFIG.contains(&upper.as_str())
        && !ENV_NOT_CONFIG_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// The key tree of the configuration: every section and key this version knows.
pub(super) fn schema() -> serde_json::Value {
    // The optional sections are absent from the defaults but known keys.
    let mut c = Config::default();
    c.redis.sentinel = Some(super::SentinelConfig::default());
    c.redis.cluster = Some(super::ClusterConfig::default());
    serde_json::to_value(c).unwrap_or_default()
}

/// Below this path names are the user's (policy names, tenant keys).
pub(super) fn is_free_form(path: &[String]) -> bool {
    path.len() >= 2 && path[0] == "ratelimit" && path[1] == "policies"
}

/// Every dotted path of `schema` (sections and keys), with whether it is a section.
pub(super) fn known_paths(schema: &serde_json::Value) -> Vec<(String, bool)> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, bool)>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push((path.clone(), v.is_object()));
                if path != "ratelimit.policies" {
                    walk(v, &path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The known dotted path closest to `key`, if it is close enough to be a typo.
pub(super) fn closest(key: &str, known: &[(String, bool)]) -> Option<(String, bool)> {
    if let Some((_, to)) = MOVED.iter().find(|(from, _)| *from == key) {
        return Some((to.to_string(), false));
    }
    known
        .iter()
        .map(|(p, section)| (edit_distance(key, p), p, *section))
        .filter(|(d, _, _)| *d <= 3 && *d * 3 <= key.len().max(3))
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, p, s)| (p.clone(), s))
}

/// How a known dotted path is written in a TOML file.
pub(super) fn as_toml(path: &str, section: bool) -> String {
    match (section, path.rsplit_once('.')) {
        (true, _) => format!("[{path}]"),
        (false, Some((table, key))) => format!("`{key}` in [{table}]"),
        (false, None) => format!("`{path}`"),
    }
}

/// Keys of `table` (at `path`) that `schema` does not know.
pub(super) fn unknown_in(
    table: &toml::Table,
    schema: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    if is_free_form(path) {
        return;
    }
    for (k, v) in table {
        path.push(k.clone());
        match schema.get(k) {
            None => out.push(path.join(".")),
            Some(s) => {
                if let toml::Value::Table(t) = v {
                    unknown_in(t, s, path, out);
                }
            }
        }
        path.pop();
    }
}

/// The first key of the TOML file at `file` that this version does not know.
/// A file that does not parse is left to the loader, which says where.
pub(super) fn check_file(file: &Path) -> Result<(), ConfigError> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let schema = schema();
    let mut unknown = Vec::new();
    unknown_in(&table, &schema, &mut Vec::new(), &mut unknown);
    let Some(key) = unknown.into_iter().next() else {
        return Ok(());
    };
    let hint = closest(&key, &known_paths(&schema))
        .map(|(p, section)| format!(" (did you mean {}?)", as_toml(&p, section)))
        .unwrap_or_default();
    Err(ConfigError::UnknownKey {
        key,
        file: file.display().to_string(),
        hint,
    })
}

/// The environment variable that sets dotted `key`.
pub fn env_name(key: &str) -> String {
    format!("SHOAL_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The first `SHOAL_*` variable of `vars` that names no configuration key.
pub fn check_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let schema = schema();
    let known = known_paths(&schema);
    for (var, _) in vars {
        if !env_is_config(&var) {
            continue;
        }
        let path: Vec<String> = var["SHOAL_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let mut node = &schema;
        let mut ok = true;
        for (i, seg) in path.iter().enumerate() {
            if is_free_form(&path[..i]) {
                break;
            }
            match node.get(seg) {
                Some(n) => node = n,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            continue;
        }
        let leaves: Vec<(String, bool)> = known
            .iter()
            .filter(|(_, section)| !section)
            .map(|(p, _)| (env_name(p), false))
            .collect();
        let hint = closest(&var.to_ascii_uppercase(), &leaves)
            .map(|(v, _)| format!(" (did you mean {v}?)"))
            .unwrap_or_else(|| {
                " (configuration variables are SHOAL_<SECTION>__<KEY>, e.g. SHOAL_REDIS__URL)"
                    .into()
            });
        return Err(ConfigError::UnknownEnv { var, hint });
    }
    Ok(())
}

/// A loader error in the user's terms: the key as written (no profile name),
/// where it came from (the file as given, the variable, the flag) and what is wrong.
pub(super) fn render(e: &figment::Error, file: Option<&Path>) -> ConfigError {
    let key = e.path.join(".");
    let source = match e.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => {
                let shown = file.filter(|f| p.ends_with(f) || *f == p.as_path());
                format!(" in {}", shown.unwrap_or(p).display())
            }
            _ if m.name.contains("environment") => format!(" from {}", env_name(&key)),
            _ if m.name.contains("erialized") => " from a command-line flag".to_string(),
            _ => String::new(),
        },
        None => String::new(),
    };
    if key.is_empty() {
        ConfigError::Parse(format!("{}{source}", e.kind))
    } else {
        ConfigError::Parse(format!("`{key}`{source}: {}", e.kind))
    }
}
