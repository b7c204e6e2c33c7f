//! Send-side fault injection: the failures a real Graph API shows under load, chosen per send
//! request so the daemon's handling of each can be tested against the real binary.
//!
//! - `drop`: the message is accepted (ledger, status webhooks) but the connection is cut
//!   before the answer's body completes, so the sender cannot know it was accepted.
//! - `slow`: accepted, the answer held back `slow_ms` (past a client's request timeout).
//! - `server_error`: HTTP 500 (code 1) or 503 (code 2), nothing accepted.
//! - `throttle`: HTTP 429 with code 130429, nothing accepted.
//!
//! Which request gets which fault is a hash of the seed and the request's sequence number, so
//! a run with the same seed and the same request order draws the same faults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::fate;
use super::graph_error::GraphError;

/// Shares of send requests (0.0–1.0 each, at most 1.0 together) that meet each fault.
/// All off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimFaults {
    /// Accepted, then the connection is cut instead of answering.
    pub drop: f64,
    /// Accepted, answered only after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// Answered 500 (Graph code 1) or 503 (code 2), not accepted.
    pub server_error: f64,
    /// Answered 429 with Graph code 130429, not accepted.
    pub throttle: f64,
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            drop: 0.0,
            slow: 0.0,
            slow_ms: 3000,
            server_error: 0.0,
            throttle: 0.0,
        }
    }
}

/// What one send request meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Drop,
    Slow(Duration),
    /// Graph code 1 (HTTP 500) or 2 (HTTP 503).
    ServerError(i64),
    Throttle,
}

impl SimFaults {
    /// Every share within 0.0–1.0 and their sum at most 1.0.
    pub fn validate(&self) -> Result<(), String> {
        let shares = [
            ("drop", self.drop),
            ("slow", self.slow),
            ("server_error", self.server_error),
            ("throttle", self.throttle),
        ];
        for (name, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "{name} must be a share between 0.0 and 1.0, got {v}"
                ));
            }
        }
        let sum: f64 = shares.iter().map(|(_, v)| v).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!("the shares add up to {sum}, more than 1.0"));
        }
        Ok(())
    }

    pub fn any(&self) -> bool {
        self.drop > 0.0 || self.slow > 0.0 || self.server_error > 0.0 || self.throttle > 0.0
    }

    /// The fault of the `n`-th send request, if any.
    pub fn pick(&self, seed: u64, n: u64) -> Option<Fault> {
        if !self.any() {
            return None;
        }
        let h = fate::hash(seed, &n.to_string(), FAULT_SALT);
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        let mut edge = self.throttle;
        if u < edge {
            return Some(Fault::Throttle);
        }
        edge += self.server_error;
        if u < edge {
            // The low bit picks the code, independent of the share drawn above.
            return Some(Fault::ServerError(if h & 1 == 0 { 1 } else { 2 }));
        }
        edge += self.drop;
        if u < edge {
            return Some(Fault::Drop);
        }
        edge += self.slow;
        if u < edge {
            return Some(Fault::Slow(Duration::from_millis(self.slow_ms)));
        }
        None
    }
}

const FAULT_SALT: u64 = 0xFA17;

/// How many requests met each fault (`GET /sim/stats` → `faults`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    pub dropped: u64,
    pub slow: u64,
    pub server_errors: u64,
    pub throttled: u64,
}

#[derive(Default)]
pub(crate) struct FaultCounters {
    pub requests: AtomicU64,
    dropped: AtomicU64,
    slow: AtomicU64,
    server_errors: AtomicU64,
    throttled: AtomicU64,
}

impl FaultCounters {
    pub fn count(&self, fault: Fault) {
        let c = match fault {
            Fault::Drop => &self.dropped,
            Fault::Slow(_) => &self.slow,
            Fault::ServerError(_) => &self.server_errors,
            Fault::Throttle => &self.throttled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FaultStats {
        FaultStats {
            dropped: self.dropped.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

/// The Graph error a rejecting fault answers (nothing was accepted).
pub fn rejection(fault: Fault) -> Option<GraphError> {
    match fault {
        Fault::ServerError(code) => Some(GraphError::new(
            code,
            "An unexpected error has occurred. Please retry your request later.",
        )),
        Fault::Throttle => {
            let mut e = GraphError::new(130429, "Cloud API message throughput has been reached.")
                .with_status(StatusCode::TOO_MANY_REQUESTS);
            e.subcode = Some(2494055);
            Some(e)
        }
        Fault::Drop | Fault::Slow(_) => None,
    }
}

/// A 200 whose body breaks off after its first bytes: hyper aborts the connection when the
/// body stream fails, so the client sees the headers and then an error reading the body.
pub fn cut_connection() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"messaging_product\":\"whatsapp\",")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated fault: connection cut after accepting",
        )),
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_drawn_reproducibly_and_in_proportion() {
        let f = SimFaults {
            drop: 0.1,
            slow: 0.1,
            server_error: 0.2,
            throttle: 0.3,
            ..SimFaults::default()
        };
        let draw = |seed| (0..10_000).map(|n| f.pick(seed, n)).collect::<Vec<_>>();
        assert_eq!(draw(7), draw(7));
        let picks = draw(7);
        let share = |p: &dyn Fn(&Option<Fault>) -> bool| {
            picks.iter().filter(|x| p(x)).count() as f64 / 10_000.0
        };
        assert!((share(&|x| *x == Some(Fault::Drop)) - 0.1).abs() < 0.02);
        assert!((share(&|x| matches!(x, Some(Fault::Slow(_)))) - 0.1).abs() < 0.02);
        assert!((share(&|x| matches!(x, Some(Fault::ServerError(_)))) - 0.2).abs() < 0.02);
        assert!((share(&|x| *x == Some(Fault::Throttle)) - 0.3).abs() < 0.02);
        assert!(picks.contains(&Some(Fault::ServerError(1))));
        assert!(picks.contains(&Some(Fault::ServerError(2))));
        assert!(SimFaults::default().pick(7, 1).is_none());
    }

    #[test]
    fn shares_out_of_range_are_refused() {
        let bad = SimFaults {
            drop: 1.5,
            ..SimFaults::default()
        };
        assert!(bad.validate().unwrap_err().contains("drop"));
        let too_much = SimFaults {
            drop: 0.6,
            throttle: 0.6,
            ..SimFaults::default()
        };
        assert!(too_much.validate().unwrap_err().contains("more than 1.0"));
        assert!(SimFaults::default().validate().is_ok());
    }
}
