//! Strict reading of PEM and DER input from outside, and PEM writing.
//!
//! Users hand us files of every shape. The rules, chosen so that a mistake is reported rather
//! than guessed around: explanatory text before and between PEM blocks is allowed (RFC 7468 §5.2;
//! `openssl pkcs12` writes "Bag Attributes" there), anything after the last block is "trailing
//! garbage"; input without any PEM block is taken as one DER object, which must then span the
//! whole input exactly. Block contents are held in [`Zeroizing`] buffers because some are keys.

use base64::Engine;
use zeroize::Zeroizing;

/// The largest input accepted for one certificate, key or chain file. A real chain of five
/// RSA-4096 certificates is about 10 KiB; this leaves room while bounding memory and parse time.
pub const MAX_INPUT: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("is empty")]
    Empty,
    #[error("is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("has a \"-----BEGIN {0}-----\" line without its END line")]
    Unterminated(String),
    #[error("has a PEM block labelled {0:?} whose base64 body does not decode")]
    BadBase64(String),
    #[error("has trailing garbage after the last PEM block")]
    TrailingGarbage,
}

/// One PEM block, or the whole input when it is DER (label `None`).
pub struct Block {
    pub label: Option<String>,
    pub der: Zeroizing<Vec<u8>>,
}

/// Splits `input` into blocks following the rules in the module comment.
pub fn blocks(input: &[u8]) -> Result<Vec<Block>, PemError> {
    if input.len() > MAX_INPUT {
        return Err(PemError::TooLarge {
            size: input.len(),
            limit: MAX_INPUT,
        });
    }
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(PemError::Empty);
    }
    if !contains(input, b"-----BEGIN ") {
        return Ok(vec![Block {
            label: None,
            der: Zeroizing::new(input.to_vec()),
        }]);
    }
    let replaced: Zeroizing<String>;
    let text: &str = match String::from_utf8_lossy(input) {
        std::borrow::Cow::Borrowed(text) => text,
        // Not UTF-8: the copy with replacement characters holds the key's text as well (M1).
        std::borrow::Cow::Owned(text) => {
            replaced = Zeroizing::new(text);
            &replaced
        }
    };
    let mut out = Vec::new();
    let mut rest: &str = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after_begin = &rest[start + "-----BEGIN ".len()..];
        let label_end = after_begin
            .find("-----")
            .ok_or_else(|| PemError::Unterminated(String::new()))?;
        let label = after_begin[..label_end].to_owned();
        let body_start = &after_begin[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let body_len = body_start
            .find(&end_marker)
            .ok_or_else(|| PemError::Unterminated(label.clone()))?;
        // Sized once: a String grown by collecting leaves each outgrown buffer behind, with
        // part of the key's base64 in it.
        let mut body = Zeroizing::new(String::with_capacity(body_len));
        body.extend(
            body_start[..body_len]
                .chars()
                .filter(|c| !c.is_ascii_whitespace()),
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PemError::BadBase64(label.clone()))?;
        out.push(Block {
            label: Some(label),
            der: Zeroizing::new(der),
        });
        rest = &body_start[body_len + end_marker.len()..];
    }
    if !rest.trim().is_empty() {
        return Err(PemError::TrailingGarbage);
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Encodes one block as PEM with 64-character lines and a final newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Decodes a PEM string we wrote ourselves into the DER of each CERTIFICATE block.
pub fn certificates(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n";

    #[test]
    fn reads_blocks_and_der() {
        let input = format!("explanatory text\n{BODY}Bag Attributes\n{BODY}\n");
        let blocks = blocks(input.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label.as_deref(), Some("CERTIFICATE"));
        assert_eq!(blocks[0].der.as_slice(), &[1, 2, 3]);

        let der = super::blocks(&[0x30, 0x00]).unwrap();
        assert_eq!(der[0].label, None);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(blocks(b"  \n").err(), Some(PemError::Empty));
        assert_eq!(
            blocks(format!("{BODY}junk").as_bytes()).err(),
            Some(PemError::TrailingGarbage)
        );
        assert!(matches!(
            blocks(b"-----BEGIN CERTIFICATE-----\nAQID\n"),
            Err(PemError::Unterminated(_))
        ));
        let bad = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            blocks(bad.as_bytes()),
            Err(PemError::BadBase64(_))
        ));
        let big = vec![b'a'; MAX_INPUT + 1];
        assert!(matches!(blocks(&big), Err(PemError::TooLarge { .. })));
    }

    #[test]
    fn encode_round_trips() {
        let text = encode("CERTIFICATE", &[1, 2, 3]);
        assert_eq!(text, BODY);
        assert_eq!(certificates(&text), vec![vec![1, 2, 3]]);
    }
}
