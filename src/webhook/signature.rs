//! Webhook signatures: Meta's `X-Hub-Signature-256` header.
//!
//! Owns signing (used by the simulator when it posts webhooks) and verification (used by the
//! daemon's `POST /webhooks/meta`). The MAC is HMAC-SHA256 keyed with the app secret over the
//! *exact raw request bytes*: re-serialising parsed JSON would change the bytes and break it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header Meta puts the signature in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// Why a signature was rejected. Kept coarse on purpose: the reason goes into a metric label
/// (`webhook_rejected_total{reason}`) and must never leak how close a forgery came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header (expected `sha256=<64 hex digits>`)")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// Short, stable label for metrics (`missing`, `malformed`, `mismatch`).
    pub fn as_label(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long keys are hashed), so this cannot fail.
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
    }
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, the value of `X-Hub-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Check `header` (the raw `X-Hub-Signature-256` value) against `body` signed with `secret`.
///
/// The comparison is constant-time (`Mac::verify_slice`). Upper-case hex is accepted because
/// hex decoding is case-insensitive; surrounding whitespace is tolerated, the `sha256=` prefix
/// is required (its scheme name case-insensitively).
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    if header.is_empty() {
        return Err(SignatureError::Missing);
    }
    let (scheme, digest) = header.split_once('=').ok_or(SignatureError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("sha256") || digest.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(digest).map_err(|_| SignatureError::Malformed)?;
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vector computed independently:
    // printf '{"a":1}' | openssl dgst -sha256 -hmac secret
    const BODY: &[u8] = br#"{"a":1}"#;

    #[test]
    fn sign_matches_openssl_vector() {
        assert_eq!(
            sign(b"secret", BODY),
            "sha256=aa9e2e3575f5d7098b6caccd790888c36d5fdb63342a73bada2d6a51747a8494"
        );
    }

    #[test]
    fn verify_roundtrip_and_case() {
        let sig = sign(b"k", BODY);
        assert_eq!(verify(b"k", BODY, Some(&sig)), Ok(()));
        assert_eq!(verify(b"k", BODY, Some(&sig.to_uppercase())), Ok(()));
        assert_eq!(verify(b"k", BODY, Some(&format!("  {sig} "))), Ok(()));
    }

    #[test]
    fn verify_errors() {
        let sig = sign(b"k", BODY);
        assert_eq!(verify(b"k", BODY, None), Err(SignatureError::Missing));
        assert_eq!(verify(b"k", BODY, Some("")), Err(SignatureError::Missing));
        assert_eq!(
            verify(b"k", BODY, Some("sha1=abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"k", BODY, Some(&sig[7..])),
            Err(SignatureError::Malformed)
        );
        let bad_hex = format!("sha256={}", "z".repeat(64));
        assert_eq!(
            verify(b"k", BODY, Some(&bad_hex)),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"other", BODY, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", br#"{"a":2}"#, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        // Re-serialised JSON (whitespace change) must not verify.
        assert_eq!(
            verify(b"k", br#"{"a": 1}"#, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }
}
