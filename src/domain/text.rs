//! Text normalisation shared by answer matching, opt-out keywords and CSV headers:
//! case-folded, accents stripped, inner whitespace collapsed ("  Sí,  quiero " → "si, quiero").

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.nfd().filter(|c| !is_combining_mark(*c)) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn folds_case_accents_and_spaces() {
        assert_eq!(normalize("  Sí,\t QUIERO  "), "si, quiero");
        assert_eq!(normalize("Telefône"), "telefone");
        assert_eq!(normalize("CALL   ME"), "call me");
        assert_eq!(normalize(""), "");
    }
}
