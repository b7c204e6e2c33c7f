//! Lines at run time: each configured line with its provider client, its throughput limiter
//! and its webhook secrets, built once at start from the config and the environment.

use crate::config::{Config, ConfigError, Line, ProviderKind, Secret};
use crate::provider::gupshup::{GupshupClient, GupshupSettings};
use crate::provider::meta::{MetaClient, MetaSettings};
use crate::provider::LineProvider;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Credentials of a `simulator` line that names none: the built-in simulator accepts them.
pub const SIM_ACCESS_TOKEN: &str = "sim-access-token";
pub const SIM_APP_SECRET: &str = "sim-app-secret";
pub const SIM_VERIFY_TOKEN: &str = "sim-verify-token";
/// The Graph API version path the simulator serves, like Meta's.
pub const SIM_API_VERSION: &str = "v23.0";

pub struct LineRuntime {
    pub line: Line,
    pub provider: LineProvider,
    pub pacer: crate::pacer::Pacer,
    /// Meta's webhook signature key (Meta and simulator lines; Gupshup signs nothing).
    pub app_secret: Option<Secret>,
    pub verify_token: Option<Secret>,
    pub waba_id: String,
    /// The shared secret Gupshup callbacks must carry (Gupshup lines that configure one).
    pub webhook_secret: Option<Secret>,
}

impl std::fmt::Debug for LineRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineRuntime")
            .field("line", &self.line.name)
            .finish_non_exhaustive()
    }
}

/// The waba id a simulator line uses when the config gives none.
pub fn sim_waba_id(line: &Line) -> String {
    line.waba_id
        .clone()
        .unwrap_or_else(|| format!("sim-waba-{}", line.name))
}

/// A limiter that lets `mps` messages through per second, spaced evenly (burst of one), so no
/// one-second window ever holds more than the line's throughput.
pub fn throughput_limiter(mps: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(mps.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN))
}

/// Builds every line. `simulator_base` is the in-process simulator's URL (e.g.
/// `http://127.0.0.1:4100`) for `simulator` lines without an `api_base` of their own.
pub fn build(
    config: &Config,
    simulator_base: Option<&str>,
) -> Result<HashMap<String, Arc<LineRuntime>>, ConfigError> {
    refuse_public_secret_beside_real_lines(config)?;
    let mut out = HashMap::new();
    for line in &config.lines {
        let rt = match line.provider {
            ProviderKind::Meta => {
                let token = config.secret(
                    &line.key,
                    "access_token_env",
                    line.access_token_env.as_deref(),
                )?;
                let app_secret =
                    config.secret(&line.key, "app_secret_env", line.app_secret_env.as_deref())?;
                let verify_token = match &line.verify_token_env {
                    Some(v) => Some(config.secret(&line.key, "verify_token_env", Some(v))?),
                    None => None,
                };
                let base = line.api_base.clone().unwrap_or_default();
                let waba_id = line.waba_id.clone().unwrap_or_default();
                runtime(
                    config,
                    line,
                    &base,
                    token,
                    app_secret,
                    verify_token,
                    waba_id,
                )?
            }
            ProviderKind::Simulator => {
                let optional = |field: &str, env: &Option<String>, default: &str| match env {
                    Some(var) => config.secret(&line.key, field, Some(var)),
                    None => Ok(Secret::new(default)),
                };
                let token = optional("access_token_env", &line.access_token_env, SIM_ACCESS_TOKEN)?;
                let app_secret = simulator_app_secret(config, line)?;
                let verify =
                    optional("verify_token_env", &line.verify_token_env, SIM_VERIFY_TOKEN)?;
                let base = match (&line.api_base, simulator_base) {
                    (Some(b), _) => b.clone(),
                    (None, Some(sim)) => format!("{}/{SIM_API_VERSION}", sim.trim_end_matches('/')),
                    (None, None) => {
                        return Err(ConfigError {
                            file: config.source.clone(),
                            line: None,
                            key: format!("{}.api_base", line.key),
                            message:
                                "a simulator line needs api_base when no simulator runs in-process"
                                    .into(),
                        })
                    }
                };
                runtime(
                    config,
                    line,
                    &base,
                    token,
                    app_secret,
                    Some(verify),
                    sim_waba_id(line),
                )?
            }
            ProviderKind::Gupshup => gupshup_runtime(config, line)?,
        };
        out.insert(line.name.clone(), Arc::new(rt));
    }
    Ok(out)
}

