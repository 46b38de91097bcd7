//! `ws-proxy --config FILE`: reading a TOML file into a typed value, with every problem one
//! line, `file:line: key: problem`. Which keys there are is the settings' business: this module
//! knows TOML and files, not them.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration file's text, for parsing and for naming places in it.
pub(crate) struct Source {
    shown: String,
    text: String,
}

impl Source {
    pub(crate) fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "--config: cannot read {:?}: {e}",
                path.display().to_string()
            )
        })?;
        Ok(Self {
            shown: path.display().to_string(),
            text,
        })
    }

    /// The file as a `T`; an error names the line and the key (`pools.a.ping_interval`), and
    /// suggests the key meant for a misspelt one.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        toml::from_str(&self.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let message = e.message().trim();
            let message = suggest(message).unwrap_or_else(|| message.to_owned());
            let line = self.line(at);
            match key_at(&self.text, at) {
                // A misplaced key inside a table: name the table ("pools.a.ping_interval").
                Some(key) if !message.starts_with("unknown field") || key.contains('.') => {
                    format!("{}:{line}: {key}: {message}", self.shown)
                }
                _ => format!("{}:{line}: {message}", self.shown),
            }
        })
    }

    /// `file:line: what` for the value starting at byte `offset`.
    pub(crate) fn error_at(&self, offset: usize, what: &str) -> String {
        format!("{}:{}: {what}", self.shown, self.line(offset))
    }

    /// `file: what`, for a problem with no one place.
    pub(crate) fn error(&self, what: &str) -> String {
        format!("{}: {what}", self.shown)
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
}

/// The dotted key whose value starts at `offset`: `balance`, `pools.chat.balance`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    // The table the line is in, from the last header above it.
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// serde's "unknown field `balanse`, expected one of ..." as "unknown key `balanse` (did you
/// mean `balance`?)".
fn suggest(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let best = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (strsim(unknown, known), known))
        .min();
    Some(match best {
        Some((d, known)) if d <= 2 + unknown.len() / 4 => {
            format!("unknown field `{unknown}` (did you mean `{known}`?)")
        }
        // A short list (a pool's keys) helps; the top level's would be a wall of text.
        _ if rest.matches('`').count() <= 24 => format!("unknown field `{unknown}`{rest}"),
        _ => format!("unknown field `{unknown}`"),
    })
}

/// Edit distance (Levenshtein), for suggestions.
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_with_their_table() {
        let text = "a = 1\n[pools.chat]\nbalance = \"x\"\n";
        assert_eq!(
            key_at(text, text.find("\"x\"").unwrap()).as_deref(),
            Some("pools.chat.balance")
        );
        assert_eq!(key_at(text, 4).as_deref(), Some("a"));
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            suggest("unknown field `balanse`, expected one of `upstream`, `balance`").as_deref(),
            Some("unknown field `balanse` (did you mean `balance`?)")
        );
        assert_eq!(
            suggest("unknown field `zzzzzzzz`, expected one of `upstream`, `balance`").as_deref(),
            Some("unknown field `zzzzzzzz`, expected one of `upstream`, `balance`")
        );
    }
}
