use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "t.toml")
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be refused")
}

const BASE: &str = r#"
[[portfolios]]
name = "acme"
tier = "1k"

[[lines]]
name = "main"
provider = "simulator"
portfolio = "acme"

[[campaigns]]
name = "c1"
line = "main"
template = { name = "t", language = "pt_BR" }
lists = ["l1"]
"#;

#[test]
fn example_config_is_valid() {
    let cfg = parse(EXAMPLE_CONFIG).unwrap();
    let c = cfg.campaign("renewal-nov").unwrap();
    assert_eq!(c.line, "main");
    assert_eq!(c.response_timeout, Duration::from_secs(4 * 3600));
    assert_eq!(c.answers.len(), 3);
    let call = c.answers.iter().find(|a| a.key == "CALL ME").unwrap();
    assert_eq!(
        (call.normalized.as_str(), call.outcome.as_str(), call.action),
        ("call me", "call", AnswerAction::Handoff)
    );
    assert!(c.retry_cron.is_some());
    assert_eq!(cfg.portfolio("acme").unwrap().tier, Tier::Limited(10_000));
    assert_eq!(cfg.time_groups.len(), 2);
    assert_eq!(cfg.import.default_country.as_deref(), Some("BR"));
}

#[test]
fn defaults_apply() {
    let cfg = parse(BASE).unwrap();
    let c = &cfg.campaigns[0];
    assert_eq!(c.max_attempts, 3);
    assert_eq!(c.pause_after_same_error, 5);
    assert!(c.auto_retry);
    assert!(!c.require_opt_in);
    assert_eq!(c.retry_backoff, Duration::from_secs(300));
    assert_eq!(cfg.lines[0].throughput_mps, 80);
    assert_eq!(cfg.lines[0].request_timeout, Duration::from_secs(20));
    assert_eq!(cfg.server.database_url, DEFAULT_DATABASE_URL);
    assert_eq!(cfg.server.reconcile_after, Duration::from_secs(600));
    assert_eq!(cfg.inbox.opt_out_keywords.len(), 5);
}

/// Enough requests in flight for the line's top rate at Meta's answer times: 64 would hold a
/// line upgraded to 1,000 msg/s near 250 msg/s (`tiercast bench --latency-ms 250`).
#[test]
fn requests_in_flight_follow_the_lines_top_rate() {
    let with = |extra: &str| {
        let text = BASE.replace(
            "portfolio = \"acme\"\n",
            &format!("portfolio = \"acme\"\n{extra}\n"),
        );
        parse(&text).unwrap().lines[0].max_in_flight
    };
    assert_eq!(with(""), 64, "80 msg/s: the floor");
    assert_eq!(with("throughput_mps = 1000"), 500);
    assert_eq!(
        with("follow_throughput_upgrades = true"),
        500,
        "may reach 1,000"
    );
    assert_eq!(
        with("throughput_mps = 1000\nmax_in_flight = 32"),
        32,
        "as configured"
    );
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err(&format!(
        "{BASE}\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n"
    ));
    assert_eq!(e.key, "server.lisen");
    assert!(e.message.contains("unknown field `lisen`"), "{e}");
    assert_eq!(e.line, Some(19));
    assert!(
        e.to_string()
            .starts_with("t.toml:19: server.lisen: unknown field"),
        "{e}"
    );

    let e = err(&BASE.replace("lists = [\"l1\"]", "lists = [\"l1\"]\ncolour = \"red\""));
    assert_eq!(e.key, "campaigns[0].colour");
}

