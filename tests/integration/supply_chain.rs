//! What lockd's TLS and request parsing are built from, as Cargo.lock pins
//! it: every crate that parses what a client or peer sends over TLS is at
//! or past the fix of each RustSec advisory filed against it, and crates
//! with no maintained fixes are absent. `cargo audit` checks the whole tree
//! against the advisory database, which CI here cannot fetch (it lives on
//! GitHub); this is the check CI runs, and CONTRIBUTING.md says how to run
//! `cargo audit` by hand and when to raise these floors.

use std::collections::BTreeMap;

const LOCK: &str = include_str!("../../Cargo.lock");

/// Crate, the lowest version without a known advisory, and the advisories.
const FLOORS: &[(&str, &str, &str)] = &[
    ("rustls", "0.23.18", "RUSTSEC-2024-0336, RUSTSEC-2024-0399"),
    (
        "rustls-webpki",
        "0.103.13",
        "RUSTSEC-2023-0053, RUSTSEC-2026-0049, -0098, -0099, -0104",
    ),
    ("ring", "0.17.12", "RUSTSEC-2025-0009, RUSTSEC-2025-0010"),
    ("time", "0.3.47", "RUSTSEC-2020-0071, RUSTSEC-2026-0009"),
    ("tiny_http", "0.8.0", "RUSTSEC-2020-0031"),
];

/// Crates that must not be in the tree: the unmaintained `webpki`
/// (RUSTSEC-2023-0052) and OpenSSL bindings (lockd's TLS is rustls only).
const ABSENT: &[&str] = &["webpki", "openssl", "openssl-sys"];

/// Every package of Cargo.lock: name to its versions.
fn packages() -> BTreeMap<String, Vec<String>> {
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name = None;
    for line in LOCK.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("version = ")
            && let Some(name) = name.take()
        {
            packages
                .entry(name)
                .or_default()
                .push(value.trim_matches('"').to_owned());
        }
    }
    packages
}

/// `major.minor.patch` as numbers (a pre-release counts as its release).
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text
        .split(['-', '+'])
        .next()
        .unwrap()
        .split('.')
        .map(|p| p.parse::<u64>().unwrap());
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn the_tls_stack_is_past_every_advisory_filed_against_it() {
    let packages = packages();
    assert!(packages.len() > 100, "{} packages read", packages.len());
    for (name, floor, advisories) in FLOORS {
        let versions = packages
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
        for found in versions {
            assert!(
                version(found) >= version(floor),
                "{name} {found} is below {floor} ({advisories})"
            );
        }
    }
    for name in ABSENT {
        assert!(!packages.contains_key(*name), "{name} is in Cargo.lock");
    }
    // One rustls: tiny_http's own TLS (rustls 0.20) is not built in.
    assert_eq!(packages["rustls"].len(), 1, "{:?}", packages["rustls"]);
}

#[test]
fn versions_compare_as_numbers() {
    assert!(version("0.23.18") > version("0.23.5"));
    assert!(version("0.103.17") >= version("0.103.13"));
    assert!(version("0.20.9") < version("0.23.18"));
    assert!(version("1.0.0-alpha.1") < version("1.0.1"));
}
