//! The daemon assembled: HTTP (webhooks, metrics, health), one dispatcher task per line,
//! housekeeping (gauges, cron retry runs), and — for `simulator` lines with no `api_base` —
//! the built-in Cloud API simulator in-process, posting its webhooks back to us.
//! `tiercast serve`, `demo` and `retry` all run through [`start`].

use crate::campaign::CampaignError;
use crate::clock::{Millis, SharedClock};
use crate::config::{Config, ProviderKind};
use crate::dispatch::Dispatcher;
use crate::domain::{CampaignCommand, CampaignState, HopperState, Outcome};
use crate::http::{self, HttpState};
use crate::inbox::Inbox;
use crate::lines::{self, LineRuntime, SIM_ACCESS_TOKEN};
use crate::metrics as m;
use crate::outcomes::Outcomes;
use crate::provider::Provider;
use crate::sim::{SimConfig, SimLine, Simulator};
use crate::store::{CampaignRow, DaemonLock, Store};
use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A change to the in-process simulator's settings, applied before it starts.
pub type SimAdjust = Box<dyn FnOnce(&mut SimConfig) + Send>;

pub struct ServeOptions {
    pub clock: SharedClock,
    /// Overrides `server.listen` (tests and `demo` use port 0).
    pub listen: Option<SocketAddr>,
    /// Adjusts the in-process simulator's settings (fates, webhook behaviour) before it starts.
    pub simulator: Option<SimAdjust>,
    /// Create a missing SQLite file (`serve --create-db`, `demo`, `bench`). Otherwise a
    /// missing file is an error: where a database was expected, an empty one would start
    /// every campaign from nothing and message everyone again.
    pub create_database: bool,
}

impl ServeOptions {
    pub fn new(clock: SharedClock) -> Self {
        ServeOptions {
            clock,
            listen: None,
            simulator: None,
            create_database: false,
        }
    }
}

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub store: Store,
    pub config: Arc<Config>,
    pub simulator: Option<Simulator>,
    pub dispatcher: Dispatcher,
    pub inbox: Inbox,
    pub lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    clock: SharedClock,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The in-process simulator's server: stopped after the dispatchers, whose sends in
    /// flight it answers.
    simulator_task: Option<tokio::task::JoinHandle<()>>,
    /// On SQLite: proof that no other daemon runs on the file, held until the daemon ends.
    _lock: Option<DaemonLock>,
}

/// The process-wide Prometheus recorder (a recorder can be installed once per process).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(m::SEND_LATENCY.to_string()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .inspect(|_| m::describe())
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

fn needs_simulator(config: &Config) -> bool {
    config
        .lines
        .iter()
        .any(|l| l.provider == ProviderKind::Simulator && l.api_base.is_none())
}

