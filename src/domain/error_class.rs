//! The one table that turns a provider failure into a decision for the hopper.
//!
//! This module owns the classification of Meta error codes (reference `meta-cloud-api.md` §2.4),
//! of HTTP answers that carry no Graph error body, and of transport failures. Both error paths
//! (the synchronous HTTP answer and the asynchronous `failed` status webhook, SPEC §2 rule 6)
//! must call [`classify_meta`], so a code means the same thing wherever it arrives.
//!
//! The classes map onto SPEC §2 rule 4:
//! - [`ErrorClass::Throttled`]: the request was rejected *before* processing because we went too
//!   fast (or the account is briefly in maintenance). Replaying is safe and must not use up an
//!   attempt; the line (or, with `pair_rate`, only that contact) slows down.
//! - [`ErrorClass::Retryable`]: transient, rejected before processing; retried with backoff and it
//!   does use an attempt.
//! - [`ErrorClass::Ambiguous`]: Meta may already have accepted the message. Resending risks a
//!   duplicate, so the attempt becomes `unknown` and is settled by a webhook or by
//!   `reconcile_after` (SPEC §2 rule 7).
//! - [`ErrorClass::Permanent`]: about this recipient; the row closes `failed` (or `opted_out`).
//! - [`ErrorClass::Request`]: the request was refused for something that may come from one
//!   contact's data (a parameter, a media URL) as well as from the campaign's payload. It is
//!   the contact's when isolated (the row closes `failed`) and the campaign's when the same code
//!   repeats on the last `pause_after_same_error` distinct contacts in a row (it pauses).
//! - [`ErrorClass::Campaign`]: the fault is the campaign's (template, token, account); it would
//!   repeat for every contact, so the campaign pauses and the row stays due (the attempt still
//!   counts against `max_attempts`).

use std::time::Duration;

/// What the hopper does with a failed attempt (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Retryable,
    Throttled,
    Permanent,
    Request,
    Campaign,
    Ambiguous,
}

impl ErrorClass {
    /// Every class, for the metric series that exist from the first scrape.
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Retryable,
        ErrorClass::Throttled,
        ErrorClass::Permanent,
        ErrorClass::Request,
        ErrorClass::Campaign,
        ErrorClass::Ambiguous,
    ];

    /// The `class` label of `tiercast_send_failures_total` (SPEC §5.4). `Ambiguous` is exported
    /// as `"unknown"` because that is the word the dashboards use for "outcome not known".
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Request => "request",
            ErrorClass::Campaign => "campaign",
            ErrorClass::Ambiguous => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub class: ErrorClass,
    /// `false` when the code is not in the table: the caller should log it so the table grows.
    pub known: bool,
    /// Do not try this contact (or, for line-wide throttling, this line) again before this.
    pub min_delay: Option<Duration>,
    /// The pair rate limit (131056): only this contact must wait, not the whole line.
    pub pair_rate: bool,
    /// The contact opted out of marketing (131050, legacy 498): add it to the opt-out list.
    pub opt_out: bool,
    /// Reference title of the code, for logs and the campaign's pause reason.
    pub title: &'static str,
}

impl Classification {
    const fn new(class: ErrorClass, title: &'static str) -> Self {
        Classification {
            class,
            known: true,
            min_delay: None,
            pair_rate: false,
            opt_out: false,
            title,
        }
    }
    const fn delay(mut self, secs: u64) -> Self {
        self.min_delay = Some(Duration::from_secs(secs));
        self
    }
    const fn pair(mut self) -> Self {
        self.pair_rate = true;
        self
    }
    const fn opt_out(mut self) -> Self {
        self.opt_out = true;
        self
    }
    const fn unknown(mut self) -> Self {
        self.known = false;
        self
    }
}

use ErrorClass::{Ambiguous, Campaign, Permanent, Request, Retryable, Throttled};

