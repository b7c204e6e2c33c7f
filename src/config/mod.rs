//! Configuration: the TOML of SPEC §5.2 parsed into typed, validated settings.
//!
//! Parsing is strict (unknown keys and wrong types are errors) and every error names the file,
//! the key (`campaigns[0].line`) and why. Cross-references (campaign → line → portfolio / time
//! group, lists) are checked after parsing. Secrets are never in the file: the file names
//! environment variables, read on demand into [`Secret`], which never prints its value.

use crate::domain::localtime::CountryZones;
use crate::domain::timegroup::{self, DayWindow, TimeSpecError};
use crate::domain::{Tier, TimeGroup};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The example configuration shipped with the project; `demo` runs on it.
pub const EXAMPLE_CONFIG: &str = include_str!("../../campaigns.example.toml");

pub const DEFAULT_DATABASE_URL: &str = "sqlite://tiercast.db";

/// A configuration problem: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{location}: {key}: {message}", location = .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// A secret read from the environment. Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written (serde), strict.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    import: RawImport,
    #[serde(default)]
    inbox: RawInbox,
    #[serde(default)]
    portfolios: Vec<RawPortfolio>,
    #[serde(default)]
    lines: Vec<RawLine>,
    #[serde(default)]
    time_groups: Vec<RawTimeGroup>,
    #[serde(default)]
    campaigns: Vec<RawCampaign>,
    /// Country (ISO alpha-2) → zone, for `local_time` campaigns in countries with several zones.
    #[serde(default)]
    country_zones: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    database_url: Option<String>,
    admin_token_env: Option<String>,
    reconcile_after: Option<toml::Spanned<String>>,
    shutdown_grace: Option<String>,
    lease_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImport {
    default_country: Option<String>,
    batch_size: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInbox {
    opt_out_keywords: Option<Vec<String>>,
    opt_out_confirmation: Option<String>,
    opt_in_keywords: Option<Vec<String>>,
    opt_in_confirmation: Option<String>,
    reply_lookback: Option<String>,
    handoff_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortfolio {
    name: String,
    tier: Option<String>,
    upgrade_delay: Option<String>,
    tier_refresh: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    name: String,
    provider: String,
    portfolio: Option<String>,
    tier: Option<String>,
    phone_number_id: Option<String>,
    waba_id: Option<String>,
    api_base: Option<String>,
    access_token_env: Option<String>,
    app_secret_env: Option<String>,
    verify_token_env: Option<String>,
    throughput_mps: Option<u32>,
    follow_throughput_upgrades: Option<bool>,
    max_in_flight: Option<usize>,
    request_timeout: Option<toml::Spanned<String>>,
    time_group: Option<String>,
    out_of_hours_text: Option<String>,
    recontact_template: Option<toml::Spanned<RawTemplateRef>>,
    recontact_variables: Option<BTreeMap<String, String>>,
    // Gupshup
    source: Option<String>,
    app_name: Option<String>,
    app_id: Option<String>,
    api_key_env: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_allow_ips: Option<Vec<String>>,
    webhook_auth: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawTemplateRef {
    name: String,
    language: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: String,
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeGroup {
    name: String,
    timezone: String,
    #[serde(default)]
    windows: Vec<RawWindow>,
    #[serde(default)]
    breaks: Vec<RawWindow>,
    #[serde(default)]
    holidays: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    outcome: Option<String>,
    action: Option<String>,
}

/// TOML lets people write a datetime bare or quoted; accept both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDateTime {
    Text(String),
    Toml(toml::value::Datetime),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: String,
    line: String,
    template: RawTemplateRef,
    lists: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    require_opt_in: Option<bool>,
    start_at: Option<RawDateTime>,
    end_at: Option<RawDateTime>,
    time_group: Option<String>,
    response_timeout: Option<String>,
    #[serde(default)]
    answers: BTreeMap<String, RawAnswer>,
    max_attempts: Option<u32>,
    auto_retry: Option<bool>,
    retry_backoff: Option<String>,
    retry_cron: Option<String>,
    recontact_template: Option<toml::Spanned<RawTemplateRef>>,
    weight: Option<u32>,
    local_time: Option<bool>,
    ramp: Option<bool>,
    max_failure_rate: Option<f64>,
    pause_after_same_error: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Validated settings.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the settings came from, for error messages.
    pub source: String,
    pub server: Server,
    pub import: Import,
    pub inbox: Inbox,
    pub portfolios: Vec<Portfolio>,
    pub lines: Vec<Line>,
    pub time_groups: BTreeMap<String, TimeGroup>,
    pub campaigns: Vec<Campaign>,
    /// Contacts' own zones for `local_time` campaigns.
    pub country_zones: CountryZones,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub database_url: String,
    pub admin_token_env: Option<String>,
    pub reconcile_after: Duration,
    /// Where `reconcile_after` is written, for errors found after parsing.
    pub(crate) reconcile_after_line: Option<usize>,
    pub shutdown_grace: Duration,
    /// How long a daemon's hold on a line (or the singleton duties) lasts without renewal;
    /// another daemon takes over after it expires.
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Import {
    pub default_country: Option<String>,
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
pub struct Inbox {
    pub opt_out_keywords: Vec<String>,
    pub opt_out_confirmation: Option<String>,
    /// Whole messages that lift an opt-out the contact made (keyword, answer) or Meta made for
    /// it; an admin's opt-out stays.
    pub opt_in_keywords: Vec<String>,
    pub opt_in_confirmation: Option<String>,
    /// How long after its row closed a reply that quotes nothing still belongs to that
    /// campaign (a late reply keeps its campaign, so recontact can use its template).
    pub reply_lookback: Duration,
    pub handoff_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Portfolio {
    pub name: String,
    pub tier: Tier,
    /// How long Meta takes to raise the limit once the portfolio qualifies (6 h since Oct
    /// 2025; 24 h before).
    pub upgrade_delay: Duration,
    /// How often the daemon reads the limit from Meta's API (besides at start).
    pub tier_refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Meta,
    Gupshup,
    Simulator,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Meta => "meta",
            ProviderKind::Gupshup => "gupshup",
            ProviderKind::Simulator => "simulator",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    pub language: String,
}

/// A line's recontact template with the variable mapping that fills it, and where the file
/// names it (errors found once the template is known still point there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRecontact {
    pub template: TemplateRef,
    pub variables: BTreeMap<String, String>,
    /// `lines[0].recontact_template`
    pub key: String,
    /// Line of the file, when known.
    pub file_line: Option<usize>,
}

/// Requests in flight a line allows unless configured: half a second of its top rate, at
/// least 64. Rate = requests in flight / answer time, and Meta answers in up to 250 ms at the
/// median (1 % over a second), so 64 would hold a line upgraded to 1,000 msg/s near 250 msg/s;
/// half a second covers answers twice the median. The pacer, not this, keeps the rate.
fn default_in_flight(throughput_mps: u32, follows_upgrades: bool) -> usize {
    let top = if follows_upgrades {
        throughput_mps.max(1000)
    } else {
        throughput_mps
    };
    (top as usize).div_ceil(2).max(64)
}

#[derive(Debug, Clone)]
pub struct Line {
    /// `lines[3]`: the key prefix, so errors found later (a missing secret) still name it.
    pub key: String,
    pub name: String,
    pub provider: ProviderKind,
    pub portfolio: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub api_base: Option<String>,
    pub access_token_env: Option<String>,
    pub app_secret_env: Option<String>,
    pub verify_token_env: Option<String>,
    pub throughput_mps: u32,
    /// Raise the line to 1,000 msg/s when Meta announces a THROUGHPUT_UPGRADE.
    pub follow_throughput_upgrades: bool,
    pub max_in_flight: usize,
    /// Whole provider request, sending to last body byte; past it the outcome is unknown.
    pub request_timeout: Duration,
    /// Where `request_timeout` is written, for errors found after parsing.
    pub(crate) request_timeout_line: Option<usize>,
    pub time_group: Option<String>,
    pub out_of_hours_text: Option<String>,
    pub recontact: Option<LineRecontact>,
    pub source: Option<String>,
    pub app_name: Option<String>,
    pub app_id: Option<String>,
    pub api_key_env: Option<String>,
    /// Gupshup signs nothing: the shared secret its callbacks must carry (header or path).
    pub webhook_secret_env: Option<String>,
    /// Gupshup callbacks are only accepted from these networks (empty: from anywhere).
    pub webhook_allow_ips: Vec<ipnet::IpNet>,
    /// `webhook_auth = "none"`: the operator chose to accept this Gupshup line's callbacks
    /// from anyone (no secret, no allow-list). Warned about at every start.
    pub webhook_unauthenticated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAction {
    Close,
    Handoff,
    OptOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The key as written (`"CALL ME"`).
    pub key: String,
    /// The key normalised for matching (`"call me"`).
    pub normalized: String,
    /// What `answers` counts in status output; defaults to the key.
    pub outcome: String,
    pub action: AnswerAction,
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub key: String,
    pub name: String,
    pub line: String,
    pub template: TemplateRef,
    pub lists: Vec<String>,
    pub variables: BTreeMap<String, String>,
    pub require_opt_in: bool,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub time_group: Option<String>,
    pub response_timeout: Duration,
    pub answers: Vec<Answer>,
    pub max_attempts: u32,
    pub auto_retry: bool,
    pub retry_backoff: Duration,
    pub retry_cron: Option<cron::Schedule>,
    pub recontact_template: Option<TemplateRef>,
    /// The file's line of `recontact_template`, for errors found once the template is known.
    pub recontact_file_line: Option<usize>,
    pub weight: u32,
    pub local_time: bool,
    pub ramp: bool,
    /// Pause when more than this share of the recent settled sends failed (`brakes`).
    pub max_failure_rate: Option<f64>,
    /// Pause when the same request-shaped error code (`ErrorClass::Request`) met this many
    /// distinct contacts in a row; a shorter run closes only those contacts `failed`.
    pub pause_after_same_error: u32,
}

pub const DEFAULT_OPT_OUT_KEYWORDS: [&str; 5] = ["STOP", "UNSUBSCRIBE", "BAJA", "SAIR", "PARAR"];
pub const DEFAULT_OPT_IN_KEYWORDS: [&str; 4] = ["START", "UNSTOP", "VOLTAR", "ALTA"];
const DEFAULT_REPLY_LOOKBACK: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_UPGRADE_DELAY: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_TIER_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_THROUGHPUT_MPS: u32 = 80;
/// A provider request taking longer than this has an unknown outcome.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_META_API_BASE: &str = "https://graph.facebook.com/v23.0";
const DEFAULT_GUPSHUP_API_BASE: &str = "https://api.gupshup.io";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The settings when no config file exists: SQLite in the working directory, nothing else.
    pub fn empty() -> Config {
        Config::parse("", "(defaults)").expect("empty config is valid")
    }

    /// Parses and validates `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|span| line_at(text, span.start));
            ConfigError {
                file: source.to_string(),
                line,
                key: if key == "." { "(document)".into() } else { key },
                message: inner.message().trim().to_string(),
            }
        })?;
        Validator { source, text }.validate(raw)
    }

    pub fn line(&self, name: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.name == name)
    }

    pub fn campaign(&self, name: &str) -> Option<&Campaign> {
        self.campaigns.iter().find(|c| c.name == name)
    }

    pub fn portfolio(&self, name: &str) -> Option<&Portfolio> {
        self.portfolios.iter().find(|p| p.name == name)
    }

    /// The time group a campaign sends in: its own, else its line's, else always open.
    pub fn time_group_for(&self, campaign: &Campaign) -> TimeGroup {
        campaign
            .time_group
            .as_ref()
            .or_else(|| {
                self.line(&campaign.line)
                    .and_then(|l| l.time_group.as_ref())
            })
            .and_then(|name| self.time_groups.get(name))
            .cloned()
            .unwrap_or_else(|| TimeGroup::always(chrono_tz::UTC))
    }

    /// Reads the environment variable a key names, e.g. `lines[0].access_token_env`.
    pub fn secret(
        &self,
        owner_key: &str,
        field: &str,
        env_name: Option<&str>,
    ) -> Result<Secret, ConfigError> {
        let key = format!("{owner_key}.{field}");
        let var = env_name.ok_or_else(|| ConfigError {
            file: self.source.clone(),
            line: None,
            key: key.clone(),
            message: "is required for this provider".into(),
        })?;
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(ConfigError {
                file: self.source.clone(),
                line: None,
                key,
                message: format!("environment variable {var} is not set"),
            }),
        }
    }

    pub fn admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        match &self.server.admin_token_env {
            None => Ok(None),
            Some(var) => self
                .secret("server", "admin_token_env", Some(var))
                .map(Some),
        }
    }
}