/// Starts everything; returns once the HTTP port is bound and the dispatchers run.
pub async fn start(config: Config, options: ServeOptions) -> anyhow::Result<Daemon> {
    let config = Arc::new(config);
    let url = &config.server.database_url;
    let database_file = crate::store::sqlite_file(url);
    let lock = match &database_file {
        Some(path) => {
            if !path.exists() {
                if !options.create_database {
                    return Err(crate::store::StoreError::Missing(path.clone()).into());
                }
                Store::open(url)
                    .await
                    .with_context(|| format!("creating database {}", path.display()))?
                    .close()
                    .await;
                tracing::info!(path = %path.display(), "created a new database");
            }
            Some(DaemonLock::acquire(path)?)
        }
        None => None,
    };
    let store = Store::open_existing(url)
        .await
        .with_context(|| format!("opening database {}", crate::cli::redact_url(url)))?;
    if let Some(lock) = &lock {
        // Holding the lock proves every lease in the file was left by a daemon that exited.
        let released = store.release_leases_of_exited_daemons().await?;
        if released > 0 {
            tracing::info!(
                leases = released,
                lock = %lock.path().display(),
                "sole daemon on this database: took over the leases of exited daemons at once"
            );
        }
    }
    for p in &config.portfolios {
        store
            .ensure_portfolio_tier(&p.name, p.tier, options.clock.now_millis())
            .await?;
    }
    let listen = options.listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    let (shutdown, shutdown_rx) = watch::channel(false);

    let simulator = if needs_simulator(&config) {
        let mut sim_config = SimConfig {
            phone_numbers: config
                .lines
                .iter()
                .filter(|l| l.provider == ProviderKind::Simulator && l.api_base.is_none())
                .map(|l| {
                    Ok(SimLine {
                        phone_number_id: l.phone_number_id.clone(),
                        waba_id: lines::sim_waba_id(l),
                        access_token: SIM_ACCESS_TOKEN.into(),
                        app_secret: lines::simulator_app_secret(&config, l)?
                            .expose()
                            .to_string(),
                        throughput_mps: l.throughput_mps,
                        display_phone_number: "15550000000".into(),
                    })
                })
                .collect::<Result<_, crate::config::ConfigError>>()?,
            webhook_url: Some(format!("http://{addr}/webhooks/meta")),
            clock: Some(options.clock.clone()),
            ..SimConfig::default()
        };
        if let Some(adjust) = options.simulator {
            adjust(&mut sim_config);
        }
        let sim = Simulator::new(sim_config);
        let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sim_addr = sim_listener.local_addr()?;
        let serving = sim.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = serving.serve(sim_listener).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        tracing::info!(%sim_addr, "built-in Cloud API simulator running");
        Some((sim, format!("http://{sim_addr}"), task))
    } else {
        None
    };
    let (simulator, simulator_task) = match simulator {
        Some((sim, base, task)) => (Some((sim, base)), Some(task)),
        None => (None, None),
    };
    let lines = Arc::new(lines::build(
        &config,
        simulator.as_ref().map(|(_, base)| base.as_str()),
    )?);
    let simulator = simulator.map(|(sim, _)| sim);

    sync_templates(&store, &options.clock, &lines, None).await;
    if let Err(e) = crate::inbox::check_recontact_templates(&config, &store).await {
        if let Some(task) = &simulator_task {
            task.abort();
        }
        return Err(e);
    }

    // Accepted sends and status webhooks share one group commit.
    let outcomes = Outcomes::new(store.clone(), options.clock.clone(), config.clone());
    let inbox = Inbox::new(
        store.clone(),
        options.clock.clone(),
        config.clone(),
        lines.clone(),
        outcomes.clone(),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        options.clock.clone(),
        config.clone(),
        lines.clone(),
        outcomes,
    );

    let metrics = metrics_handle();
    m::zero_known_series(&config);
    let router = http::router(HttpState {
        store: store.clone(),
        inbox: inbox.clone(),
        lines: lines.clone(),
        metrics,
        clock: options.clock.clone(),
        config: config.clone(),
        campaign_changes: dispatcher.campaign_changes(),
    });
    let max_connections = http::max_connections(&config)?;
    tracing::info!(
        max_connections,
        "HTTP client connections capped below the open-file limit"
    );
    let mut http_shutdown = shutdown_rx.clone();
    tasks.spawn(async move {
        let stop = async move {
            let _ = http_shutdown.wait_for(|s| *s).await;
        };
        http::serve(listener, router, max_connections, stop).await;
    });
    // Registered before the lines start, so line sharing counts this daemon from the first.
    let member = format!("member:{}", dispatcher.holder());
    let ttl = config.server.lease_ttl.as_millis() as Millis;
    store
        .acquire_lease(
            &member,
            dispatcher.holder(),
            options.clock.now_millis(),
            ttl,
        )
        .await?;
    tasks.spawn(membership(
        dispatcher.holder().to_string(),
        store.clone(),
        options.clock.clone(),
        config.server.lease_ttl,
        shutdown_rx.clone(),
    ));
    for line in lines.keys() {
        tasks.spawn(
            dispatcher
                .clone()
                .run_line(line.clone(), shutdown_rx.clone()),
        );
    }
    tasks.spawn(watch_database_file(store.clone(), shutdown_rx.clone()));
    tasks.spawn(housekeeping(
        dispatcher.holder().to_string(),
        store.clone(),
        inbox.clone(),
        options.clock.clone(),
        config.clone(),
        lines.clone(),
        shutdown_rx.clone(),
    ));
    tracing::info!(%addr, lines = lines.len(), campaigns = config.campaigns.len(), "tiercast serving");
    Ok(Daemon {
        addr,
        store,
        config,
        simulator,
        dispatcher,
        inbox,
        lines,
        clock: options.clock,
        shutdown,
        tasks,
        simulator_task,
        _lock: lock,
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = self.simulator_task.take() {
            task.abort();
        }
    }
}

impl Daemon {
    /// Stops claiming, lets sends in flight settle, stops HTTP; bounded by `shutdown_grace`.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let grace = self.config.server.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "shutdown grace elapsed; abandoning the rest (their attempts will be reconciled)"
            );
            self.tasks.abort_all();
        }
        if let Some(task) = self.simulator_task.take() {
            task.abort();
        }
        self.store.close().await;
    }

    /// Applies a campaign command as the admin API does: in the database, then announced to
    /// this daemon's lines, which act on it at once.
    pub async fn campaign_command(
        &self,
        name: &str,
        cmd: CampaignCommand,
    ) -> Result<CampaignRow, CampaignError> {
        self.dispatcher
            .campaign_changes()
            .command(&self.store, &*self.clock, &self.config, name, cmd)
            .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Fetches every line's templates from its provider into the store (or just `only`).
pub async fn sync_templates(
    store: &Store,
    clock: &SharedClock,
    lines: &HashMap<String, Arc<LineRuntime>>,
    only: Option<&str>,
) -> Vec<(String, Result<usize, String>)> {
    let mut out = Vec::new();
    for (name, rt) in lines {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let result = match rt.provider.list_templates().await {
            Ok(defs) => store
                .replace_templates(name, &defs, clock.now_millis())
                .await
                .map(|_| defs.len())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            tracing::warn!(line = %name, error = %e, "template sync failed; keeping the stored templates");
        }
        out.push((name.clone(), result));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Keeps this daemon counted among the live ones (the `member:` lease) while it runs, so the
/// lines are spread evenly across daemons; gives the lease back on shutdown.
async fn membership(
    holder: String,
    store: Store,
    clock: SharedClock,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = format!("member:{holder}");
    loop {
        if let Err(e) = store
            .acquire_lease(
                &name,
                &holder,
                clock.now_millis(),
                ttl.as_millis() as Millis,
            )
            .await
        {
            tracing::warn!(error = %e, "membership not renewed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = store.release_lease(&name, &holder).await;
}

/// Looks once a second whether the SQLite file is still the one opened. The first check that
/// finds it deleted or replaced stops the dispatchers' claims and sends and fails `/readyz`
/// (both read the result); this says why, once.
async fn watch_database_file(store: Store, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = store.check_database_file() {
            tracing::error!(error = %e, "database file lost: sending stopped, /readyz fails");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Periodic duties: response timeouts, gauges from the database, cron-scheduled retry runs.
async fn housekeeping(
    holder: String,
    store: Store,
    inbox: Inbox,
    clock: SharedClock,
    config: Arc<Config>,
    lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_cron: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut next_tier_read: HashMap<String, Millis> = HashMap::new();
    let mut counts_due = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = clock.now();
        // Singleton duties run in one daemon at a time.
        let ttl = config.server.lease_ttl.as_millis() as i64;
        if !store
            .acquire_lease("singleton", &holder, clock.now_millis(), ttl)
            .await
            .unwrap_or(false)
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        for p in &config.portfolios {
            let now_ms = clock.now_millis();
            if next_tier_read.get(&p.name).is_some_and(|at| *at > now_ms) {
                continue;
            }
            next_tier_read.insert(
                p.name.clone(),
                now_ms + p.tier_refresh.as_millis() as Millis,
            );
            if let Err(e) =
                crate::tiers::refresh_from_provider(&store, &config, &lines, p, now_ms).await
            {
                tracing::warn!(portfolio = %p.name, error = %e, "messaging limit from the provider not stored");
            }
        }
        if let Err(e) = inbox.expire_timeouts().await {
            tracing::error!(error = %e, "response timeouts not applied; retrying");
        }
        if let Ok(open) = store.open_interactions_by_line().await {
            for l in &config.lines {
                let n = open
                    .iter()
                    .find(|(line, _)| *line == l.name)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                m::interactions_open(&l.name, n as u64);
            }
        }
        match crate::tiers::usage(&store, &config, clock.now_millis()).await {
            Ok(usage) => crate::tiers::export(&usage),
            Err(e) => tracing::warn!(error = %e, "tier use not measured"),
        }
        // The hopper gauges count every row of a campaign: at a million contacts that is a
        // scan of a few hundred milliseconds on the database the dispatcher needs too. They
        // refresh every second, or every 20 times their last cost when that is longer, so they
        // never hold the database more than 5 % of the time.
        let count_rows = Instant::now() >= counts_due;
        let counting = Instant::now();
        for c in &config.campaigns {
            let Ok(row) = store.ensure_campaign(&c.name, clock.now_millis()).await else {
                continue;
            };
            for s in CampaignState::ALL {
                m::campaign_state(&c.name, s.as_str(), *s == row.state);
            }
            if count_rows {
                if let Ok(n) = store.waiting_for_tier(row.id).await {
                    m::waiting_for_tier(&c.name, n);
                }
                if let Ok(counts) = store.hopper_counts(row.id).await {
                    for s in HopperState::ALL {
                        m::hopper_contacts(&c.name, s.as_str(), counts.state(*s));
                    }
                    for o in Outcome::ALL {
                        m::campaign_outcomes(&c.name, o.as_str(), counts.outcome(*o));
                    }
                }
            }
            if let (Some(schedule), false) = (&c.retry_cron, c.auto_retry) {
                let due = next_cron
                    .entry(c.name.clone())
                    .or_insert_with(|| schedule.after(&now).next().unwrap_or(now));
                if *due <= now && row.state == CampaignState::Running {
                    match store.make_retries_due(row.id, clock.now_millis()).await {
                        Ok(n) => tracing::info!(campaign = %c.name, contacts = n, "cron retry run"),
                        Err(e) => {
                            tracing::error!(campaign = %c.name, error = %e, "cron retry run failed")
                        }
                    }
                    next_cron.insert(c.name.clone(), schedule.after(&now).next().unwrap_or(now));
                }
            }
        }
        if count_rows {
            counts_due = Instant::now() + counting.elapsed() * 20;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn termination() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
