//! `ws-proxy --config FILE`: the keys of [`Settings`] in TOML, plus named pools and routes.
//! Every problem is one line, `file:line: key: problem`.

use std::path::Path;

use crate::settings::Settings;

/// Reads and checks the file at `path`.
pub(crate) fn load(path: &Path) -> Result<Settings, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "--config: cannot read {:?}: {e}",
            path.display().to_string()
        )
    })?;
    let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let settings: Settings = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let message = e.message().trim();
        let message = suggest(message).unwrap_or_else(|| message.to_owned());
        match key_at(&text, at) {
            // A misplaced key inside a table: name the table ("pools.a.ping_interval").
            Some(key) if !message.starts_with("unknown field") || key.contains('.') => {
                format!("{shown}:{}: {key}: {message}", line(at))
            }
            _ => format!("{shown}:{}: {message}", line(at)),
        }
    })?;
    for (name, pool) in &settings.pools {
        if pool.upstream.is_empty() {
            return Err(format!(
                "{shown}: pools.{name}: a pool needs at least one upstream"
            ));
        }
    }
    for route in &settings.routes {
        let prefix = route.prefix.get_ref();
        if !prefix.starts_with('/') {
            let at = line(route.prefix.span().start);
            return Err(format!(
                "{shown}:{at}: routes.prefix: {prefix:?} must start with /"
            ));
        }
        let pool = route.pool.get_ref();
        if !settings.pools.contains_key(pool) {
            let at = line(route.pool.span().start);
            return Err(format!(
                "{shown}:{at}: routes.pool: no pool named {pool:?} (define [pools.{pool}])"
            ));
        }
    }
    Ok(settings)
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
        _ if rest.matches('`').count() <= 16 => format!("unknown field `{unknown}`{rest}"),
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
