//! Per-recipient fates of the simulator: what happens to an accepted message (delivered, read,
//! failed with a code, or silence), chosen deterministically from the seed and the recipient's
//! digits so tests can predict them, plus the `wa_id` normalisation quirks (Brazil's 9th
//! digit, Mexico's `1`).

use serde::{Deserialize, Serialize};

/// What happens to a message after it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// `sent` → `delivered` (read receipts off: no `read`).
    Delivered,
    /// `sent` → `delivered` → `read`.
    Read,
    /// A single `failed` status with this error code (131026, 131049, 131050, 130472 …).
    Failed(i64),
    /// Accepted, then nothing ever (TTL expiry): exercises the daemon's reconciliation.
    NoWebhook,
}

/// Relative weights of the fates (any scale; all zero = everything delivered), and the share
/// of recipients whose `wa_id` differs from the `to` they were sent to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FateMix {
    pub delivered: u32,
    pub read: u32,
    pub undeliverable_131026: u32,
    pub marketing_cap_131049: u32,
    pub opted_out_131050: u32,
    pub no_webhook: u32,
    /// 0.0–1.0; only numbers with a known normalisation rule (BR, MX) can differ.
    pub wa_id_differs: f64,
}

impl Default for FateMix {
    fn default() -> Self {
        FateMix {
            delivered: 20,
            read: 70,
            undeliverable_131026: 3,
            marketing_cap_131049: 3,
            opted_out_131050: 2,
            no_webhook: 2,
            wa_id_differs: 0.0,
        }
    }
}

impl FateMix {
    /// Every message delivered and read: the happy path for benchmarks.
    pub fn all_read() -> Self {
        FateMix {
            delivered: 0,
            read: 1,
            undeliverable_131026: 0,
            marketing_cap_131049: 0,
            opted_out_131050: 0,
            no_webhook: 0,
            wa_id_differs: 0.0,
        }
    }

    /// The fate of `digits` under `seed`. Pure: same inputs, same fate.
    pub fn pick(&self, seed: u64, digits: &str) -> Fate {
        let table = [
            (self.delivered, Fate::Delivered),
            (self.read, Fate::Read),
            (self.undeliverable_131026, Fate::Failed(131026)),
            (self.marketing_cap_131049, Fate::Failed(131049)),
            (self.opted_out_131050, Fate::Failed(131050)),
            (self.no_webhook, Fate::NoWebhook),
        ];
        let total: u64 = table.iter().map(|(w, _)| u64::from(*w)).sum();
        if total == 0 {
            return Fate::Delivered;
        }
        let mut roll = hash(seed, digits, 0xfa7e) % total;
        for (w, fate) in table {
            let w = u64::from(w);
            if roll < w {
                return fate;
            }
            roll -= w;
        }
        Fate::Delivered
    }

    /// The `wa_id` Meta would return for `digits` under `seed`.
    pub fn wa_id(&self, seed: u64, digits: &str) -> String {
        if self.wa_id_differs > 0.0 {
            let roll = (hash(seed, digits, 0x3a1d) % 1_000_000) as f64 / 1_000_000.0;
            if roll < self.wa_id_differs {
                if let Some(w) = alternate_wa_id(digits) {
                    return w;
                }
            }
        }
        digits.to_string()
    }
}

/// The digits of a phone number as typed in `to` (`+55 (11) 98765-4321` → `5511987654321`).
pub fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

/// The historic WhatsApp id for numbers whose canonical form differs from the dialled one:
/// Brazilian mobiles registered before the 9th digit (55 DD 9XXXXXXXX → 55 DD XXXXXXXX) and
/// Mexican mobiles with the old `1` (52 XXXXXXXXXX → 521 XXXXXXXXXX).
pub fn alternate_wa_id(digits: &str) -> Option<String> {
    if digits.len() == 13 && digits.starts_with("55") && digits.as_bytes()[4] == b'9' {
        return Some(format!("{}{}", &digits[..4], &digits[5..]));
    }
    if digits.len() == 12 && digits.starts_with("52") {
        return Some(format!("521{}", &digits[2..]));
    }
    None
}

/// FNV-1a over seed, salt and the digits, finished with splitmix64 so nearby numbers spread.
/// Stable across Rust releases (unlike `DefaultHasher`), so fates in tests never shift.
pub fn hash(seed: u64, digits: &str, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed
        .to_le_bytes()
        .iter()
        .chain(salt.to_le_bytes().iter())
        .chain(digits.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_weighted() {
        let mix = FateMix::default();
        let a: Vec<Fate> = (0..1000)
            .map(|i| mix.pick(7, &format!("55119{i:08}")))
            .collect();
        let b: Vec<Fate> = (0..1000)
            .map(|i| mix.pick(7, &format!("55119{i:08}")))
            .collect();
        assert_eq!(a, b);
        let read = a.iter().filter(|f| **f == Fate::Read).count();
        assert!((600..800).contains(&read), "read {read}");
        assert!(a.contains(&Fate::Failed(131026)));
        assert_eq!(FateMix::all_read().pick(1, "1"), Fate::Read);
    }

    #[test]
    fn wa_id_rules() {
        assert_eq!(digits("+55 (11) 98765-4321"), "5511987654321");
        assert_eq!(
            alternate_wa_id("5511987654321").as_deref(),
            Some("551187654321")
        );
        assert_eq!(
            alternate_wa_id("525512345678").as_deref(),
            Some("5215512345678")
        );
        assert_eq!(alternate_wa_id("16505551234"), None);
        let mix = FateMix {
            wa_id_differs: 1.0,
            ..FateMix::default()
        };
        assert_eq!(mix.wa_id(1, "5511987654321"), "551187654321");
        assert_eq!(mix.wa_id(1, "16505551234"), "16505551234");
    }
}
