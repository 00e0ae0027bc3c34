//! etcd clusters for the tests: members on 127.0.0.1, each with a data
//! directory of its own, killed, paused and restarted on demand, and all
//! stopped when the cluster is dropped.

use crate::pki::Pki;
use crate::support::{TestServer, temp_lock_dir, wait_until};
use lockd::etcd::{Etcd, Status, TlsFiles};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct EtcdCluster {
    tmp: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// With TLS on the client ports (and client certificates required).
    tls: Option<Pki>,
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
        Self::start_with(n, None)
    }

    /// The same, serving clients over TLS with certificates of `pki`'s
    /// CA, and asking for theirs.
    pub fn start_tls(n: usize) -> Self {
        Self::start_with(n, Some(Pki::new()))
    }

    fn start_with(n: usize, tls: Option<Pki>) -> Self {
        let mut cluster = Self {
            tmp: TempDir::new().unwrap(),
            members: Vec::new(),
            initial_cluster: String::new(),
            tls,
        };
        // A port the kernel gave another test meanwhile makes a member
        // exit at start: then again on other ports.
        for _ in 0..3 {
            cluster.members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    process: None,
                })
                .collect();
            cluster.initial_cluster = cluster
                .members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for i in 0..n {
                let _ = std::fs::remove_dir_all(cluster.data_dir(i));
                cluster.launch(i, "new");
            }
            if cluster.came_up() {
                return cluster;
            }
            for i in 0..n {
                cluster.kill(i);
            }
        }
        panic!("etcd did not start: {}", cluster.logs());
    }

    /// Waits until the members agree on a leader; false if one exited.
    fn came_up(&mut self) -> bool {
        let start = Instant::now();
        while self.leader().is_none() {
            let exited = self.members.iter_mut().any(|m| {
                m.process
                    .as_mut()
                    .is_some_and(|p| p.try_wait().ok().flatten().is_some())
            });
            if exited {
                return false;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "waited a minute for an etcd leader: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// What the members logged.
    fn logs(&self) -> String {
        let logs: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                let log = self.tmp.path().join(format!("{}.log", m.name));
                std::fs::read_to_string(log).unwrap_or_default()
            })
            .collect();
        logs.join("\n")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(&self.members[i].name)
    }

    fn launch(&mut self, i: usize, state: &str) {
        let data_dir = self.data_dir(i);
        let member = &self.members[i];
        let client = self.url(i);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("{}.log", member.name)))
            .unwrap();
        let mut etcd = Command::new("etcd");
        if let Some(pki) = &self.tls {
            etcd.args(["--cert-file", &pki.arg("server")])
                .args(["--key-file", &pki.arg("server-key")])
                .args(["--trusted-ca-file", &pki.arg("ca")])
                .arg("--client-cert-auth");
        }
        let process = etcd
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
            .stderr(log)
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
        let mut all = vec!["--etcd".to_owned(), urls];
        if let Some(pki) = &self.tls {
            for (flag, file) in [
                ("--etcd-ca", "ca"),
                ("--etcd-cert", "client"),
                ("--etcd-key", "client-key"),
            ] {
                all.extend([flag.to_owned(), pki.arg(file)]);
            }
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        TestServer::start_in(&dir, &all)
    }

    /// The members' client URLs.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The certificates of a cluster started with TLS.
    pub fn pki(&self) -> &Pki {
        self.tls.as_ref().expect("a cluster with TLS")
    }

    /// A client for members `urls` of this cluster.
    pub fn client(&self, urls: &[String]) -> Etcd {
        let tls = self.tls.as_ref().map(|pki| {
            TlsFiles {
                ca: Some(pki.file("ca")),
                cert: Some(pki.file("client")),
                key: Some(pki.file("client-key")),
            }
            .load()
            .unwrap()
            .unwrap()
        });
        Etcd::with_tls(urls, tls).unwrap()
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
        let client = self.client(&[self.url(i)]);
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