/// The key a simulator line signs and checks webhooks with: its own, or the public
/// [`SIM_APP_SECRET`] when it names none.
pub fn simulator_app_secret(config: &Config, line: &Line) -> Result<Secret, ConfigError> {
    match &line.app_secret_env {
        Some(var) => config.secret(&line.key, "app_secret_env", Some(var)),
        None => Ok(Secret::new(SIM_APP_SECRET)),
    }
}

/// [`SIM_APP_SECRET`] is public: a simulator line using it beside Meta or Gupshup lines would
/// let anyone sign webhooks the daemon acts on (an inbound STOP opts a contact out on every
/// line), so such a config is refused until the simulator line names its own secret.
fn refuse_public_secret_beside_real_lines(config: &Config) -> Result<(), ConfigError> {
    let Some(real) = config
        .lines
        .iter()
        .find(|l| l.provider != ProviderKind::Simulator)
    else {
        return Ok(());
    };
    match config
        .lines
        .iter()
        .find(|l| l.provider == ProviderKind::Simulator && l.app_secret_env.is_none())
    {
        None => Ok(()),
        Some(sim) => Err(ConfigError {
            file: config.source.clone(),
            line: None,
            key: format!("{}.app_secret_env", sim.key),
            message: format!(
                "simulator line {:?} would check webhooks with the public {SIM_APP_SECRET:?} beside \
                 {} line {:?}; name a secret of its own in app_secret_env, or remove the line",
                sim.name,
                real.provider.as_str(),
                real.name
            ),
        }),
    }
}

fn runtime(
    config: &Config,
    line: &Line,
    api_base: &str,
    token: Secret,
    app_secret: Secret,
    verify_token: Option<Secret>,
    waba_id: String,
) -> Result<LineRuntime, ConfigError> {
    let provider = LineProvider::Meta(Box::new(
        MetaClient::new(MetaSettings {
            api_base: api_base.to_string(),
            phone_number_id: line.phone_number_id.clone(),
            waba_id: waba_id.clone(),
            access_token: token.expose().to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: line.request_timeout,
            max_in_flight: line.max_in_flight,
        })
        .map_err(|e| ConfigError {
            file: config.source.clone(),
            line: None,
            key: format!("{}.api_base", line.key),
            message: e.to_string(),
        })?,
    ));
    Ok(LineRuntime {
        line: line.clone(),
        provider,
        pacer: crate::pacer::Pacer::new(&line.name, line.throughput_mps),
        app_secret: Some(app_secret),
        verify_token,
        waba_id,
        webhook_secret: None,
    })
}

fn gupshup_runtime(config: &Config, line: &Line) -> Result<LineRuntime, ConfigError> {
    let api_key = config.secret(&line.key, "api_key_env", line.api_key_env.as_deref())?;
    let webhook_secret = match &line.webhook_secret_env {
        Some(v) => Some(config.secret(&line.key, "webhook_secret_env", Some(v))?),
        None => None,
    };
    if line.webhook_unauthenticated {
        tracing::warn!(
            line = %line.name,
            "webhook_auth = \"none\": this Gupshup line accepts callbacks from anyone, who can \
             opt contacts out and fake delivery reports; set webhook_secret_env or webhook_allow_ips"
        );
    }
    let provider = GupshupClient::new(GupshupSettings {
        api_base: line.api_base.clone().unwrap_or_default(),
        source: line.source.clone().unwrap_or_default(),
        app_name: line.app_name.clone().unwrap_or_default(),
        app_id: line.app_id.clone().unwrap_or_default(),
        api_key: api_key.expose().to_string(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: line.request_timeout,
        max_in_flight: line.max_in_flight,
    })
    .map_err(|e| ConfigError {
        file: config.source.clone(),
        line: None,
        key: format!("{}.api_base", line.key),
        message: e.to_string(),
    })?;
    Ok(LineRuntime {
        line: line.clone(),
        provider: LineProvider::Gupshup(Box::new(provider)),
        pacer: crate::pacer::Pacer::new(&line.name, line.throughput_mps),
        app_secret: None,
        verify_token: None,
        // Tier events name no WABA on Gupshup; the line's own key routes them (see the inbox).
        waba_id: sim_waba_id(line),
        webhook_secret,
    })
}
