//! `GET /`: a page for people, listing the held locks. Self-contained (no
//! external assets), with a filter box and a refresh every few seconds.

use crate::locks::Lock;
use crate::time::iso8601;
use std::fmt::Write as _;

/// Seconds between refreshes.
const REFRESH: u32 = 5;

/// The page for `locks`, as of `now_ms` (milliseconds since the epoch).
pub fn render(locks: &[Lock], location: &str, now_ms: u64) -> String {
    let mut rows = String::new();
    for lock in locks {
        let expires = match lock.expires_ms {
            Some(ms) => format!(
                "{} (in {:.1} s)",
                iso8601(ms as f64 / 1000.0),
                ms.saturating_sub(now_ms) as f64 / 1000.0
            ),
            None => "—".to_owned(),
        };
        let _ = writeln!(
            rows,
            "<tr><td class=resource>{}</td><td class=holder>{}</td><td class=token>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&lock.resource),
            escape(&lock.client),
            lock.token,
            iso8601(lock.acquired_ms as f64 / 1000.0),
            expires
        );
    }
    let count = match locks.len() {
        1 => "1 lock held".to_owned(),
        n => format!("{n} locks held"),
    };
    format!(
        r#"<!doctype html>
<html lang=en>
<head>
<meta charset=utf-8>
<title>lockd: {count}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; margin: 0 0 .2em; }}
p.meta {{ color: #666; margin: 0 0 1em; }}
input {{ font: inherit; padding: .3em .5em; width: 24em; margin-bottom: 1em; }}
table {{ border-collapse: collapse; min-width: 60em; }}
th, td {{ text-align: left; padding: .35em .8em; border-bottom: 1px solid #ddd; }}
th {{ background: #f3f3f3; }}
td.token {{ font-variant-numeric: tabular-nums; }}
tr.hidden {{ display: none; }}
p.empty {{ color: #666; }}
</style>
</head>
<body>
<h1>lockd</h1>
<p class=meta><span id=count>{count}</span> in {location} · as of {now} · refreshed every {REFRESH} s</p>
<input id=filter type=search placeholder="Filter by resource or holder" autofocus>
<table>
<thead><tr><th>Resource</th><th>Holder</th><th>Token</th><th>Since</th><th>Expires</th></tr></thead>
<tbody id=locks>
{rows}</tbody>
</table>
{empty}
<script>
const filter = document.getElementById('filter');
filter.value = decodeURIComponent(location.hash.slice(1));
function apply() {{
  const needle = filter.value.toLowerCase();
  let shown = 0;
  for (const row of document.querySelectorAll('#locks tr')) {{
    const text = row.querySelector('.resource').textContent + ' ' + row.querySelector('.holder').textContent;
    const hide = needle !== '' && !text.toLowerCase().includes(needle);
    row.classList.toggle('hidden', hide);
    if (!hide) shown++;
  }}
  document.getElementById('count').textContent = needle === '' ? '{count}' : shown + ' of {count}';
  history.replaceState(null, '', needle === '' ? location.pathname : '#' + encodeURIComponent(filter.value));
}}
filter.addEventListener('input', apply);
apply();
setTimeout(() => location.reload(), {REFRESH} * 1000);
</script>
</body>
</html>
"#,
        location = escape(location),
        now = iso8601(now_ms as f64 / 1000.0),
        empty = if locks.is_empty() {
            "<p class=empty>No locks are held.</p>"
        } else {
            ""
        },
    )
}

/// `text` with the characters HTML gives meaning to escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_listed_with_names_escaped() {
        let lock = Lock {
            resource: "<vm & 'disk'>".into(),
            client: "host\"a".into(),
            token: 42,
            acquired_ms: 0,
            ttl_ms: Some(30_000),
            expires_ms: Some(30_000),
        };
        let page = render(&[lock], "/var/lib/lockd", 10_000);
        assert!(page.contains("&lt;vm &amp; &#39;disk&#39;&gt;"), "{page}");
        assert!(page.contains("host&quot;a"));
        assert!(page.contains("<td class=token>42</td>"));
        assert!(page.contains("1970-01-01T00:00:30.000Z (in 20.0 s)"));
        assert!(page.contains("1 lock held"));
        assert!(!page.contains("No locks are held"));
        assert!(render(&[], "d", 0).contains("No locks are held"));
    }
}
