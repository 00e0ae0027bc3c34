//! The two text formats `/metrics` answers in: OpenMetrics, which lockd's
//! metrics are written in, for a scraper whose `Accept` asks for it (as
//! Prometheus's does), and the Prometheus text format 0.0.4 for everyone
//! else (curl, and scrapers that predate OpenMetrics).

/// OpenMetrics' media type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format's media type.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request with this `Accept` header asks for OpenMetrics: one
/// of its media ranges names it, with a quality above zero.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family
/// is named as its samples are (`_total`), and the lines 0.0.4 does not
/// have (`# UNIT`, `# EOF`) are left out.
pub fn as_text_004(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match described {
            Some((tag, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{tag}{name}{total} {text}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_does_not() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn counters_are_named_as_their_samples_and_openmetrics_lines_go() {
        let openmetrics = "# HELP lockd_requests Requests answered.\n\
                           # TYPE lockd_requests counter\n\
                           lockd_requests_total{method=\"lock\"} 3\n\
                           # HELP lockd_locks_held Locks held now.\n\
                           # TYPE lockd_locks_held gauge\n\
                           # UNIT lockd_locks_held locks\n\
                           lockd_locks_held 1\n\
                           # EOF\n";
        assert_eq!(
            as_text_004(openmetrics),
            "# HELP lockd_requests_total Requests answered.\n\
             # TYPE lockd_requests_total counter\n\
             lockd_requests_total{method=\"lock\"} 3\n\
             # HELP lockd_locks_held Locks held now.\n\
             # TYPE lockd_locks_held gauge\n\
             lockd_locks_held 1\n"
        );
    }
}
