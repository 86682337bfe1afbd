//! Redaction of what other programs print, before it becomes part of an error.
//!
//! A failed command's stderr is shown to whoever reads the error: the log, the renewal reason
//! in the API, events and the webhooks they go to. Provider CLIs and operators' scripts
//! sometimes print credentials there (`curl -v` prints the Authorization header, `set -x`
//! prints every expansion). The rule is deliberately broad, because a word lost from an error
//! costs less than a token leaked through one. Hidden, each replaced by [`REDACTED`]:
//!
//! - the value after a secret-looking name and `=` or `:`, in a word (`password=x`,
//!   `"token":"x"`, `--api-key=x`, `?access_token=x`) or as the next word (`password: x`,
//!   `Authorization: Bearer x`, `secret = x`); after a secret-looking flag (`--password x`);
//!   after `Bearer`. A value is the rest of the word or the next word (unless that word names
//!   a value itself), a quoted string whole; `Bearer`/`Basic`/`Token`/`Digest` right after the
//!   separator take the word after them along;
//! - the password of a URL (`https://user:x@host`);
//! - any long opaque string: [`OPAQUE_MIN`] or more characters of the base64, base64url or
//!   hex alphabets with both letters and digits (API tokens, keys, hashes; not paths, not
//!   UUIDs).
//!
//! A name is secret-looking when it contains, in any case, one of [`SECRET_WORDS`].

/// What stands where something was hidden.
pub(crate) const REDACTED: &str = "[redacted]";
/// Parts of names that mark what follows as a secret (`AWS_SECRET_ACCESS_KEY`, `api-key`,
/// `Authorization`, `passwd`, `X-Auth-Token`, ...).
pub(crate) const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "passw",
    "pwd",
    "key",
    "auth",
    "credential",
    "cookie",
    "session",
    "signature",
    "private",
];
/// The shortest run of token characters hidden even without a name before it.
pub(crate) const OPAQUE_MIN: usize = 32;
/// Words that introduce a credential rather than being one (`Authorization: Bearer x`).
const SCHEMES: &[&str] = &["bearer", "basic", "token", "digest"];

/// Whether `name` (a variable, a field, a flag) looks like it holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| lower.contains(word))
}

/// `text` with every secret the rule of the module header finds replaced by [`REDACTED`].
pub(crate) fn redact(text: &str) -> String {
    redact_words(&redact_pairs(text))
}

/// `name=value` and `name:value` inside a word: the value goes.
fn redact_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // text[..copied] is in `out` already.
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find(['=', ':']) {
        let sep = at + found;
        let value = &text[sep + 1..];
        at = sep + 1;
        if starts_value(value) && is_secret_name(name_before(&text[copied..sep])) {
            out.push_str(&text[copied..=sep]);
            out.push_str(REDACTED);
            copied = sep + 1 + value_len(value);
            at = copied;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Values in the next word (`password: x`, `--token x`, `Bearer x`), URL passwords and
/// opaque strings.
fn redact_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut value_next = false;
    let mut rest = text;
    loop {
        let space = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..space]);
        rest = &rest[space..];
        if rest.is_empty() {
            return out;
        }
        let word = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        let after = rest[word.len()..].trim_start();
        let names = names_next_value(word, after);
        // A word that names a value itself (`password= token: x`, `Authorization: Bearer x`)
        // is not that value: the value still comes next.
        if value_next && !names && word != "=" && word != ":" {
            out.push_str(REDACTED);
            rest = &rest[value_len(rest)..];
            value_next = false;
            continue;
        }
        value_next = value_next || names;
        out.push_str(&redact_word(word));
        rest = &rest[word.len()..];
    }
}

/// Whether `word` says that the next word is a secret: `password:`, `--token`, `Bearer`, or a
/// secret-looking name with `=`/`:` as the next word (`after`).
fn names_next_value(word: &str, after: &str) -> bool {
    let bare = word.trim_matches(['"', '\'']);
    let named = bare
        .strip_suffix([':', '='])
        .is_some_and(|name| is_secret_name(name.trim_matches(['"', '\''])));
    let flag = bare.starts_with('-') && !bare.contains('=') && is_secret_name(bare);
    let spaced = is_secret_name(bare) && (after.starts_with("= ") || after.starts_with(": "));
    named || flag || spaced || bare.eq_ignore_ascii_case("bearer")
}

/// A word with its URL password or, when it is opaque, whole, hidden.
fn redact_word(word: &str) -> std::borrow::Cow<'_, str> {
    if let Some(url) = redact_userinfo(word) {
        return url.into();
    }
    if is_opaque(word) {
        REDACTED.into()
    } else {
        word.into()
    }
}

/// `scheme://user:password@host...` with the password hidden; `None` for anything else.
fn redact_userinfo(word: &str) -> Option<String> {
    let authority_at = word.find("://")? + 3;
    let authority = &word[authority_at..];
    let authority = &authority[..authority.find(['/', '?', '#']).unwrap_or(authority.len())];
    let user_end = authority.rfind('@')?;
    let colon = authority[..user_end].find(':')?;
    Some(format!(
        "{}{}:{REDACTED}{}",
        &word[..authority_at],
        &authority[..colon],
        &word[authority_at + user_end..]
    ))
}

