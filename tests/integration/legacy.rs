//! A lock directory written by gocept.lockd is honoured as it is.

use crate::support::{TestServer, holder_of, lock_files, temp_lock_dir};
use lockd::xmlrpc::Value;

#[test]
fn gocept_lock_files_are_honoured_after_a_switch() {
    let (_tmp, dir) = temp_lock_dir();
    // gocept.lockd wrote the bare client, no newline, under the raw name.
    std::fs::write(dir.join("legacy.resource.lock"), "oldclient").unwrap();
    std::fs::write(dir.join("my vm.resource.lock"), "vmclient").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a lock").unwrap();
    let server = TestServer::start_in(&dir, &[]);

    let fault = server.call("lock", &["legacy", "newclient"]).unwrap_err();
    assert_eq!(
        (fault.code, fault.message.as_str()),
        (1, "Resource already locked by 'oldclient'")
    );
    let fault = server.call("unlock", &["legacy", "newclient"]).unwrap_err();
    assert_eq!(
        fault.message,
        "Resource locked by 'oldclient' cannot be unlocked by 'newclient'"
    );
    let fault = server.call("lock", &["my vm", "other"]).unwrap_err();
    assert_eq!(fault.message, "Resource already locked by 'vmclient'");
    // Left as gocept.lockd wrote them: no token (0), which check never
    // confirms.
    assert_eq!(
        std::fs::read_to_string(dir.join("legacy.resource.lock")).unwrap(),
        "oldclient"
    );
    let status = server.call("lockd.status", &["legacy"]).unwrap();
    assert_eq!(status.member("token"), Some(&Value::I8(0)));
    assert_eq!(
        server.call("lockd.check", &["legacy", "0"]),
        Ok(Value::Bool(false))
    );

    assert_eq!(
        server.call("unlock", &["legacy", "oldclient"]),
        Ok(Value::Nil)
    );
    assert!(!dir.join("legacy.resource.lock").exists());
    assert_eq!(
        server.call("unlock", &["my vm", "vmclient"]),
        Ok(Value::Nil)
    );
    assert!(!dir.join("my vm.resource.lock").exists());
    // Once released, the resource is lockd's like any other.
    assert_eq!(
        server.call("lock", &["legacy", "newclient"]),
        Ok(Value::Nil)
    );
    assert_eq!(
        holder_of(&std::fs::read_to_string(dir.join("legacy.resource.lock")).unwrap()),
        "newclient"
    );
    // Files that are not lock files are left alone.
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "not a lock"
    );
}

#[test]
fn reused_lock_files_hold_exactly_their_holder() {
    let (_tmp, dir) = temp_lock_dir();
    // Longer than anything written after it, and without a newline.
    std::fs::write(
        dir.join("legacy.resource.lock"),
        "a-rather-long-old-client-name",
    )
    .unwrap();
    let server = TestServer::start_in(&dir, &[]);
    server
        .call("unlock", &["legacy", "a-rather-long-old-client-name"])
        .unwrap();
    // Removed lock files are recycled for new locks: whatever a file held
    // before, a new lock file holds exactly its holder.
    let clients = [
        "x",
        "a-much-longer-client-name-than-before",
        "yy",
        "z",
        "medium-name",
    ];
    for (round, client) in clients.iter().enumerate() {
        for i in 0..3 {
            let resource = format!("r{round}-{i}");
            server.call("lock", &[&resource, client]).unwrap();
            let content = std::fs::read_to_string(dir.join(format!("{resource}.resource.lock")));
            assert_eq!(holder_of(&content.unwrap()), *client, "{resource}");
        }
        for i in 0..3 {
            server
                .call("unlock", &[&format!("r{round}-{i}"), client])
                .unwrap();
        }
    }
    assert_eq!(lock_files(&dir).len(), 0);
}
