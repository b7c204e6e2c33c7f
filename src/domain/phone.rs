//! `Phone`: a WhatsApp recipient number in E.164 form (`+5511987654321`). Parsing goes through
//! the `phonenumber` crate (libphonenumber's metadata), so only numbers that are valid for their
//! country get in.

use phonenumber::{country, Mode};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("empty phone number")]
    Empty,
    #[error("unknown country code {0:?} (expected ISO 3166 alpha-2, e.g. BR)")]
    UnknownCountry(String),
    #[error("not a phone number: {0:?}")]
    Unparseable(String),
    #[error("{0:?} is not a valid number for its country")]
    Invalid(String),
}

/// Parses an ISO 3166-1 alpha-2 region ("br", "BR") into the `phonenumber` country id.
pub fn parse_country(code: &str) -> Result<country::Id, PhoneError> {
    country::Id::from_str(&code.trim().to_ascii_uppercase())
        .map_err(|_| PhoneError::UnknownCountry(code.to_string()))
}

impl Phone {
    /// Normalises a number as people type it: `+55 (11) 98765-4321`, `011 98765 4321` with a
    /// default country, `5511987654321` (international digits without the plus), `00 55…`.
    pub fn parse(raw: &str, default_country: Option<country::Id>) -> Result<Phone, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        let candidate = phonenumber::parse(default_country, trimmed)
            .ok()
            .filter(phonenumber::is_valid);
        let number = match candidate {
            Some(n) => n,
            None => {
                // Exports from CRMs often drop the leading '+' but keep the country code.
                let digits: String = trimmed.chars().filter(|c| c.is_ascii_digit()).collect();
                let intl = digits.strip_prefix("00").unwrap_or(&digits);
                if trimmed.starts_with('+') || intl.len() < 8 {
                    return Err(Self::classify_failure(trimmed, default_country));
                }
                match phonenumber::parse(None, format!("+{intl}")) {
                    Ok(n) if phonenumber::is_valid(&n) => n,
                    _ => return Err(Self::classify_failure(trimmed, default_country)),
                }
            }
        };
        Ok(Phone(number.format().mode(Mode::E164).to_string()))
    }

    fn classify_failure(raw: &str, default_country: Option<country::Id>) -> PhoneError {
        match phonenumber::parse(default_country, raw) {
            Ok(_) => PhoneError::Invalid(raw.to_string()),
            Err(_) => PhoneError::Unparseable(raw.to_string()),
        }
    }

    /// Wraps a value already stored as E.164 (from our own database).
    pub fn from_e164_unchecked(s: impl Into<String>) -> Phone {
        Phone(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits only, as Meta writes `wa_id` and `recipient_id`.
    pub fn digits(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// The ISO region of the number (for local-time windows), if libphonenumber knows it.
    pub fn region(&self) -> Option<country::Id> {
        phonenumber::parse(None, &self.0).ok()?.country().id()
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br() -> Option<country::Id> {
        Some(parse_country("BR").unwrap())
    }

    #[test]
    fn normalises_common_spellings() {
        for raw in [
            "+55 11 98765-4321",
            "(11) 98765-4321",
            "5511987654321",
            "005511987654321",
            "+5511987654321",
        ] {
            assert_eq!(
                Phone::parse(raw, br()).unwrap().as_str(),
                "+5511987654321",
                "{raw}"
            );
        }
    }

    #[test]
    fn other_countries_with_plus_ignore_default() {
        let p = Phone::parse("+1 650-555-1234", br()).unwrap();
        assert_eq!(p.as_str(), "+16505551234");
        let p = Phone::parse("+44 7911 123456", br()).unwrap();
        assert_eq!(p.as_str(), "+447911123456");
        assert_eq!(
            Phone::parse("+5511987654321", None).unwrap().region(),
            Some(country::Id::BR)
        );
    }

    #[test]
    fn rejects_garbage_and_short_numbers() {
        assert_eq!(Phone::parse("  ", br()), Err(PhoneError::Empty));
        assert!(matches!(
            Phone::parse("hello", br()),
            Err(PhoneError::Unparseable(_))
        ));
        assert!(Phone::parse("123", br()).is_err());
        assert!(Phone::parse("11987654321", None).is_err());
    }

    #[test]
    fn country_codes() {
        assert!(parse_country("br").is_ok());
        assert!(matches!(
            parse_country("XX"),
            Err(PhoneError::UnknownCountry(_))
        ));
    }
}
