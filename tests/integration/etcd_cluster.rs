//! etcd clusters for the tests: members on 127.0.0.1, each with a data
//! directory of its own, killed, paused and restarted on demand, and all
//! stopped when the cluster is dropped.

use crate::support::{TestServer, temp_lock_dir, wait_until};
use lockd::etcd::{Etcd, Status};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct EtcdCluster {
    tmp: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// A port free now (the kernel's choice), for a member to listen on.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> Self {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            tmp: TempDir::new().unwrap(),
            members,
            initial_cluster,
        };
        for i in 0..n {
            cluster.launch(i, "new");
        }
        cluster.wait_for_leader();
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(&self.members[i].name)
    }

    fn launch(&mut self, i: usize, state: &str) {
        let data_dir = self.data_dir(i);
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let process = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "lockd-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (tests/setup.sh installs it)");
        self.members[i].process = Some(process);
    }

    /// A lockd host serving from this cluster, with no lock-delay.
    pub fn lockd_host(&self) -> TestServer {
        self.lockd_host_with(&["--lock-delay", "0"])
    }

    /// A lockd host serving from this cluster, with `args` besides.
    pub fn lockd_host_with(&self, args: &[&str]) -> TestServer {
        // The directory is not used; it only has to outlive the start.
        let (_tmp, dir) = temp_lock_dir();
        let urls = self.urls().join(",");
        let mut all = vec!["--etcd", &urls];
        all.extend_from_slice(args);
        TestServer::start_in(&dir, &all)
    }

    /// The members' client URLs.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i, "existing");
    }

    /// SIGSTOP or SIGCONT to member `i`.
    pub fn pause(&self, i: usize, paused: bool) {
        let process = self.members[i].process.as_ref().expect("a running member");
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(process.id() as i32, signal) }, 0);
    }

    /// Member `i`'s status, if it answers within a second.
    fn status(&self, i: usize) -> Option<Status> {
        let client = Etcd::new(&[self.url(i)]).ok()?;
        client.status(Instant::now() + Duration::from_secs(1)).ok()
    }

    /// The index of the member that leads now, if every running member
    /// answers and follows it.
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<(usize, Status)> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .map(|i| Some((i, self.status(i)?)))
            .collect::<Option<_>>()?;
        let leader = statuses.first()?.1.leader;
        if statuses.iter().any(|(_, s)| s.leader != leader) {
            return None;
        }
        statuses
            .iter()
            .find(|(_, s)| s.member == leader)
            .map(|(i, _)| *i)
    }

    /// Waits until the running members agree on a leader; returns it.
    pub fn wait_for_leader(&self) -> usize {
        let mut leader = None;
        wait_until("an etcd leader", || {
            leader = self.leader();
            leader.is_some()
        });
        leader.unwrap()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(process) = &self.members[i].process {
                // A paused member must wake to die.
                // SAFETY: kill(2) of our own child, not yet reaped.
                unsafe { libc::kill(process.id() as i32, libc::SIGCONT) };
            }
            self.kill(i);
        }
    }
}