/// Whether `word` holds a long run of token characters mixing letters and digits (not a path,
/// not a UUID).
fn is_opaque(word: &str) -> bool {
    word.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)))
        .any(|part| {
            part.len() >= OPAQUE_MIN
                && !part.starts_with('/')
                && !is_uuid(part)
                && part.bytes().any(|b| b.is_ascii_digit())
                && part.bytes().any(|b| b.is_ascii_alphabetic())
        })
}

/// `8-4-4-4-12` hex digits: an id (events and certificates have them), not a secret.
fn is_uuid(part: &str) -> bool {
    let groups: Vec<&str> = part.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a value starts right here (not after a space, not `//` of a URL).
fn starts_value(s: &str) -> bool {
    s.chars().next().is_some_and(|c| !c.is_whitespace()) && !s.starts_with("//")
}

/// The name right before a separator: the run of name characters, past one closing quote.
fn name_before(s: &str) -> &str {
    let s = s.strip_suffix(['"', '\'']).unwrap_or(s);
    // Past the last character that is not part of a name, whatever its width in UTF-8.
    let start = s
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &s[start..]
}

/// How long the value at the start of `s` is: a quoted string (to its closing quote, or the
/// end of the line), else up to whitespace; a scheme word takes the next word along.
fn value_len(s: &str) -> usize {
    let len = match s.chars().next() {
        Some(quote @ ('"' | '\'')) => match s[1..].find([quote, '\n']) {
            Some(end) if s[1 + end..].starts_with(quote) => end + 2,
            Some(end) => end + 1,
            None => s.len(),
        },
        _ => s.find(char::is_whitespace).unwrap_or(s.len()),
    };
    let word = s[..len].trim_end_matches([',', ';']);
    let after = &s[len..];
    let gap = after.len() - after.trim_start_matches([' ', '\t']).len();
    if SCHEMES
        .iter()
        .any(|scheme| word.eq_ignore_ascii_case(scheme))
        && gap > 0
        && starts_value(&after[gap..])
    {
        return len + gap + value_len(&after[gap..]);
    }
    len
}

#[cfg(test)]
mod tests {

    #[test]
    fn names_after_wide_characters_do_not_split_them() {
        for text in [
            "Größe:10 token=abc",
            "clé=x",
            "{\"clé\":\"x\"}",
            "\u{fffd}\u{fffd}=1",
            "ü:ü",
        ] {
            let _ = name_before(text);
        }
        assert_eq!(name_before("Größe"), "e");
        assert_eq!(name_before("ä token"), "token");
        let out = redact("Größe:10 clé=x {\"clé\":\"x\"} \u{fffd}=1");
        assert!(out.contains("Größe"), "{out}");
    }

    use super::*;

    #[test]
    fn hides_what_follows_secret_names() {
        let cases = [
            ("password=hunter2 rest", "password=[redacted] rest"),
            ("api_key: abc123 next", "api_key: [redacted] next"),
            ("--token s3cr3t --zone x", "--token [redacted] --zone x"),
            ("--api-key=s3cr3t ok", "--api-key=[redacted] ok"),
            (
                r#"{"token":"a b c","zone":"x"}"#,
                r#"{"token":[redacted],"zone":"x"}"#,
            ),
            (
                r#"{"secret": "a b c", "zone": 1}"#,
                r#"{"secret": [redacted], "zone": 1}"#,
            ),
            (
                "Authorization: Bearer abc.def",
                "Authorization: Bearer [redacted]",
            ),
            ("password= token: x y", "password= token: [redacted] y"),
            (
                "authorization:Bearer abc.def x",
                "authorization:[redacted] x",
            ),
            ("sent Bearer abc then", "sent Bearer [redacted] then"),
            (
                "AWS_SECRET_ACCESS_KEY=wJalr/K7 ok",
                "AWS_SECRET_ACCESS_KEY=[redacted] ok",
            ),
            ("secret = swordfish ok", "secret = [redacted] ok"),
            (
                "GET /zones?access_token=abc&x=1 HTTP/1.1",
                "GET /zones?access_token=[redacted] HTTP/1.1",
            ),
            (
                "connect https://admin:pa55@dns.example:8443/api failed",
                "connect https://admin:[redacted]@dns.example:8443/api failed",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn hides_long_opaque_strings_but_not_paths_ids_or_prose() {
        let token = "ghp_0123456789abcdefABCDEF0123456789abcd";
        assert_eq!(redact(&format!("bad {token}.")), "bad [redacted]");
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.x";
        assert_eq!(redact(jwt), "[redacted]");
        for kept in [
            "zone acme.test is read-only",
            "error: cannot open /var/lib/certkeeper/hooks/publish-2024-provider-api.sh",
            "event 0190f3c4-5b6a-7c8d-9e0f-112233445566 refused",
            "curl: (22) The requested URL returned error: 401",
            "update of lbl.acme.test. failed at 12:00:01",
            "https://dns.example/api/v1/zones",
        ] {
            assert_eq!(redact(kept), kept);
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "DB_PASSWD",
            "X-Auth",
            "MY_PWD",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "zone"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
