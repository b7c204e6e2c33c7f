//! The admin API's handlers: parse, call the step the CLI also uses, shape the JSON.

use super::{ApiError, ApiState};
use crate::campaign;
use crate::clock::{rfc3339, Millis};
use crate::domain::phone::{self, Phone};
use crate::domain::{CampaignCommand, Outcome};
use crate::import::{self, ImportOptions, RejectedRow, SpooledSource};
use crate::store::{ContactCampaignRow, OptOutRecord};
use crate::tiers;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

type ApiResult<T> = Result<T, ApiError>;

fn at_opt(ms: Option<Millis>) -> Option<String> {
    ms.map(rfc3339)
}

/// Parses a JSON body strictly, naming the offending field in the error.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("bad JSON body: {inner}")
        } else {
            format!("bad JSON body at {path}: {inner}")
        };
        ApiError::bad_request("bad_json", message)
    })
}

/// A phone from a path or body, normalised like imports (E.164; the import's default country
/// for national numbers). Only what `PhoneInput` of the OpenAPI document allows gets that far:
/// digits, spaces, `(`, `)`, `.`, `-` and a leading `+`.
fn phone_of(state: &ApiState, raw: &str) -> ApiResult<Phone> {
    let trimmed = raw.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if digits.is_empty()
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '(' | ')' | '.' | '-'))
    {
        return Err(ApiError::bad_request(
            "bad_phone",
            format!("phone {raw:?}: only digits, spaces, ( ) . - and a leading + are allowed"),
        ));
    }
    let country = state
        .config
        .import
        .default_country
        .as_deref()
        .and_then(|c| phone::parse_country(c).ok());
    Phone::parse(raw, country)
        .map_err(|e| ApiError::bad_request("bad_phone", format!("phone {raw:?}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Campaigns
// ---------------------------------------------------------------------------------------------

pub async fn campaigns(
    State(state): State<ApiState>,
) -> ApiResult<Json<Vec<campaign::CampaignStatus>>> {
    let mut out = Vec::with_capacity(state.config.campaigns.len());
    for c in &state.config.campaigns {
        out.push(campaign::status(&state.store, &*state.clock, &state.config, c).await?);
    }
    Ok(Json(out))
}

pub async fn campaign(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<campaign::CampaignStatus>> {
    let Path(name) = name?;
    let c = campaign::find(&state.config, &name)?;
    Ok(Json(
        campaign::status(&state.store, &*state.clock, &state.config, c).await?,
    ))
}

/// A campaign command's answer: the campaign after it, and (after a pause or a stop) its
/// sends already in the HTTP client, the only ones that may still reach the provider.
#[derive(Debug, Serialize)]
pub struct CommandAnswer {
    #[serde(flatten)]
    status: campaign::CampaignStatus,
    sends_in_flight: u64,
}

pub async fn campaign_command(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<CommandAnswer>> {
    let Path((name, command)) = path?;
    let cmd = match command.as_str() {
        "start" => CampaignCommand::Start,
        "pause" => CampaignCommand::Pause,
        "resume" => CampaignCommand::Resume,
        "stop" => CampaignCommand::Stop,
        other => {
            return Err(ApiError::not_found(
                "unknown_command",
                format!("no campaign command {other:?} (use start, pause, resume or stop)"),
            ))
        }
    };
    let c = campaign::find(&state.config, &name)?;
    let (_, sends_in_flight) = state
        .campaign_changes
        .command_counting(&state.store, &*state.clock, &state.config, &name, cmd)
        .await?;
    tracing::info!(campaign = %name, command = cmd.as_str(), sends_in_flight, "campaign command through the admin API");
    Ok(Json(CommandAnswer {
        status: campaign::status(&state.store, &*state.clock, &state.config, c).await?,
        sends_in_flight,
    }))
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    default_country: Option<String>,
    opt_in: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct ImportView {
    list: String,
    rows: u64,
    imported: u64,
    updated: u64,
    duplicate: u64,
    invalid: u64,
    /// The first rejected rows (line and reason); `invalid` counts them all.
    rejected: Vec<RejectedRow>,
    rejected_truncated: bool,
}

/// Media types a CSV body may come as; a missing `Content-Type` is taken as CSV too.
const CSV_TYPES: &[&str] = &[
    "text/csv",
    "text/plain",
    "application/csv",
    "application/octet-stream",
    "application/vnd.ms-excel",
];

pub async fn import_list(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<ImportView>> {
    let Path(list) = name?;
    let Query(query) = query?;
    if let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !CSV_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body must be CSV (Content-Type: text/csv), not {ct:?}"
            )));
        }
    }
    let source = spool(body).await?;
    let options = ImportOptions {
        list: list.clone(),
        default_country: query
            .default_country
            .or_else(|| state.config.import.default_country.clone()),
        opt_in: query.opt_in.unwrap_or(false),
        batch_size: state.config.import.batch_size.max(1),
        progress: false,
    };
    let summary = import::import(&state.store, &*state.clock, &source, &options).await?;
    tracing::info!(%list, imported = summary.imported, updated = summary.updated,
        duplicate = summary.duplicate, invalid = summary.invalid, "import through the admin API");
    Ok(Json(ImportView {
        rejected_truncated: (summary.rejected.len() as u64) < summary.invalid,
        list: summary.list,
        rows: summary.rows,
        imported: summary.imported,
        updated: summary.updated,
        duplicate: summary.duplicate,
        invalid: summary.invalid,
        rejected: summary.rejected,
    }))
}

/// Writes an import body to a temporary file as it arrives, up to [`super::IMPORT_BODY_LIMIT`]:
/// held in memory whole, a body is copied several times over by parsing.
async fn spool(body: axum::body::Body) -> ApiResult<SpooledSource> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let internal = |e: std::io::Error| {
        tracing::error!(error = %e, "admin API: import body not spooled");
        ApiError::Internal("the body could not be stored for import; see the daemon's log".into())
    };
    let file = tempfile::NamedTempFile::new().map_err(internal)?;
    let mut out = tokio::fs::File::from_std(file.as_file().try_clone().map_err(internal)?);
    let mut stream = body.into_data_stream();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("bad_body", format!("reading the body: {e}")))?;
        size += chunk.len();
        if size > super::IMPORT_BODY_LIMIT {
            return Err(ApiError::TooLarge(format!(
                "the body is larger than {} bytes; import bigger files with `tiercast import`",
                super::IMPORT_BODY_LIMIT
            )));
        }
        out.write_all(&chunk).await.map_err(internal)?;
    }
    out.flush().await.map_err(internal)?;
    Ok(SpooledSource {
        name: "request body".into(),
        file,
    })
}

