//! Hostile and unusual resource names: stored inside the lock directory,
//! under a reversible name, and refused where they cannot be stored.

use crate::support::{TestServer, lock_files};
use std::collections::BTreeSet;

#[test]
fn hostile_names_stay_inside_the_directory_and_round_trip() {
    let server = TestServer::start();
    let parent = server.dir.parent().unwrap().to_owned();
    let cases = [
        ("../x", "%2E.%2Fx.resource.lock"),
        ("a/b", "a%2Fb.resource.lock"),
        ("/abs", "%2Fabs.resource.lock"),
        ("/etc/passwd", "%2Fetc%2Fpasswd.resource.lock"),
        (".hidden", "%2Ehidden.resource.lock"),
        ("..", "%2E..resource.lock"),
        ("ünï cødé", "%C3%BCn%C3%AF%20c%C3%B8d%C3%A9.resource.lock"),
        ("with space", "with%20space.resource.lock"),
        ("100%", "100%25.resource.lock"),
        ("vm-42.example.com", "vm-42.example.com.resource.lock"),
    ];
    let long = "r".repeat(241); // 241 + ".resource.lock" = 255 bytes
    let mut expected = BTreeSet::new();
    for (name, file) in cases.iter().copied().chain([(long.as_str(), "")]) {
        assert_eq!(
            server.call("lock", &[name, "owner"]),
            Ok(lockd::xmlrpc::Value::Nil),
            "{name:?}"
        );
        let fault = server.call("lock", &[name, "other"]).unwrap_err();
        assert_eq!(
            fault.message, "Resource already locked by 'owner'",
            "{name:?}"
        );
        expected.insert(if file.is_empty() {
            format!("{long}.resource.lock")
        } else {
            file.to_owned()
        });
    }
    assert_eq!(lock_files(&server.dir), expected);
    // Nothing appeared beside the lock directory, and no subdirectory in it.
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["locks"]);
    assert!(
        std::fs::read_dir(&server.dir)
            .unwrap()
            .all(|e| e.unwrap().file_type().unwrap().is_file())
    );
    for (name, _) in cases.iter().copied().chain([(long.as_str(), "")]) {
        assert_eq!(
            server.call("unlock", &[name, "owner"]),
            Ok(lockd::xmlrpc::Value::Nil),
            "{name:?}"
        );
    }
    assert_eq!(lock_files(&server.dir), BTreeSet::new());
}

#[test]
fn names_that_cannot_be_stored_get_fault_4_and_change_nothing() {
    let server = TestServer::start();
    let too_long = "r".repeat(242); // one byte over the file name limit
    let encodes_too_long = "é".repeat(50); // 100 bytes, 300 encoded
    let cases: [(&str, &str); 11] = [
        ("", "c"),
        (&too_long, "c"),
        (&encodes_too_long, "c"),
        ("r", ""),
        ("r", "line\nbreak"),
        ("r", "carriage\rreturn"),
        ("r", "nul\0"),
        // Characters XML 1.0 cannot carry: every name goes back in replies.
        ("nul\0byte", "c"),
        ("ctl", "a\u{1}b"),
        ("r\u{1f}", "c"),
        ("r", "\u{fffe}"),
    ];
    for (resource, client) in cases {
        for method in ["lock", "unlock"] {
            let fault = server.call(method, &[resource, client]).unwrap_err();
            assert_eq!(fault.code, 4, "{method}({resource:?}, {client:?}): {fault}");
            assert!(
                fault.message.starts_with("Invalid name: "),
                "{}",
                fault.message
            );
        }
    }
    assert_eq!(lock_files(&server.dir), BTreeSet::new());
}

#[test]
fn holder_names_are_quoted_as_python_repr_does() {
    let server = TestServer::start();
    for (client, quoted) in [
        ("it's", "\"it's\""),
        ("tab\there", "'tab\\there'"),
        ("back\\slash", "'back\\\\slash'"),
        ("both ' and \"", "'both \\' and \"'"),
    ] {
        server.call("lock", &["q", client]).unwrap();
        let fault = server.call("lock", &["q", "x"]).unwrap_err();
        assert_eq!(
            fault.message,
            format!("Resource already locked by {quoted}")
        );
        let fault = server.call("unlock", &["q", "x"]).unwrap_err();
        assert_eq!(
            fault.message,
            format!("Resource locked by {quoted} cannot be unlocked by 'x'")
        );
        server.call("unlock", &["q", client]).unwrap();
    }
}
