//! A lock directory written by gocept.lockd is honoured as it is.

use crate::support::TestServer;
use lockd::xmlrpc::Value;

#[test]
fn gocept_lock_files_are_honoured_after_a_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    std::fs::create_dir(&dir).unwrap();
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
        std::fs::read_to_string(dir.join("legacy.resource.lock")).unwrap(),
        "newclient\n"
    );
    // Files that are not lock files are left alone.
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "not a lock"
    );
}