// ---------------------------------------------------------------------------------------------
// Contacts
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct OptOutView {
    phone: String,
    reason: String,
    source: String,
    at: String,
}

impl From<OptOutRecord> for OptOutView {
    fn from(o: OptOutRecord) -> Self {
        OptOutView {
            phone: o.phone,
            reason: o.reason,
            source: o.source,
            at: rfc3339(o.created_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ContactRowView {
    campaign: String,
    line: String,
    state: String,
    outcome: Option<String>,
    answer: Option<String>,
    attempts: i64,
    next_attempt_at: Option<String>,
    last_error_code: Option<i64>,
    last_error_text: Option<String>,
    wamid: Option<String>,
    message_status: Option<String>,
    loaded_at: String,
    sent_at: Option<String>,
    delivered_at: Option<String>,
    read_at: Option<String>,
    response_deadline: Option<String>,
    closed_at: Option<String>,
}

impl From<ContactCampaignRow> for ContactRowView {
    fn from(r: ContactCampaignRow) -> Self {
        let waiting = matches!(r.state.as_str(), "fresh" | "retry");
        ContactRowView {
            next_attempt_at: waiting.then(|| rfc3339(r.next_attempt_at)),
            campaign: r.campaign,
            line: r.line,
            state: r.state,
            outcome: r.outcome,
            answer: r.answer,
            attempts: r.attempts,
            last_error_code: r.last_error_code,
            last_error_text: r.last_error_text,
            wamid: r.wamid,
            message_status: r.message_status,
            loaded_at: rfc3339(r.loaded_at),
            sent_at: at_opt(r.sent_at),
            delivered_at: at_opt(r.delivered_at),
            read_at: at_opt(r.read_at),
            response_deadline: at_opt(r.response_deadline),
            closed_at: at_opt(r.closed_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ContactView {
    phone: String,
    name: Option<String>,
    email: Option<String>,
    country: Option<String>,
    opt_in: bool,
    fields: BTreeMap<String, String>,
    opted_out: bool,
    opt_out: Option<OptOutView>,
    blacklisted: bool,
    lists: Vec<String>,
    /// Its hopper row in every campaign that loaded it.
    rows: Vec<ContactRowView>,
}

pub async fn contact(
    State(state): State<ApiState>,
    phone: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ContactView>> {
    let Path(raw) = phone?;
    let phone = phone_of(&state, &raw)?;
    let Some(c) = state.store.contact_by_phone(phone.as_str()).await? else {
        return Err(ApiError::not_found(
            "unknown_contact",
            format!("no contact {phone}"),
        ));
    };
    let opt_out = state.store.opt_out_of(phone.as_str()).await?;
    let rows = state.store.contact_campaign_rows(c.id).await?;
    Ok(Json(ContactView {
        phone: c.phone,
        name: c.name,
        email: c.email,
        country: c.country,
        opt_in: c.opt_in,
        fields: c.fields,
        opted_out: c.opted_out,
        opt_out: opt_out.map(Into::into),
        blacklisted: c.blacklisted,
        lists: c.lists,
        rows: rows.into_iter().map(Into::into).collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Templates and tiers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct TemplateView {
    line: String,
    name: String,
    language: String,
    category: String,
    status: String,
    quality: Option<String>,
    parameter_format: &'static str,
    /// The keys a campaign's `variables` maps (`"1"`, `"first_name"`, `"header"`, `"button.0"`).
    placeholders: Vec<String>,
    components: serde_json::Value,
    /// The category before Meta's last recategorisation.
    previous_category: Option<String>,
    /// An announced recategorisation: the category it will have at `category_change_at`.
    correct_category: Option<String>,
    /// When the last or announced recategorisation took or takes effect.
    category_change_at: Option<String>,
    rejected_reason: Option<String>,
}

pub async fn templates(State(state): State<ApiState>) -> ApiResult<Json<Vec<TemplateView>>> {
    let out = state
        .store
        .templates()
        .await?
        .into_iter()
        .map(|(line, t)| TemplateView {
            placeholders: t.placeholders().into_iter().map(|s| s.key).collect(),
            parameter_format: if t.uses_named_params() {
                "NAMED"
            } else {
                "POSITIONAL"
            },
            components: serde_json::to_value(&t.components).unwrap_or_default(),
            line,
            name: t.name,
            language: t.language,
            category: t.category,
            status: t.status,
            quality: t.quality,
            previous_category: t.previous_category,
            correct_category: t.correct_category,
            category_change_at: at_opt(t.category_change_at),
            rejected_reason: t.rejected_reason,
        })
        .collect();
    Ok(Json(out))
}

pub async fn tiers(State(state): State<ApiState>) -> ApiResult<Json<Vec<tiers::TierUsage>>> {
    Ok(Json(
        tiers::usage(&state.store, &state.config, state.clock.now_millis()).await?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Opt-outs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 1000;

pub async fn opt_outs(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let offset = q.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) || offset < 0 {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1..={MAX_PAGE} and offset 0 or more"),
        ));
    }
    let (page, total) = state.store.opt_outs_page(limit, offset).await?;
    let page: Vec<OptOutView> = page.into_iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({
        "total": total,
        "limit": limit,
        "offset": offset,
        "optouts": page,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOptOut {
    phone: String,
    /// May be left out, but not `null`: the schema says string.
    #[serde(default, deserialize_with = "present_string")]
    reason: Option<String>,
}

fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Puts a number on the opt-out list and closes its open rows in every campaign as
/// `opted_out`, as an opt-out keyword from the contact does. 201 when new, 200 when the number
/// was already opted out (the first reason is kept).
pub async fn add_opt_out(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: NewOptOut = parse_json(&body?)?;
    let phone = phone_of(&state, &req.phone)?;
    let reason = req
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "added through the admin API".into());
    let now = state.clock.now_millis();
    let added = state
        .store
        .add_opt_out(phone.as_str(), &reason, "api", now)
        .await?;
    let closed = state
        .store
        .close_open_rows_of_phone(phone.as_str(), Outcome::OptedOut, now)
        .await?;
    tracing::info!(added, closed_rows = closed, "opt-out through the admin API");
    let entry = state.store.opt_out_of(phone.as_str()).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({
            "optout": entry.map(OptOutView::from),
            "added": added,
            "closed_rows": closed,
        })),
    )
        .into_response())
}

pub async fn remove_opt_out(
    State(state): State<ApiState>,
    phone: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(raw) = phone?;
    let phone = phone_of(&state, &raw)?;
    if !state.store.remove_opt_out(phone.as_str()).await? {
        return Err(ApiError::not_found(
            "not_opted_out",
            format!("{phone} is not on the opt-out list"),
        ));
    }
    tracing::info!("opt-out removed through the admin API");
    Ok(Json(
        serde_json::json!({ "phone": phone.as_str(), "removed": true }),
    ))
}