const fn retry(t: &'static str) -> Classification {
    Classification::new(Retryable, t)
}
const fn throttle(t: &'static str) -> Classification {
    Classification::new(Throttled, t)
}
const fn perm(t: &'static str) -> Classification {
    Classification::new(Permanent, t)
}
const fn request(t: &'static str) -> Classification {
    Classification::new(Request, t)
}
const fn halt(t: &'static str) -> Classification {
    Classification::new(Campaign, t)
}
const fn ambig(t: &'static str) -> Classification {
    Classification::new(Ambiguous, t)
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

/// Classify a Meta / Graph error `code` (reference §2.4). Meta says to branch on the code, not
/// on the HTTP status or the title, so this is the only input.
///
/// Decisions that go beyond the reference's policy column:
/// - PERM-REQ codes that one contact's values can cause (**100** invalid parameter, 131008,
///   131009, 131053 media, 132000, 132012) are `Request`: the contact's fault when isolated, the
///   campaign's when they repeat on distinct contacts. The other PERM-REQ codes depend on the
///   template or the API alone and are `Campaign`.
/// - Exceptions that depend on one contact's data are `Permanent`: **132005** (hydrated text too
///   long: the contact's values are too long) and **131062** (that recipient is a BSUID).
/// - **131049** (per-user marketing limit) is `Retryable` with a 24 h floor (DEFER).
/// - Codes that say "slow down" or "briefly unavailable, nothing processed" are `Throttled` so
///   they never exhaust a contact: 4, 17, 32, 613, 80007, 130429, 131056 (pair rate), 131057 and
///   2494100 (maintenance), 134101 (template still syncing).
/// - Unknown codes are `Retryable` with `known = false`: retrying a bounded number of times is the
///   least harmful guess, and the caller logs them.
pub fn classify_meta(code: i64) -> Classification {
    match code {
        // --- HALT-ACCT: token, permissions, account state -------------------------------
        0 => halt("AuthException: cannot authenticate app user (token expired/invalid/revoked)"),
        190 => halt("Access token expired or invalid"),
        3 => halt("API method: capability or permission issue"),
        10 => halt("Permission denied or removed"),
        200..=299 => halt("API permission not granted or removed"),
        131005 => halt("Access denied (permission)"),
        368 => halt("Temporarily blocked for policy violations"),
        131031 => halt("Business account has been locked"),
        33 => halt("Parameter value not valid: business phone number deleted"),
        131037 => halt("Business number needs an approved display name"),
        131042 => halt("Business eligibility payment issue"),
        131045 => halt("Incorrect certificate / phone registration error"),
        // Meta's fix is "check quality": resending would make the spam signal worse.
        131048 => halt("Spam rate limit hit"),
        131064 => halt("Messaging limit reached due to template categorisation violations"),
        133000 => halt("Incomplete deregistration"),
        133005 => halt("Two-step verification PIN mismatch"),
        133006 => halt("Phone number re-verification needed"),
        133008 => halt("Too many two-step verification PIN guesses"),
        133009 => halt("Two-step verification PIN guessed too fast"),
        133010 => halt("Phone number not registered on Cloud API"),
        133015 => halt("Phone number recently deleted; wait before registering"),
        133016 => halt("Register/deregister rate limit exceeded (number locked)"),
        134011 => halt("Payments terms of service not accepted"),

        // --- HALT-TPL: the template itself is unusable ----------------------------------
        132001 => halt("Template does not exist in that language or is not approved"),
        // Also the code for paced (held) messages that Meta drops: the template is in trouble.
        132015 => halt("Template is paused"),
        132016 => halt("Template is disabled"),

        // --- PERM-REQ: the payload is wrong (for one contact, or for every one) -----------
        100 => request("Invalid parameter"),
        131008 => request("Required parameter missing"),
        131009 => request("Parameter value not valid"),
        131051 => halt("Unsupported message type"),
        131053 => request("Media upload error (media could not be fetched or processed)"),
        131055 => halt("Method not allowed"),
        131063 => halt("Marketing messages not allowed on this API"),
        134100 => halt("Marketing messages not allowed on this API"),
        134102 => halt("Template unavailable on the Marketing Messages API"),
        132000 => request("Template parameter count mismatch"),
        // render_components strips newlines/tabs/long space runs from values, so what is left
        // of a character-policy violation comes from the template or a literal.
        132007 => halt("Template format character policy violated"),
        132012 => request("Template parameter format mismatch"),
        132018 => halt("Issue with template parameters"),
        132068 => halt("Flow is blocked"),
        135000 => halt("Generic user error"),

        // --- Throttled: rejected before processing, replay without spending an attempt --
        4 => throttle("API Too Many Calls (application rate limit)"),
        17 => throttle("User request limit reached"),
        32 => throttle("Page request limit reached"),
        613 => throttle("Calls to this API have exceeded the rate limit"),
        80007 => throttle("WhatsApp Business Account rate limit reached"),
        130429 => throttle("Rate limit hit (Cloud API throughput)"),
        // SPEC §3: one message per contact per 6 s; only this contact waits.
        131056 => throttle("(Business, Consumer) pair rate limit hit")
            .pair()
            .delay(6),
        // Maintenance lasts up to a minute (e.g. during a throughput upgrade).
        131057 => throttle("Account in maintenance mode").delay(MINUTE),
        2494100 => throttle("Phone number in maintenance mode").delay(MINUTE),
        // Meta says the sync takes up to 10 minutes; nobody's fault, spend nothing.
        134101 => throttle("Template syncing to the Marketing Messages API").delay(10 * MINUTE),

        // --- DEFER: retry, but not soon ----------------------------------------------------
        131049 => retry(
            "Not delivered to maintain healthy ecosystem engagement (per-user marketing limit)",
        )
        .delay(24 * HOUR),
        // 10 flow messages per user per hour.
        132069 => retry("Flow throttled").delay(HOUR),
        // Inbound-only (user-sent media); never expected on a send, so treated like the default.
        131052 => retry("Media download error (inbound media)"),

        // --- RETRY-AMBIG: the message may already have been accepted ----------------------
        1 => ambig("API Unknown (invalid request or possible server error)"),
        2 => ambig("API Service: temporary downtime or overload"),
        131000 => ambig("Something went wrong"),
        131016 => ambig("Service temporarily unavailable"),
        133004 => ambig("Server temporarily unavailable"),

        // --- PERM-RCPT: about this recipient ------------------------------------------------
        131026 => perm("Message undeliverable"),
        131050 => perm("User stopped marketing messages from this business").opt_out(),
        498 => perm("User stopped marketing messages (legacy code of 131050)").opt_out(),
        130403 => perm("This business has blocked the user"),
        131021 => perm("Recipient cannot be sender"),
        131030 => perm("Recipient phone number not in allowed list"),
        130497 => perm("Business account restricted from messaging users in this country"),
        130472 => perm("User's number is part of an experiment"),
        // Free-form text outside the customer-service window; a template is needed instead.
        131047 => perm("Re-engagement message: more than 24 hours since the user last replied"),
        // Depends on this contact's values, not on the template.
        132005 => perm("Template hydrated text too long"),
        // Depends on the recipient being addressed by BSUID.
        131062 => perm("Message type cannot be sent to a BSUID"),

        // Registration family not listed above: still an account problem.
        c if (133_000..=133_999).contains(&c) => halt("Phone number registration error").unknown(),
        _ => retry("Unknown error code").unknown(),
    }
}

/// Codes of failed sends that tell Meta its users do not want these messages (undeliverable,
/// the per-user marketing limit, marketing opt-outs, spam and policy blocks). They count
/// against `max_failure_rate` whatever their class.
pub const QUALITY_CODES: [i64; 7] = [131026, 131049, 131050, 498, 131048, 368, 471];

/// The classes of failure that close a contact and so always count against `max_failure_rate`.
pub const CLOSING_CLASSES: [ErrorClass; 2] = [Permanent, Request];

/// Whether a failed send of `class` with `code` counts against `max_failure_rate`: every
/// failure that closes the contact, and the codes of [`QUALITY_CODES`]. `store::brakes` reads
/// the same two lists in SQL.
pub fn counts_against_failure_rate(class: ErrorClass, code: Option<i64>) -> bool {
    CLOSING_CLASSES.contains(&class) || code.is_some_and(|c| QUALITY_CODES.contains(&c))
}

/// Classify a failure code from Gupshup (`payload.payload.code` of a v2 `failed` event), which
/// is either Gupshup's own (1001–1012, 4001–4005, 500), a WhatsApp On-Premises code (470, 471,
/// 472, 1013, 1026) or a Cloud API code passed through; the last go to [`classify_meta`]. The
/// two families do not overlap, so one lookup serves both (reference `gupshup.md` §2.8).
///
/// Decisions beyond the reference's recommendation column:
/// - 1003 (wallet balance low) and 4001 (Gupshup rate limit) are about the account, not the
///   contact, and would fail every send: `Campaign`, so the campaign pauses until someone tops
///   up or talks to Gupshup, instead of burning every contact's attempts.
/// - 1009, 1010 and 1011 (parameter missing, media URL or size) are `Request` like their Meta
///   counterparts: a per-contact value can cause them.
/// - 470 / 131047 (window closed) concern free-form text and never a template; kept `Permanent`
///   like the Meta code.
pub fn classify_gupshup(code: i64) -> Classification {
    match code {
        1001 => halt("Gupshup: last mapped bot failed (src.name and source do not match the app)"),
        1002 => perm("Gupshup: number does not exist on WhatsApp"),
        1003 => halt("Gupshup: wallet balance low"),
        1004 => halt("Gupshup: template disabled"),
        1005 => halt("Gupshup: template match failed"),
        1006 => perm("Gupshup: template opt-in failure (legacy)"),
        1007 => perm("Gupshup: template opt-in and match failure (legacy)"),
        1008 => perm("Gupshup: user neither proxied nor opted in (legacy)"),
        1009 => request("Gupshup: required parameter missing"),
        1010 => request("Gupshup: invalid media URL"),
        1011 => request("Gupshup: invalid media size"),
        1012 => perm("Gupshup: number opted out (legacy)"),
        4001 => halt("Gupshup: API rate limited; stop sending and contact Gupshup"),
        4002 => retry("Gupshup: invalid response from WhatsApp"),
        4003 => halt("Gupshup: no template match"),
        4004 => halt("Gupshup: only a Cloud API feature"),
        4005 => halt("Gupshup: template paused"),
        500 => retry("Gupshup: internal server error"),
        470 => perm(
            "Re-engagement message: more than 24 hours since the user last replied (On-Premises)",
        ),
        471 => halt("Spam rate limit hit (On-Premises)"),
        472 => perm("User's number is part of an experiment (On-Premises)"),
        1013 => perm("User is not valid (On-Premises)"),
        1026 => perm("Receiver incapable (On-Premises)"),
        c => classify_meta(c),
    }
}

/// Classify a synchronous Gupshup rejection, `{"status":"error","message":…}` with its HTTP
/// status (reference §1.1). Gupshup gives no code here, only these documented messages; an
/// undocumented one is judged by the HTTP status like a body-less answer, except that an
/// explicit `"status":"error"` on a 2xx says the message was not taken, so it is retryable.
pub fn classify_gupshup_rejection(http_status: u16, message: &str) -> Classification {
    let m = message.trim();
    if m.eq_ignore_ascii_case("Invalid Destination") {
        perm("Gupshup: invalid destination")
    } else if m.eq_ignore_ascii_case("Invalid App Details") {
        halt("Gupshup: invalid app details (src.name does not own source)")
    } else if m.eq_ignore_ascii_case("Authentication Failed") || http_status == 401 {
        halt("Gupshup: authentication failed (apikey)")
    } else if m.eq_ignore_ascii_case("Too Many Requests") || http_status == 429 {
        throttle("Gupshup: too many requests")
    } else if (200..300).contains(&http_status) {
        retry("Gupshup: error status in a 2xx answer").unknown()
    } else {
        let c = classify_http_without_graph_body(http_status);
        Classification { known: false, ..c }
    }
}

/// Classify an HTTP answer whose body is not a Graph error envelope (a proxy, a load balancer,
/// a wrong `api_base`…), so there is no code to go by.
///
/// - 429 → `Throttled`: the standard "slow down", rejected before processing.
/// - 408 → `Retryable`: by definition the server did not receive the whole request.
/// - other 4xx → `Campaign`: something between us and Meta rejects the request shape, the URL or
///   the credentials; it is deterministic and would repeat for every contact, so pausing costs
///   the sends in flight one try each, while burning attempts would spend the whole list.
/// - 5xx → `Ambiguous`: a gateway error can come after Meta accepted the message.
/// - anything else (a 2xx whose body we cannot read, a redirect) → `Ambiguous`: a 2xx may well
///   mean the message was accepted.
pub fn classify_http_without_graph_body(status: u16) -> Classification {
    match status {
        429 => throttle("HTTP 429 Too Many Requests (no Graph error body)"),
        408 => retry("HTTP 408 Request Timeout (no Graph error body)"),
        400..=499 => halt("HTTP client error without Graph error body"),
        500..=599 => ambig("HTTP server error without Graph error body"),
        _ => ambig("Unexpected HTTP answer without a readable body"),
    }
}

/// A timeout or a connection reset after the request was written: Meta may have the message.
pub fn classify_transport() -> Classification {
    ambig("Transport error after the request was sent (timeout or connection reset)")
}

/// The request never left (DNS, connect refused, TLS handshake, connect timeout): nothing was
/// sent, so a plain retry is safe.
pub fn classify_connect_failure() -> Classification {
    retry("Could not connect to the provider")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of reference §2.4 with its expected class.
    const TABLE: &[(i64, ErrorClass)] = &[
        (0, Campaign),
        (190, Campaign),
        (3, Campaign),
        (10, Campaign),
        (200, Campaign),
        (250, Campaign),
        (299, Campaign),
        (131005, Campaign),
        (4, Throttled),
        (17, Throttled),
        (613, Throttled),
        (32, Throttled),
        (80007, Throttled),
        (130429, Throttled),
        (131056, Throttled),
        (131048, Campaign),
        (131064, Campaign),
        (368, Campaign),
        (131031, Campaign),
        (130497, Permanent),
        (1, Ambiguous),
        (2, Ambiguous),
        (33, Campaign),
        (100, Request),
        (130403, Permanent),
        (130472, Permanent),
        (131000, Ambiguous),
        (131008, Request),
        (131009, Request),
        (131016, Ambiguous),
        (131021, Permanent),
        (131026, Permanent),
        (131030, Permanent),
        (131037, Campaign),
        (131042, Campaign),
        (131045, Campaign),
        (131047, Permanent),
        (131049, Retryable),
        (131050, Permanent),
        (131051, Campaign),
        (131052, Retryable),
        (131053, Request),
        (131055, Campaign),
        (131063, Campaign),
        (134100, Campaign),
        (131057, Throttled),
        (131062, Permanent),
        (132000, Request),
        (132001, Campaign),
        (132005, Permanent),
        (132007, Campaign),
        (132012, Request),
        (132015, Campaign),
        (132016, Campaign),
        (132018, Campaign),
        (132068, Campaign),
        (132069, Retryable),
        (133000, Campaign),
        (133004, Ambiguous),
        (133005, Campaign),
        (133006, Campaign),
        (133008, Campaign),
        (133009, Campaign),
        (133010, Campaign),
        (133015, Campaign),
        (133016, Campaign),
        (134011, Campaign),
        (134101, Throttled),
        (134102, Campaign),
        (135000, Campaign),
        (2494100, Throttled),
        (498, Permanent),
    ];

    #[test]
    fn every_reference_code_has_its_class() {
        for &(code, class) in TABLE {
            let c = classify_meta(code);
            assert_eq!(c.class, class, "code {code}");
            assert!(c.known, "code {code} should be known");
            assert!(!c.title.is_empty());
        }
    }

    #[test]
    fn flags_and_delays() {
        let pair = classify_meta(131056);
        assert!(pair.pair_rate);
        assert_eq!(pair.min_delay, Some(Duration::from_secs(6)));
        assert!(classify_meta(131050).opt_out);
        assert!(classify_meta(498).opt_out);
        assert!(!classify_meta(131026).opt_out);
        assert_eq!(
            classify_meta(131049).min_delay,
            Some(Duration::from_secs(24 * 3600))
        );
        assert!(!classify_meta(130429).pair_rate);
    }

    #[test]
    fn unknown_codes_default_to_retryable_and_unknown() {
        for code in [-1, 5, 99, 131999, 999_999_999] {
            let c = classify_meta(code);
            assert_eq!(c.class, Retryable, "code {code}");
            assert!(!c.known);
        }
        let reg = classify_meta(133_777);
        assert_eq!(reg.class, Campaign);
        assert!(!reg.known);
    }

    #[test]
    fn http_and_transport() {
        assert_eq!(classify_http_without_graph_body(502).class, Ambiguous);
        assert_eq!(classify_http_without_graph_body(503).class, Ambiguous);
        assert_eq!(classify_http_without_graph_body(429).class, Throttled);
        assert_eq!(classify_http_without_graph_body(408).class, Retryable);
        assert_eq!(classify_http_without_graph_body(404).class, Campaign);
        assert_eq!(classify_http_without_graph_body(200).class, Ambiguous);
        assert_eq!(classify_transport().class, Ambiguous);
        assert_eq!(classify_connect_failure().class, Retryable);
    }

    #[test]
    fn gupshup_codes() {
        let table: &[(i64, ErrorClass)] = &[
            (1001, Campaign),
            (1002, Permanent),
            (1003, Campaign),
            (1004, Campaign),
            (1005, Campaign),
            (1006, Permanent),
            (1007, Permanent),
            (1008, Permanent),
            (1009, Request),
            (1010, Request),
            (1011, Request),
            (1012, Permanent),
            (4001, Campaign),
            (4002, Retryable),
            (4003, Campaign),
            (4004, Campaign),
            (4005, Campaign),
            (500, Retryable),
            (470, Permanent),
            (471, Campaign),
            (472, Permanent),
            (1013, Permanent),
            (1026, Permanent),
        ];
        for &(code, class) in table {
            let c = classify_gupshup(code);
            assert_eq!(c.class, class, "code {code}");
            assert!(c.known, "code {code}");
        }
        // Meta codes pass through unchanged, flags included.
        assert_eq!(classify_gupshup(131050), classify_meta(131050));
        assert!(classify_gupshup(131050).opt_out);
        assert_eq!(
            classify_gupshup(131049).min_delay,
            classify_meta(131049).min_delay
        );
        assert_eq!(classify_gupshup(132000).class, Request);
        assert!(!classify_gupshup(9999).known);
        assert_eq!(classify_gupshup(9999).class, Retryable);
        // The Gupshup codes are not Meta codes: the two tables never disagree on a code.
        for &(code, _) in table {
            assert!(
                !classify_meta(code).known,
                "code {code} is also a Meta code"
            );
        }
    }

    #[test]
    fn gupshup_rejections() {
        let r = classify_gupshup_rejection;
        assert_eq!(r(400, "Invalid Destination").class, Permanent);
        assert_eq!(r(400, "Invalid App Details").class, Campaign);
        assert_eq!(r(401, "Authentication Failed").class, Campaign);
        assert_eq!(r(401, "whatever").class, Campaign);
        assert_eq!(r(429, "Too Many Requests").class, Throttled);
        assert_eq!(r(202, "Something odd").class, Retryable);
        assert!(!r(202, "Something odd").known);
        assert_eq!(r(502, "Bad gateway").class, Ambiguous);
        assert_eq!(r(404, "Not found").class, Campaign);
        assert!(r(400, "Invalid Destination").known);
    }

    #[test]
    fn closing_failures_and_quality_codes_count_against_the_failure_rate() {
        assert!(counts_against_failure_rate(Permanent, Some(131026)));
        assert!(counts_against_failure_rate(Request, Some(100)));
        assert!(counts_against_failure_rate(Retryable, Some(131049)));
        assert!(!counts_against_failure_rate(Retryable, Some(500)));
        assert!(!counts_against_failure_rate(Throttled, Some(130429)));
        assert!(!counts_against_failure_rate(Ambiguous, None));
        for code in QUALITY_CODES {
            assert!(classify_gupshup(code).known, "{code}");
        }
    }

    #[test]
    fn metric_labels() {
        assert_eq!(Ambiguous.as_str(), "unknown");
        assert_eq!(Throttled.as_str(), "throttled");
        assert_eq!(Campaign.to_string(), "campaign");
    }
}
