//! The pages lockd answers GET with, beside XML-RPC: the status page for
//! people, and `/metrics` for Prometheus.

use super::answer::Answer;
use super::exposition;
use super::status_page;
use crate::locks::Lockd;
use crate::tls::Relayed;

/// The status page for `url`: its query may name a `prefix` and a page
/// (`after`).
pub fn status(lockd: &Lockd, url: &str) -> Answer {
    let query = status_page::Query::parse(url.split_once('?').map_or("", |(_, q)| q));
    // Counting the locks grows with them: in turn with the lists.
    let _turn = crate::gate::heavy();
    let page = lockd.count(&query.prefix).and_then(|total| {
        let locks = lockd.list_page(&query.prefix, query.after.as_deref(), status_page::ROWS)?;
        Ok((total, locks))
    });
    match page {
        Ok((total, locks)) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let page = status_page::Page {
                locks: &locks,
                total,
                query: &query,
                location: lockd.location(),
                now_ms,
            };
            Answer::new(200, "text/html; charset=utf-8", page.render())
        }
        Err(e) => Answer::text(503, format!("{e}\n")),
    }
}

/// `/metrics`: lockd's, and with TLS its connections', in OpenMetrics if
/// the scraper's `accept` asks for it, else in the Prometheus text format.
pub fn metrics(lockd: &Lockd, relayed: Option<&Relayed>, accept: Option<&str>) -> Answer {
    let transport = relayed.map_or_else(Vec::new, Relayed::samples);
    match lockd.metrics_text_with(transport) {
        Ok(text) if exposition::wants_openmetrics(accept) => {
            Answer::new(200, exposition::OPENMETRICS, text)
        }
        Ok(text) => Answer::new(200, exposition::TEXT_004, exposition::as_text_004(&text)),
        Err(e) => Answer::text(503, format!("{e}\n")),
    }
}