#[test]
fn wrong_types_name_the_key() {
    let e = err(&BASE.replace(
        "portfolio = \"acme\"",
        "portfolio = \"acme\"\nthroughput_mps = \"fast\"",
    ));
    assert_eq!(e.key, "lines[0].throughput_mps");
    assert!(e.message.contains("invalid type"), "{e}");

    let e = err(&BASE.replace("lists = [\"l1\"]", "lists = \"l1\""));
    assert_eq!(e.key, "campaigns[0].lists");

    let e = err("[server]\nlisten = \nx");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn dangling_references() {
    let e = err(&BASE.replace("line = \"main\"", "line = \"nope\""));
    assert_eq!(e.key, "campaigns[0].line");
    assert_eq!(e.message, "line \"nope\" is not defined (defined: main)");

    let e = err(&BASE.replace("portfolio = \"acme\"", "portfolio = \"other\""));
    assert_eq!(e.key, "lines[0].portfolio");
    assert!(e.message.contains("portfolio \"other\" is not defined"));

    let e = err(&BASE.replace(
        "portfolio = \"acme\"",
        "portfolio = \"acme\"\ntime_group = \"office\"",
    ));
    assert_eq!(e.key, "lines[0].time_group");
    assert!(e.message.contains("none are defined"));

    let e = err(&BASE.replace("lists = [\"l1\"]", "lists = []"));
    assert_eq!(e.key, "campaigns[0].lists");
}

#[test]
fn value_errors() {
    let cases = [
        ("tier = \"1k\"", "tier = \"lots\"", "portfolios[0].tier"),
        ("provider = \"simulator\"", "provider = \"twilio\"", "lines[0].provider"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nresponse_timeout = \"soon\"", "campaigns[0].response_timeout"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nretry_cron = \"every day\"", "campaigns[0].retry_cron"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nvariables = { \"1\" = \"colum:x\" }", "campaigns[0].variables.1"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nanswers = { \"YES\" = { action = \"dance\" } }", "campaigns[0].answers.YES.action"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nanswers = { \"YES\" = {}, \"yes \" = {} }", "campaigns[0].answers.yes "),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nstart_at = \"tomorrow\"", "campaigns[0].start_at"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nstart_at = \"2026-11-23T09:00:00-03:00\"\nend_at = 2026-11-22T09:00:00Z", "campaigns[0].end_at"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\nmax_attempts = 0", "campaigns[0].max_attempts"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\npause_after_same_error = 0", "campaigns[0].pause_after_same_error"),
        ("lists = [\"l1\"]", "lists = [\"l1\"]\npause_after_same_error = -1", "campaigns[0].pause_after_same_error"),
        ("portfolio = \"acme\"", "portfolio = \"acme\"\nthroughput_mps = 0", "lines[0].throughput_mps"),
        ("portfolio = \"acme\"", "portfolio = \"acme\"\nrequest_timeout = \"soon\"", "lines[0].request_timeout"),
        ("portfolio = \"acme\"", "portfolio = \"acme\"\nrequest_timeout = \"0s\"", "lines[0].request_timeout"),
    ];
    for (from, to, key) in cases {
        let e = err(&BASE.replace(from, to));
        assert_eq!(e.key, key, "{to}: {e}");
    }
}

#[test]
fn meta_lines_need_their_ids_and_secret_names() {
    let text = BASE.replace("provider = \"simulator\"", "provider = \"meta\"");
    let e = err(&text);
    assert_eq!(e.key, "lines[0].phone_number_id");
    assert_eq!(e.message, "is required for a meta line");
}

#[test]
fn time_group_errors() {
    let tg = |body: &str| format!("{BASE}\n[[time_groups]]\nname = \"o\"\n{body}\n");
    let e = err(&tg("timezone = \"Mars/Base\"\nwindows = [ { days = \"mon\", from = \"09:00\", to = \"10:00\" } ]"));
    assert_eq!(e.key, "time_groups[0].timezone");
    let e = err(&tg("timezone = \"UTC\"\nwindows = [ { days = \"mon\", from = \"09:00\", to = \"10:00\" }, { days = \"funday\", from = \"09:00\", to = \"10:00\" } ]"));
    assert_eq!(e.key, "time_groups[0].windows[1]");
    let e = err(&tg(
        "timezone = \"UTC\"\nwindows = [ { days = \"mon\", from = \"19:00\", to = \"10:00\" } ]",
    ));
    assert!(e.message.contains("overnight"), "{e}");
    let e = err(&tg("timezone = \"UTC\"\nwindows = [ { days = \"mon\", from = \"09:00\", to = \"10:00\" } ]\nholidays = [\"25/12\"]"));
    assert_eq!(e.key, "time_groups[0].holidays[0]");
}

#[test]
fn duplicate_names() {
    let e = err(&format!(
        "{BASE}\n[[lines]]\nname = \"main\"\nprovider = \"simulator\"\n"
    ));
    assert_eq!(e.key, "lines[1].name");
    assert!(e.message.contains("defined twice"));
}

#[test]
fn line_without_portfolio_gets_its_own() {
    let cfg = parse(&BASE.replace("portfolio = \"acme\"", "tier = \"2k\"")).unwrap();
    assert_eq!(cfg.lines[0].portfolio, "main");
    assert_eq!(cfg.portfolio("main").unwrap().tier, Tier::Limited(2000));
}

#[test]
fn secrets_come_from_env_and_never_print() {
    let cfg = parse(&BASE.replace(
        "provider = \"simulator\"",
        "provider = \"simulator\"\naccess_token_env = \"TIERCAST_TEST_TOKEN_X\"",
    ))
    .unwrap();
    let line = &cfg.lines[0];
    let e = cfg
        .secret(
            &line.key,
            "access_token_env",
            line.access_token_env.as_deref(),
        )
        .unwrap_err();
    assert_eq!(e.key, "lines[0].access_token_env");
    assert_eq!(
        e.message,
        "environment variable TIERCAST_TEST_TOKEN_X is not set"
    );
    std::env::set_var("TIERCAST_TEST_TOKEN_X", "s3cr3t-value");
    let s = cfg
        .secret(
            &line.key,
            "access_token_env",
            line.access_token_env.as_deref(),
        )
        .unwrap();
    assert_eq!(s.expose(), "s3cr3t-value");
    assert!(!format!("{s:?} {s}").contains("s3cr3t"));
}

#[test]
fn five_field_crontab_is_accepted() {
    assert!(parse_cron("*/15 * * * *").is_ok());
    assert!(parse_cron("0 0 */2 * * *").is_ok());
    assert!(parse_cron("61 * * * *").is_err());
}

#[test]
fn country_zones_override_the_table_and_bad_entries_name_the_key() {
    let text = format!("{BASE}\n[country_zones]\nus = \"America/Chicago\"\n");
    let c = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(
        c.country_zones.of_phone("+12125550123"),
        Some(chrono_tz::America::Chicago)
    );
    let e = err(&format!(
        "{BASE}\n[country_zones]\nXX = \"Europe/Lisbon\"\n"
    ));
    assert_eq!(e.key, "country_zones.XX", "{e}");
    let e = err(&format!(
        "{BASE}\n[country_zones]\nBR = \"America/Atlantis\"\n"
    ));
    assert_eq!(e.key, "country_zones.BR", "{e}");
    assert!(e.message.contains("America/Atlantis"), "{e}");
}

const GUPSHUP: &str = r#"
[[lines]]
name = "gs"
provider = "gupshup"
source = "917834811114"
app_name = "DemoApp"
app_id = "c6aecef6-0000-4fb1-8100-28c094e3bc6b"
api_key_env = "GUPSHUP_API_KEY"
webhook_secret_env = "GUPSHUP_WEBHOOK_SECRET"
webhook_allow_ips = ["203.0.113.7", "198.51.100.0/24", "2001:db8::/32"]
"#;

#[test]
fn gupshup_lines() {
    let cfg = parse(GUPSHUP).unwrap();
    let l = cfg.line("gs").unwrap();
    assert_eq!(l.provider, ProviderKind::Gupshup);
    assert_eq!(l.api_base.as_deref(), Some(DEFAULT_GUPSHUP_API_BASE));
    // The business number stands in for Meta's phone_number_id when matching webhooks.
    assert_eq!(l.phone_number_id, "917834811114");
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(l.webhook_allow_ips[0].contains(&ip("203.0.113.7")));
    assert!(!l.webhook_allow_ips[0].contains(&ip("203.0.113.8")));
    assert!(l.webhook_allow_ips[1].contains(&ip("198.51.100.200")));
    assert!(l.webhook_allow_ips[2].contains(&ip("2001:db8::1")));

    for field in ["source", "app_name", "app_id", "api_key_env"] {
        let text: String = GUPSHUP
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .collect::<Vec<_>>()
            .join("\n");
        let e = err(&text);
        assert_eq!(e.key, format!("lines[0].{field}"));
        assert!(e.message.contains("required for a gupshup line"), "{e}");
    }
    let e = err(&GUPSHUP.replace("\"917834811114\"", "\"+91 7834-811114\""));
    assert_eq!(e.key, "lines[0].source");
    let e = err(&GUPSHUP.replace("\"198.51.100.0/24\"", "\"198.51.100.0/33\""));
    assert_eq!(e.key, "lines[0].webhook_allow_ips[1]");
    assert!(e.to_string().contains("198.51.100.0/33"), "{e}");
    // Gupshup-only keys on a Meta line would be silently ignored: refused instead.
    let e = err(&BASE.replace(
        "provider = \"simulator\"",
        "provider = \"simulator\"\nwebhook_secret_env = \"X\"",
    ));
    assert_eq!(e.key, "lines[0].webhook_secret_env");
}

#[test]
fn example_gupshup_line_parses_once_uncommented() {
    let block: Vec<&str> = EXAMPLE_CONFIG
        .lines()
        .skip_while(|l| !l.starts_with("# And a Gupshup app"))
        .skip(1)
        .take_while(|l| l.starts_with("# "))
        .map(|l| &l[2..])
        .collect();
    let text = format!(
        "[[portfolios]]\nname = \"acme\"\n{}",
        block.join("\n").replace("\n[[lines]]", "\n\n[[lines]]")
    );
    let cfg = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let l = cfg.line("gs").expect("the gupshup line");
    assert_eq!(l.provider, ProviderKind::Gupshup);
    assert_eq!(l.webhook_allow_ips.len(), 1);
}

#[test]
fn a_line_has_no_default_country_imports_have_one() {
    // Numbers are normalised when a list is imported, not per line: the key would be ignored.
    let e = err(&BASE.replace(
        "portfolio = \"acme\"\n",
        "portfolio = \"acme\"\ndefault_country = \"BR\"\n",
    ));
    assert_eq!(e.key, "lines[0].default_country");
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn reconcile_after_must_outlast_every_request_timeout() {
    // Equal is refused too: an answer arriving at the last moment would race the resend.
    let text = format!("[server]\nreconcile_after = \"20s\"\n{BASE}");
    let e = err(&text);
    assert_eq!(
        (e.file.as_str(), e.line, e.key.as_str()),
        ("t.toml", Some(2), "server.reconcile_after"),
        "{e}"
    );
    assert!(e.message.contains("lines[0].request_timeout (20s)"), "{e}");
    assert!(e.message.contains("\"main\""), "{e}");
    assert!(
        e.to_string()
            .starts_with("t.toml:2: server.reconcile_after: "),
        "{e}"
    );

    // The default reconcile_after against a line's long timeout: the line's key is named.
    let long = BASE.replace(
        "portfolio = \"acme\"",
        "portfolio = \"acme\"\nrequest_timeout = \"15m\"",
    );
    let e = err(&long);
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(10), "lines[0].request_timeout"),
        "{e}"
    );

    let ok = format!("[server]\nreconcile_after = \"21s\"\n{BASE}");
    assert_eq!(
        parse(&ok).unwrap().server.reconcile_after,
        Duration::from_secs(21)
    );
}

#[test]
fn gupshup_callbacks_need_a_secret_an_allow_list_or_an_explicit_none() {
    let without = |drop: &[&str]| -> String {
        GUPSHUP
            .lines()
            .filter(|l| !drop.iter().any(|d| l.starts_with(&format!("{d} ="))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Either one alone is enough.
    parse(&without(&["webhook_secret_env"])).unwrap();
    parse(&without(&["webhook_allow_ips"])).unwrap();

    let neither = without(&["webhook_secret_env", "webhook_allow_ips"]);
    let e = err(&neither);
    assert_eq!(e.key, "lines[0].webhook_secret_env", "{e}");
    assert!(e.message.contains("webhook_auth = \"none\""), "{e}");
    // An empty allow-list admits everyone: no better than none.
    let e = err(&format!("{neither}\nwebhook_allow_ips = []"));
    assert_eq!(e.key, "lines[0].webhook_secret_env", "{e}");

    let cfg = parse(&format!("{neither}\nwebhook_auth = \"none\"")).unwrap();
    assert!(cfg.line("gs").unwrap().webhook_unauthenticated);
    assert!(
        !parse(GUPSHUP)
            .unwrap()
            .line("gs")
            .unwrap()
            .webhook_unauthenticated
    );

    let e = err(&format!("{neither}\nwebhook_auth = \"secret\""));
    assert_eq!(e.key, "lines[0].webhook_auth", "{e}");
    let e = err(&format!("{GUPSHUP}webhook_auth = \"none\""));
    assert_eq!(e.key, "lines[0].webhook_auth", "{e}");
    assert!(e.message.contains("contradicts"), "{e}");
    let e = err(&BASE.replace(
        "provider = \"simulator\"",
        "provider = \"simulator\"\nwebhook_auth = \"none\"",
    ));
    assert_eq!(e.key, "lines[0].webhook_auth", "{e}");
}
