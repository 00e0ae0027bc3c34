//! `GET /`: a page for people, listing the held locks. Self-contained (no
//! external assets), with a filter box and a refresh every few seconds.

use crate::locks::Lock;
use crate::time::iso8601;
use std::fmt::Write as _;

/// Seconds between refreshes.
const REFRESH: u32 = 5;

/// Rows a page shows at most.
pub const ROWS: u32 = 300;

/// What a status page's URL asks for: the locks whose resource starts with
/// `prefix`, from after `after`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub prefix: String,
    pub after: Option<String>,
}

impl Query {
    /// The query part of a URL (`prefix=...&after=...`, form-encoded).
    pub fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = form_decode(value);
            match name {
                "prefix" => parsed.prefix = value,
                "after" if !value.is_empty() => parsed.after = Some(value),
                _ => {}
            }
        }
        parsed
    }
}

/// One status page: a page of locks and how many there are in all.
pub struct Page<'a> {
    pub locks: &'a [Lock],
    pub total: u64,
    pub query: &'a Query,
    pub location: &'a str,
    pub now_ms: u64,
}

impl Page<'_> {
    pub fn render(&self) -> String {
        render(self)
    }
}

/// `value` form-decoded: `+` a space, `%XX` a byte (as UTF-8, lossily).
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// `text` form-encoded, for a link.
fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                out.push(byte as char)
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// The page, as of `now_ms` (milliseconds since the epoch).
fn render(page: &Page) -> String {
    let Page {
        locks,
        total,
        query,
        location,
        now_ms,
    } = *page;
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
    let matching = match query.prefix.as_str() {
        "" => String::new(),
        prefix => format!(" starting with “{}”", escape(prefix)),
    };
    let count = match total {
        1 => format!("1 lock held{matching}"),
        n => format!("{n} locks held{matching}"),
    };
    // More than one page: say which, and link the next.
    let paging = if locks.len() as u64 == total && query.after.is_none() {
        String::new()
    } else {
        let next = match (locks.len() as u32 == ROWS, locks.last()) {
            (true, Some(last)) => format!(
                " · <a id=next href=\"?prefix={}&amp;after={}\">next {ROWS}</a>",
                form_encode(&query.prefix),
                form_encode(&last.resource)
            ),
            _ => String::new(),
        };
        let from = match &query.after {
            Some(after) => format!(" after “{}”", escape(after)),
            None => String::new(),
        };
        format!(
            "<p class=meta>Showing {} of them{from}, by resource · <a href=\"?prefix={}\">first page</a>{next}</p>",
            locks.len(),
            form_encode(&query.prefix)
        )
    };
    let locks_empty = locks.is_empty();
    let location = escape(location);
    let prefix_value = escape(&query.prefix);
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
{paging}
<form method=get><input name=prefix type=search value="{prefix_value}" placeholder="Resources starting with (on the server)"></form>
<input id=filter type=search placeholder="Filter this page by resource or holder" autofocus>
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
        now = iso8601(now_ms as f64 / 1000.0),
        empty = if locks_empty {
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
        let query = Query::default();
        let page = |locks: &[Lock], total| {
            Page {
                locks,
                total,
                query: &query,
                location: "/var/lib/lockd",
                now_ms: 10_000,
            }
            .render()
        };
        let shown = page(std::slice::from_ref(&lock), 1);
        assert!(shown.contains("&lt;vm &amp; &#39;disk&#39;&gt;"), "{shown}");
        assert!(shown.contains("host&quot;a"));
        assert!(shown.contains("<td class=token>42</td>"));
        assert!(shown.contains("1970-01-01T00:00:30.000Z (in 20.0 s)"));
        assert!(shown.contains("1 lock held"));
        assert!(!shown.contains("No locks are held"));
        assert!(!shown.contains("Showing"));
        assert!(page(&[], 0).contains("No locks are held"));
    }

    #[test]
    fn a_full_page_of_many_says_so_and_links_the_next() {
        let locks: Vec<Lock> = (0..ROWS)
            .map(|i| Lock {
                resource: format!("vm/{i:04} x"),
                client: "c".into(),
                token: 1,
                acquired_ms: 0,
                ttl_ms: None,
                expires_ms: None,
            })
            .collect();
        let query = Query::parse("prefix=vm%2F&after=");
        assert_eq!(query.prefix, "vm/");
        assert_eq!(query.after, None);
        let shown = Page {
            locks: &locks,
            total: 1000,
            query: &query,
            location: "d",
            now_ms: 0,
        }
        .render();
        assert!(
            shown.contains("1000 locks held starting with “vm/”"),
            "{shown}"
        );
        assert!(shown.contains("Showing 300 of them"), "{shown}");
        assert!(
            shown.contains("href=\"?prefix=vm/&amp;after=vm/0299%20x\">next 300</a>"),
            "{shown}"
        );
    }

    #[test]
    fn queries_are_form_decoded() {
        let query = Query::parse("after=a+b%2Fc%zz%e2%9c%93&prefix=%");
        assert_eq!(query.after.as_deref(), Some("a b/c%zz✓"));
        assert_eq!(query.prefix, "%");
    }
}