struct Validator<'a> {
    source: &'a str,
    text: &'a str,
}

impl Validator<'_> {
    /// `inbox.opt_out_keywords` / `inbox.opt_in_keywords`: the defaults when absent; no
    /// keyword empty once normalised.
    fn keywords(
        &self,
        key: &str,
        value: Option<Vec<String>>,
        defaults: &[&str],
    ) -> Result<Vec<String>, ConfigError> {
        let words = value.unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect());
        for (i, w) in words.iter().enumerate() {
            if crate::domain::text::normalize(w).is_empty() {
                return Err(self.err(format!("{key}[{i}]"), "is empty"));
            }
        }
        Ok(words)
    }

    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v).map_err(|e| {
                self.err(
                    key,
                    format!("{v:?} is not a duration ({e}); use e.g. 30s, 5m, 4h, 2d"),
                )
            }),
        }
    }

    fn unique_names<'n>(
        &self,
        section: &str,
        names: impl Iterator<Item = &'n String>,
    ) -> Result<BTreeSet<String>, ConfigError> {
        let mut seen = BTreeSet::new();
        for (i, name) in names.enumerate() {
            if name.trim().is_empty() {
                return Err(self.err(format!("{section}[{i}].name"), "must not be empty"));
            }
            if !seen.insert(name.clone()) {
                return Err(self.err(
                    format!("{section}[{i}].name"),
                    format!("{name:?} is defined twice"),
                ));
            }
        }
        Ok(seen)
    }

    fn dangling(
        &self,
        key: String,
        kind: &str,
        name: &str,
        known: &BTreeSet<String>,
    ) -> ConfigError {
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none are defined".to_string()
        } else {
            format!("defined: {}", known.join(", "))
        };
        self.err(key, format!("{kind} {name:?} is not defined ({known})"))
    }

    fn country(&self, key: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
        match value {
            None => Ok(None),
            Some(c) => crate::domain::phone::parse_country(&c)
                .map(|_| Some(c.to_ascii_uppercase()))
                .map_err(|e| self.err(key, e.to_string())),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let import = Import {
            default_country: self.country("import.default_country", raw.import.default_country)?,
            batch_size: match raw.import.batch_size {
                Some(0) => return Err(self.err("import.batch_size", "must be at least 1")),
                Some(n) => n,
                None => 1000,
            },
        };
        let opt_out_keywords = self.keywords(
            "inbox.opt_out_keywords",
            raw.inbox.opt_out_keywords,
            &DEFAULT_OPT_OUT_KEYWORDS,
        )?;
        let opt_in_keywords = self.keywords(
            "inbox.opt_in_keywords",
            raw.inbox.opt_in_keywords,
            &DEFAULT_OPT_IN_KEYWORDS,
        )?;
        let normalize = crate::domain::text::normalize;
        if let Some((i, w)) = opt_in_keywords.iter().enumerate().find(|(_, w)| {
            opt_out_keywords
                .iter()
                .any(|o| normalize(o) == normalize(w))
        }) {
            return Err(self.err(
                format!("inbox.opt_in_keywords[{i}]"),
                format!("{w:?} is also an opt-out keyword"),
            ));
        }
        let inbox = Inbox {
            opt_out_keywords,
            opt_out_confirmation: raw.inbox.opt_out_confirmation,
            opt_in_keywords,
            opt_in_confirmation: raw.inbox.opt_in_confirmation,
            reply_lookback: self.duration(
                "inbox.reply_lookback",
                raw.inbox.reply_lookback.as_deref(),
                DEFAULT_REPLY_LOOKBACK,
            )?,
            handoff_url: raw.inbox.handoff_url,
        };

        let time_group_names =
            self.unique_names("time_groups", raw.time_groups.iter().map(|t| &t.name))?;
        let mut time_groups = BTreeMap::new();
        for (i, tg) in raw.time_groups.into_iter().enumerate() {
            time_groups.insert(tg.name.clone(), self.time_group(i, tg)?);
        }

        let mut portfolio_names =
            self.unique_names("portfolios", raw.portfolios.iter().map(|p| &p.name))?;
        let mut portfolios = Vec::new();
        for (i, p) in raw.portfolios.into_iter().enumerate() {
            let tier = self.tier(&format!("portfolios[{i}].tier"), p.tier.as_deref())?;
            let upgrade_delay = self.duration(
                &format!("portfolios[{i}].upgrade_delay"),
                p.upgrade_delay.as_deref(),
                DEFAULT_UPGRADE_DELAY,
            )?;
            let tier_refresh = self.duration(
                &format!("portfolios[{i}].tier_refresh"),
                p.tier_refresh.as_deref(),
                DEFAULT_TIER_REFRESH,
            )?;
            portfolios.push(Portfolio {
                name: p.name,
                tier,
                upgrade_delay,
                tier_refresh,
            });
        }

        let line_names = self.unique_names("lines", raw.lines.iter().map(|l| &l.name))?;
        let mut lines = Vec::new();
        for (i, l) in raw.lines.into_iter().enumerate() {
            let line = self.line(
                i,
                l,
                &mut portfolio_names,
                &mut portfolios,
                &time_group_names,
            )?;
            lines.push(line);
        }
        self.reconcile_outlasts_requests(&server, &lines)?;

        self.unique_names("campaigns", raw.campaigns.iter().map(|c| &c.name))?;
        let mut campaigns = Vec::new();
        for (i, c) in raw.campaigns.into_iter().enumerate() {
            campaigns.push(self.campaign(i, c, &line_names, &time_group_names)?);
        }

        Ok(Config {
            source: self.source.to_string(),
            server,
            import,
            inbox,
            portfolios,
            lines,
            time_groups,
            campaigns,
            country_zones: self.country_zones(raw.country_zones)?,
        })
    }

    fn country_zones(&self, raw: BTreeMap<String, String>) -> Result<CountryZones, ConfigError> {
        let mut zones = BTreeMap::new();
        for (country, zone) in raw {
            let key = format!("country_zones.{country}");
            let code = self.country(&key, Some(country))?.unwrap_or_default();
            let tz = timegroup::parse_timezone(&zone).map_err(|e| self.err(&key, e.to_string()))?;
            zones.insert(code, tz);
        }
        Ok(CountryZones::new(zones))
    }

    fn server(&self, raw: RawServer) -> Result<Server, ConfigError> {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = SocketAddr::from_str(listen_text).map_err(|_| {
            self.err(
                "server.listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let database_url = raw
            .database_url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(self.err(
                "server.database_url",
                "must start with sqlite: or postgres://",
            ));
        }
        Ok(Server {
            listen,
            database_url,
            admin_token_env: raw.admin_token_env,
            reconcile_after: self.duration(
                "server.reconcile_after",
                raw.reconcile_after.as_ref().map(|s| s.get_ref().as_str()),
                Duration::from_secs(600),
            )?,
            reconcile_after_line: raw
                .reconcile_after
                .as_ref()
                .map(|s| line_at(self.text, s.span().start)),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                Duration::from_secs(10),
            )?,
            lease_ttl: self.duration(
                "server.lease_ttl",
                raw.lease_ttl.as_deref(),
                Duration::from_secs(15),
            )?,
        })
    }

    /// An attempt whose answer is still on its way when `reconcile_after` ends is abandoned and
    /// sent again, so every line's request must end well before it.
    fn reconcile_outlasts_requests(
        &self,
        server: &Server,
        lines: &[Line],
    ) -> Result<(), ConfigError> {
        let Some(line) = lines
            .iter()
            .find(|l| l.request_timeout >= server.reconcile_after)
        else {
            return Ok(());
        };
        let (key, at) = match (server.reconcile_after_line, line.request_timeout_line) {
            (None, Some(at)) => (format!("{}.request_timeout", line.key), Some(at)),
            (at, _) => ("server.reconcile_after".to_string(), at),
        };
        Err(ConfigError {
            file: self.source.to_string(),
            line: at,
            key,
            message: format!(
                "server.reconcile_after ({}) must be longer than {}.request_timeout ({}) of line {:?}: \
                 a send still waiting for its answer would be given up and sent again",
                humantime::format_duration(server.reconcile_after),
                line.key,
                humantime::format_duration(line.request_timeout),
                line.name,
            ),
        })
    }

    fn tier(&self, key: &str, value: Option<&str>) -> Result<Tier, ConfigError> {
        value
            .unwrap_or("250")
            .parse()
            .map_err(|e: crate::domain::tier::TierError| self.err(key, e.to_string()))
    }

    fn time_group(&self, i: usize, raw: RawTimeGroup) -> Result<TimeGroup, ConfigError> {
        let key = format!("time_groups[{i}]");
        let spec = |e: TimeSpecError, k: String| self.err(k, e.to_string());
        let zone = timegroup::parse_timezone(&raw.timezone)
            .map_err(|e| spec(e, format!("{key}.timezone")))?;
        let windows = |list: Vec<RawWindow>, field: &str| -> Result<Vec<DayWindow>, ConfigError> {
            list.into_iter()
                .enumerate()
                .map(|(j, w)| {
                    DayWindow::parse(&w.days, &w.from, &w.to)
                        .map_err(|e| spec(e, format!("{key}.{field}[{j}]")))
                })
                .collect()
        };
        if raw.windows.is_empty() {
            return Err(self.err(
                format!("{key}.windows"),
                "needs at least one window; a group that never opens would stall every campaign",
            ));
        }
        let open = windows(raw.windows, "windows")?;
        let breaks = windows(raw.breaks, "breaks")?;
        let holidays = raw
            .holidays
            .iter()
            .enumerate()
            .map(|(j, d)| {
                timegroup::parse_date(d).map_err(|e| spec(e, format!("{key}.holidays[{j}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TimeGroup::new(raw.name, zone, open, breaks, holidays))
    }

    fn line(
        &self,
        i: usize,
        raw: RawLine,
        portfolio_names: &mut BTreeSet<String>,
        portfolios: &mut Vec<Portfolio>,
        time_groups: &BTreeSet<String>,
    ) -> Result<Line, ConfigError> {
        let key = format!("lines[{i}]");
        let provider = match raw.provider.as_str() {
            "meta" => ProviderKind::Meta,
            "gupshup" => ProviderKind::Gupshup,
            "simulator" => ProviderKind::Simulator,
            other => {
                return Err(self.err(
                    format!("{key}.provider"),
                    format!("unknown provider {other:?} (use meta, gupshup or simulator)"),
                ))
            }
        };
        let portfolio = match raw.portfolio {
            Some(p) => {
                if raw.tier.is_some() {
                    return Err(self.err(
                        format!("{key}.tier"),
                        "set the tier on the portfolio, not on a line that names one",
                    ));
                }
                if !portfolio_names.contains(&p) {
                    return Err(self.dangling(
                        format!("{key}.portfolio"),
                        "portfolio",
                        &p,
                        portfolio_names,
                    ));
                }
                p
            }
            None => {
                // A line without a portfolio has one of its own, named after it.
                let tier = self.tier(&format!("{key}.tier"), raw.tier.as_deref())?;
                if !portfolio_names.insert(raw.name.clone()) {
                    return Err(self.err(
                        format!("{key}.portfolio"),
                        format!(
                            "a portfolio named {:?} exists; name it explicitly",
                            raw.name
                        ),
                    ));
                }
                portfolios.push(Portfolio {
                    name: raw.name.clone(),
                    tier,
                    upgrade_delay: DEFAULT_UPGRADE_DELAY,
                    tier_refresh: DEFAULT_TIER_REFRESH,
                });
                raw.name.clone()
            }
        };
        if let Some(tg) = &raw.time_group {
            if !time_groups.contains(tg) {
                return Err(self.dangling(
                    format!("{key}.time_group"),
                    "time group",
                    tg,
                    time_groups,
                ));
            }
        }
        let require = |field: &str, value: &Option<String>| -> Result<(), ConfigError> {
            match value {
                Some(v) if !v.trim().is_empty() => Ok(()),
                _ => Err(self.err(
                    format!("{key}.{field}"),
                    format!("is required for a {} line", provider.as_str()),
                )),
            }
        };
        match provider {
            ProviderKind::Meta => {
                for (field, value) in [
                    ("phone_number_id", &raw.phone_number_id),
                    ("waba_id", &raw.waba_id),
                    ("access_token_env", &raw.access_token_env),
                    ("app_secret_env", &raw.app_secret_env),
                ] {
                    require(field, value)?;
                }
            }
            ProviderKind::Gupshup => {
                for (field, value) in [
                    ("source", &raw.source),
                    ("app_name", &raw.app_name),
                    ("app_id", &raw.app_id),
                    ("api_key_env", &raw.api_key_env),
                ] {
                    require(field, value)?;
                }
                if let Some(source) = &raw.source {
                    let digits = source.trim().trim_start_matches('+');
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(self.err(
                            format!("{key}.source"),
                            format!("{source:?} is not a phone number in digits (E.164 without +)"),
                        ));
                    }
                }
            }
            ProviderKind::Simulator => {}
        }
        let throughput_mps = raw.throughput_mps.unwrap_or(DEFAULT_THROUGHPUT_MPS);
        if throughput_mps == 0 {
            return Err(self.err(format!("{key}.throughput_mps"), "must be at least 1"));
        }
        let api_base = raw.api_base.or_else(|| match provider {
            ProviderKind::Meta => Some(DEFAULT_META_API_BASE.to_string()),
            ProviderKind::Gupshup => Some(DEFAULT_GUPSHUP_API_BASE.to_string()),
            ProviderKind::Simulator => None,
        });
        let gupshup_only = [
            ("webhook_secret_env", raw.webhook_secret_env.is_some()),
            ("webhook_allow_ips", raw.webhook_allow_ips.is_some()),
            ("webhook_auth", raw.webhook_auth.is_some()),
        ];
        if provider != ProviderKind::Gupshup {
            if let Some((field, _)) = gupshup_only.iter().find(|(_, set)| *set) {
                return Err(self.err(
                    format!("{key}.{field}"),
                    "only applies to gupshup lines (Meta webhooks are signed with app_secret_env)",
                ));
            }
        }
        let mut webhook_allow_ips = Vec::new();
        for (j, text) in raw.webhook_allow_ips.iter().flatten().enumerate() {
            webhook_allow_ips.push(parse_ip_net(text).ok_or_else(|| {
                self.err(
                    format!("{key}.webhook_allow_ips[{j}]"),
                    format!("{text:?} is not an IP address or network (e.g. 203.0.113.7 or 203.0.113.0/24)"),
                )
            })?);
        }
        let webhook_unauthenticated = self.gupshup_webhook_auth(
            &key,
            provider,
            raw.webhook_auth.as_deref(),
            raw.webhook_secret_env.is_some(),
            !webhook_allow_ips.is_empty(),
        )?;
        if let Some(base) = &api_base {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(self.err(
                    format!("{key}.api_base"),
                    format!("{base:?} is not an http(s) URL"),
                ));
            }
        }
        let request_timeout = self.duration(
            &format!("{key}.request_timeout"),
            raw.request_timeout.as_ref().map(|s| s.get_ref().as_str()),
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let request_timeout_line = raw
            .request_timeout
            .as_ref()
            .map(|s| line_at(self.text, s.span().start));
        if request_timeout.is_zero() {
            return Err(self.err(format!("{key}.request_timeout"), "must be above zero"));
        }
        let recontact_variables = raw.recontact_variables.unwrap_or_default();
        for (var, source) in &recontact_variables {
            crate::domain::template::parse_source(source)
                .map_err(|why| self.err(format!("{key}.recontact_variables.{var}"), why))?;
        }
        let recontact = match raw.recontact_template {
            Some(spanned) => Some(LineRecontact {
                file_line: Some(line_at(self.text, spanned.span().start)),
                template: template_ref(spanned.into_inner()),
                variables: recontact_variables,
                key: format!("{key}.recontact_template"),
            }),
            None if !recontact_variables.is_empty() => {
                return Err(self.err(
                    format!("{key}.recontact_variables"),
                    "fills a recontact template, but the line has no recontact_template",
                ))
            }
            None => None,
        };
        Ok(Line {
            phone_number_id: raw
                .phone_number_id
                .or_else(|| raw.source.clone())
                .unwrap_or_else(|| format!("sim-{}", raw.name)),
            key,
            name: raw.name,
            provider,
            portfolio,
            waba_id: raw.waba_id,
            api_base,
            access_token_env: raw.access_token_env,
            app_secret_env: raw.app_secret_env,
            verify_token_env: raw.verify_token_env,
            throughput_mps,
            follow_throughput_upgrades: raw.follow_throughput_upgrades.unwrap_or(false),
            max_in_flight: raw
                .max_in_flight
                .unwrap_or_else(|| {
                    default_in_flight(throughput_mps, raw.follow_throughput_upgrades == Some(true))
                })
                .max(1),
            request_timeout,
            request_timeout_line,
            time_group: raw.time_group,
            out_of_hours_text: raw.out_of_hours_text,
            recontact,
            source: raw.source,
            app_name: raw.app_name,
            app_id: raw.app_id,
            api_key_env: raw.api_key_env,
            webhook_secret_env: raw.webhook_secret_env,
            webhook_allow_ips,
            webhook_unauthenticated,
        })
    }

    /// Gupshup signs nothing: a line's callbacks must carry its shared secret or come from its
    /// allow-list, unless the operator writes `webhook_auth = "none"` (and gets a warning at
    /// every start). Without that, anyone could opt contacts out or fake delivery reports.
    /// Returns whether the line takes unauthenticated callbacks.
    fn gupshup_webhook_auth(
        &self,
        key: &str,
        provider: ProviderKind,
        webhook_auth: Option<&str>,
        has_secret: bool,
        has_allow_ips: bool,
    ) -> Result<bool, ConfigError> {
        if provider != ProviderKind::Gupshup {
            return Ok(false);
        }
        match webhook_auth {
            Some("none") if has_secret || has_allow_ips => Err(self.err(
                format!("{key}.webhook_auth"),
                "\"none\" contradicts webhook_secret_env / webhook_allow_ips, which authenticate callbacks; remove one",
            )),
            Some("none") => Ok(true),
            Some(other) => Err(self.err(
                format!("{key}.webhook_auth"),
                format!("{other:?} is not accepted; the only value is \"none\" (callbacks from anyone), otherwise set webhook_secret_env or webhook_allow_ips"),
            )),
            None if has_secret || has_allow_ips => Ok(false),
            None => Err(self.err(
                format!("{key}.webhook_secret_env"),
                "a gupshup line needs webhook_secret_env or webhook_allow_ips: Gupshup signs nothing, so without them anyone could post callbacks (opt contacts out, fake delivery reports); write webhook_auth = \"none\" to accept that knowingly",
            )),
        }
    }

    fn datetime(
        &self,
        key: &str,
        value: Option<RawDateTime>,
    ) -> Result<Option<DateTime<Utc>>, ConfigError> {
        let text = match value {
            None => return Ok(None),
            Some(RawDateTime::Text(t)) => t,
            Some(RawDateTime::Toml(t)) => t.to_string(),
        };
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                self.err(
                    key,
                    format!(
                        "{text:?} is not a date-time with offset, like 2026-11-23T09:00:00-03:00"
                    ),
                )
            })
    }

    fn campaign(
        &self,
        i: usize,
        raw: RawCampaign,
        lines: &BTreeSet<String>,
        time_groups: &BTreeSet<String>,
    ) -> Result<Campaign, ConfigError> {
        let key = format!("campaigns[{i}]");
        if !lines.contains(&raw.line) {
            return Err(self.dangling(format!("{key}.line"), "line", &raw.line, lines));
        }
        if let Some(tg) = &raw.time_group {
            if !time_groups.contains(tg) {
                return Err(self.dangling(
                    format!("{key}.time_group"),
                    "time group",
                    tg,
                    time_groups,
                ));
            }
        }
        if raw.lists.is_empty() {
            return Err(self.err(format!("{key}.lists"), "names no contact list"));
        }
        for (j, list) in raw.lists.iter().enumerate() {
            if list.trim().is_empty() {
                return Err(self.err(format!("{key}.lists[{j}]"), "is empty"));
            }
        }
        for (var, source) in &raw.variables {
            crate::domain::template::parse_source(source)
                .map_err(|why| self.err(format!("{key}.variables.{var}"), why))?;
        }
        let start_at = self.datetime(&format!("{key}.start_at"), raw.start_at)?;
        let end_at = self.datetime(&format!("{key}.end_at"), raw.end_at)?;
        if let (Some(s), Some(e)) = (start_at, end_at) {
            if e <= s {
                return Err(self.err(format!("{key}.end_at"), "is not after start_at"));
            }
        }
        let mut answers = Vec::new();
        let mut normalized_keys = BTreeSet::new();
        for (answer_key, a) in raw.answers {
            let action = match a.action.as_deref().unwrap_or("close") {
                "close" => AnswerAction::Close,
                "handoff" => AnswerAction::Handoff,
                "opt_out" => AnswerAction::OptOut,
                other => {
                    return Err(self.err(
                        format!("{key}.answers.{answer_key}.action"),
                        format!("unknown action {other:?} (use close, handoff or opt_out)"),
                    ))
                }
            };
            let normalized = crate::domain::text::normalize(&answer_key);
            if normalized.is_empty() || !normalized_keys.insert(normalized.clone()) {
                return Err(self.err(
                    format!("{key}.answers.{answer_key}"),
                    "is empty or repeats another answer once case, accents and spaces are ignored",
                ));
            }
            answers.push(Answer {
                outcome: a.outcome.unwrap_or_else(|| normalized.clone()),
                key: answer_key,
                normalized,
                action,
            });
        }
        let max_attempts = raw.max_attempts.unwrap_or(3);
        if max_attempts == 0 {
            return Err(self.err(format!("{key}.max_attempts"), "must be at least 1"));
        }
        let retry_cron = match raw.retry_cron {
            None => None,
            Some(expr) => {
                Some(parse_cron(&expr).map_err(|why| self.err(format!("{key}.retry_cron"), why))?)
            }
        };
        if let Some(rate) = raw.max_failure_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(self.err(format!("{key}.max_failure_rate"), "must be between 0 and 1"));
            }
        }
        let pause_after_same_error = raw.pause_after_same_error.unwrap_or(5);
        if pause_after_same_error == 0 {
            return Err(self.err(
                format!("{key}.pause_after_same_error"),
                "must be at least 1 (1 pauses at the first request error, as the campaign's fault)",
            ));
        }
        Ok(Campaign {
            response_timeout: self.duration(
                &format!("{key}.response_timeout"),
                raw.response_timeout.as_deref(),
                Duration::from_secs(24 * 3600),
            )?,
            retry_backoff: self.duration(
                &format!("{key}.retry_backoff"),
                raw.retry_backoff.as_deref(),
                Duration::from_secs(300),
            )?,
            key,
            name: raw.name,
            line: raw.line,
            template: template_ref(raw.template),
            lists: raw.lists,
            variables: raw.variables,
            require_opt_in: raw.require_opt_in.unwrap_or(false),
            start_at,
            end_at,
            time_group: raw.time_group,
            answers,
            max_attempts,
            auto_retry: raw.auto_retry.unwrap_or(true),
            retry_cron,
            recontact_file_line: raw
                .recontact_template
                .as_ref()
                .map(|t| line_at(self.text, t.span().start)),
            recontact_template: raw.recontact_template.map(|t| template_ref(t.into_inner())),
            weight: raw.weight.unwrap_or(1).max(1),
            local_time: raw.local_time.unwrap_or(false),
            ramp: raw.ramp.unwrap_or(false),
            max_failure_rate: raw.max_failure_rate,
            pause_after_same_error,
        })
    }
}

/// `203.0.113.7`, `2001:db8::1` (one host) or `203.0.113.0/24` (a network).
pub fn parse_ip_net(text: &str) -> Option<ipnet::IpNet> {
    let t = text.trim();
    t.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| t.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// The line of `text` a byte offset falls on (from 1).
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn template_ref(raw: RawTemplateRef) -> TemplateRef {
    TemplateRef {
        name: raw.name,
        language: raw.language,
    }
}

/// Cron expressions with seconds (6–7 fields, as the `cron` crate reads them) or classic
/// crontab lines (5 fields), which get a leading `0` seconds field.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("{expr:?} is not a cron expression ({e})"))
}

#[cfg(test)]
mod tests;
