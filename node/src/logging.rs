//! The replica's log: the `[log]` table of `node.toml`, the `run` flags that override it, and
//! the subscriber that writes every line to stderr, as text or as one JSON object per line.
//!
//! The filter is the first of: `--log-level`, `RUST_LOG`, `log.level`, `info`. Every line names
//! the replica (`replica{id=N}` in text, `"replica":N` in JSON) once the configuration is read.

use std::io::IsTerminal;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use pbft_core::messages::ReplicaId;

/// How each line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `replica`), for log
    /// collectors.
    Json,
}

/// The `[log]` table of `node.toml`. Absent fields take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A filter in `RUST_LOG`'s syntax: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// directives such as `info,pbft_core=debug`. Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// Checks that `level` is a valid filter; the error says why not.
    pub fn check(&self) -> Result<(), String> {
        parse_filter(&self.level).map(|_| ())
    }
}

fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("{directives:?} is not a log filter: {e}"))
}

/// The replica id shown on every line, once the configuration is loaded.
static REPLICA_ID: OnceLock<ReplicaId> = OnceLock::new();

/// Names `id` on every line from now on.
pub fn set_replica_id(id: ReplicaId) {
    let _ = REPLICA_ID.set(id);
}

/// Starts logging to stderr. `level` is the `--log-level` flag, if given. Fails, naming the
/// source, when the chosen filter does not parse.
pub fn init(config: &LogConfig, level: Option<&str>) -> Result<(), String> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (source, directives) = match (level, env) {
        (Some(level), _) => ("--log-level", level.to_string()),
        (None, Some(env)) => ("RUST_LOG", env),
        (None, None) => ("log.level", config.level.clone()),
    };
    let filter = parse_filter(&directives).map_err(|e| format!("{source}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_ansi(ansi)
                .event_format(WithReplicaId {
                    json: false,
                    inner: tracing_subscriber::fmt::format()
                        .with_ansi(ansi)
                        .without_time(),
                })
                .init();
        }
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(WithReplicaId {
                json: true,
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(false),
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .init(),
    }
    Ok(())
}

/// Names the replica on every line: `replica{id=N}` after the timestamp of a text line, or
/// `"replica":N` as the first member of a JSON line. A span would not do: tasks the runtime
/// spawns do not inherit it, and their lines would lose the id.
struct WithReplicaId<F> {
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithReplicaId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let id = REPLICA_ID.get();
        if self.json {
            let mut line = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            return match (id, line.strip_prefix('{')) {
                (Some(id), Some(rest)) => write!(writer, "{{\"replica\":{id},{rest}"),
                _ => writer.write_str(&line),
            };
        }
        SystemTime.format_time(&mut writer)?;
        match id {
            Some(id) => write!(writer, " replica{{id={id}}} ")?,
            None => writer.write_char(' ')?,
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse_and_nonsense_is_refused() {
        for good in [
            "info",
            "debug",
            "warn,pbft_core=debug",
            "pbft_node::runtime=trace",
        ] {
            let config = LogConfig {
                level: good.into(),
                ..LogConfig::default()
            };
            assert_eq!(config.check(), Ok(()), "{good}");
        }
        let bad = LogConfig {
            level: "info,=[".into(),
            ..LogConfig::default()
        };
        let error = bad.check().unwrap_err();
        assert!(error.contains("is not a log filter"), "{error}");
    }

    #[test]
    fn the_format_is_read_from_toml() {
        let config: LogConfig = toml::from_str("format = \"json\"").unwrap();
        assert_eq!(config.format, LogFormat::Json);
        assert_eq!(config.level, "info");
        assert!(toml::from_str::<LogConfig>("format = \"xml\"").is_err());
    }
}
