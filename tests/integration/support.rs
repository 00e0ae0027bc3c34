//! A real `lockd serve` process per test, on a port of its own, killed when
//! the test is done; and small helpers to talk to it.

use lockd::client::{CallError, Client};
use lockd::xmlrpc::{Fault, Value};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

pub const LOCKD: &str = env!("CARGO_BIN_EXE_lockd");

/// A running daemon. Dropping it kills the process.
pub struct TestServer {
    child: Child,
    /// The lock directory.
    pub dir: PathBuf,
    /// `host:port` it listens on.
    pub addr: String,
    /// `http` or `https`.
    pub scheme: String,
    log: Arc<Mutex<String>>,
    _tmp: Option<TempDir>,
}

impl TestServer {
    /// A daemon on a fresh, empty lock directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A daemon on a fresh, empty lock directory, with extra `serve`
    /// arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let tmp = TempDir::new().unwrap();
        let mut server = Self::start_in(&tmp.path().join("locks"), args);
        server._tmp = Some(tmp);
        server
    }

    /// A daemon on `dir` with extra `serve` arguments.
    pub fn start_in(dir: &Path, args: &[&str]) -> Self {
        Self::try_start_in(dir, args).unwrap_or_else(|log| panic!("lockd did not start:\n{log}"))
    }

    /// Like [`start_in`](Self::start_in), but returns the daemon's output
    /// if it exits instead of listening.
    pub fn try_start_in(dir: &Path, args: &[&str]) -> Result<Self, String> {
        Self::try_start_under(&[], dir, args)
    }

    /// Like [`try_start_in`](Self::try_start_in), the daemon run by the
    /// command `wrapper` (strace, say) names first, if any.
    pub fn try_start_under(wrapper: &[&str], dir: &Path, args: &[&str]) -> Result<Self, String> {
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(LOCKD);
                command
            }
            None => Command::new(LOCKD),
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(args)
            .env("LOCKD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lockd");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1)
                    && let Some((scheme, rest)) = url.split_once("://")
                {
                    let addr = rest.split('/').next().unwrap().to_owned();
                    let _ = tx.send((scheme.to_owned(), addr));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((scheme, addr)) => Ok(Self {
                child,
                dir: dir.to_owned(),
                addr,
                scheme,
                log,
                _tmp: None,
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                std::thread::sleep(Duration::from_millis(100));
                Err(format!("{status}\n{}", log.lock().unwrap()))
            }
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url()).unwrap()
    }

    /// Calls `method` with string parameters; a transport error fails the test.
    pub fn call(&self, method: &str, params: &[&str]) -> Result<Value, Fault> {
        let params: Vec<Value> = params.iter().map(|&p| Value::from(p)).collect();
        match self.client().call(method, &params) {
            Ok(value) => Ok(value),
            Err(CallError::Fault(fault)) => Err(fault),
            Err(e) => panic!("calling {method}: {e}\n{}", self.log()),
        }
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.dir.clone()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGTERM, say) to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The value of the metric sample `name` (with its labels, if any)
    /// now.
    pub fn metric(&self, name: &str) -> f64 {
        sample(&self.scrape(), name)
    }

    /// The value of counter `name` (with its labels), 0 if it has no
    /// sample yet: a labelled counter appears at its first increment,
    /// while `family` (its name without labels) must be there.
    pub fn count(&self, family: &str, name: &str) -> f64 {
        let scrape = self.scrape();
        assert!(
            scrape.contains(&format!("# TYPE {family} counter")),
            "no counter {family} in\n{scrape}"
        );
        sample_if_any(&scrape, name).unwrap_or(0.0)
    }

    fn scrape(&self) -> String {
        let (status, scrape) = raw_http(&self.addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(status, 200, "{scrape}");
        scrape
    }

    /// Waits until `lockd_waiters` is `n`: that many clients wait in
    /// line for locks.
    pub fn wait_for_waiters(&self, n: usize) {
        wait_until(&format!("{n} waiters"), || {
            self.metric("lockd_waiters") == n as f64
        });
    }

    /// Waits up to `limit` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "still running after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `tests/python/scenario.py` prints: gocept.lockd's doctest, as
/// gocept.lockd answered it.
pub const GOCEPT_DOCTEST: &str = "\
lock('resource1', 'client1') -> None
lock('resource1', 'client2') -> Fault(1, \"Resource already locked by 'client1'\")
lock('resource2', 'client2') -> None
unlock('resource1', 'client2') -> Fault(3, \"Resource locked by 'client1' cannot be unlocked by 'client2'\")
unlock('resource1', 'client1') -> None
unlock('resource1', 'client1') -> Fault(2, 'Resource not locked')
";

/// The process strace runs (its only child).
pub fn traced(strace_pid: u32) -> i32 {
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

/// The daemon strace runs, killed when this is dropped: also when a check
/// fails, since strace, killed, would leave it running on its own.
pub struct Traced(pub i32);

impl Traced {
    /// The daemon of `server`, started under strace.
    pub fn of(server: &TestServer) -> Self {
        Self(traced(server.pid()))
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the daemon strace runs for a test.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// A fresh temporary directory with an empty `locks` directory in it; the
/// directory lives as long as the `TempDir`.
pub fn temp_lock_dir() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("locks");
    std::fs::create_dir(&dir).unwrap();
    (tmp, dir)
}

/// The files in `dir` that are not lockd's own (`.lockd*`).
pub fn lock_files(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with(".lockd"))
        .collect()
}

/// The spare files lockd keeps in `dir` (`.lockd-spare-N`).
pub fn spare_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".lockd-spare-"))
        })
        .collect()
}

/// Sends raw bytes on a fresh connection and returns the status code and
/// body of the answer (HTTP/1.0, so the server closes after one answer).
pub fn raw_http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, body.to_owned())
}

/// A POST of `body` to `/` as HTTP/1.0.
pub fn post(addr: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST / HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_http(addr, request.as_bytes())
}

/// The XML of a call of `method` with string parameters, as Python sends it.
pub fn call_xml(method: &str, params: &[&str]) -> String {
    let params: Vec<Value> = params.iter().map(|&p| Value::from(p)).collect();
    lockd::xmlrpc::encode_call(method, &params)
}

/// The fault code of a fault response body.
pub fn fault_code(body: &str) -> i32 {
    match lockd::xmlrpc::parse_response(body.as_bytes()) {
        Ok(Err(fault)) => fault.code,
        other => panic!("expected a fault, got {other:?} from {body:?}"),
    }
}

/// The holder of a lock file's content, after checking that the file is
/// as lockd writes it: the holder's line alone, ending in a newline.
pub fn holder_of(content: &str) -> &str {
    let holder = content
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline at the end of {content:?}"));
    assert!(!holder.contains('\n'), "more than one line in {content:?}");
    holder
}

/// Runs `tests/python/<script>` with `args`; fails the test if it fails.
/// Returns what it printed.
pub fn python(script: &str, args: &[&str]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/");
    run_ok(
        Command::new("python3")
            .arg(format!("{path}{script}"))
            .args(args),
    )
}

/// Runs `command`; fails the test, showing its output, if it fails.
/// Returns what it printed.
pub fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The value of the sample `name` (with its labels) in a scrape.
pub fn sample(scrape: &str, name: &str) -> f64 {
    sample_if_any(scrape, name).unwrap_or_else(|| panic!("no {name} in\n{scrape}"))
}

/// The value of the sample `name` (with its labels) in a scrape, if it
/// has one.
fn sample_if_any(scrape: &str, name: &str) -> Option<f64> {
    let value = scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?;
    Some(value.parse().unwrap())
}

/// Waits for `event` to have happened, looking every 10 ms; fails the
/// test after a minute without it.
pub fn wait_until(what: &str, mut event: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !event() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The block of `language` that follows `marker` in `doc`.
pub fn doc_block(doc: &str, marker: &str, language: &str) -> String {
    let after = &doc[doc.find(marker).expect(marker)..];
    let fence = format!("```{language}\n");
    let start = after.find(&fence).expect(&fence) + fence.len();
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_owned()
}

/// Reads one HTTP/1.1 answer from `reader`: its status line, and its body
/// (as long as its Content-Length says).
pub fn read_http_answer(reader: &mut impl std::io::BufRead) -> (String, String) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Runs the Python sessions (`>>>` blocks) of `doc` as one doctest in
/// `cwd`, against the daemon at `url` (for the docs' `http://127.0.0.1:8000/`
/// or `https://...`); fails the test if any example prints otherwise.
pub fn python_doctests(doc: &str, url: &str, cwd: &Path) {
    let doctest: String = doc
        .split("```python\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains(">>>"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("http://127.0.0.1:8000/", url)
        .replace("https://127.0.0.1:8000/", url);
    let check = "import doctest, sys, xmlrpc.client\n\
                 test = doctest.DocTestParser().get_doctest(sys.argv[1], {'xmlrpc': xmlrpc}, 'doc', 'doc', 0)\n\
                 runner = doctest.DocTestRunner()\n\
                 runner.run(test)\n\
                 sys.exit(1 if runner.failures or not runner.tries else 0)\n";
    run_ok(
        Command::new("python3")
            .current_dir(cwd)
            .args(["-c", check, &doctest]),
    );
}

/// An HTTP/1.1 POST of `body`, as one request of a kept-alive connection.
pub fn http11(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: lockd\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Held by tests that load both cores and time fresh clients meanwhile
/// (hostile clients, attacks on memory): one at a time, so that each
/// measures its own attack, not another test's.
static ALONE: Mutex<()> = Mutex::new(());

/// Waits until no other loading test runs; it runs alone until the
/// guard is dropped.
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory holding `lockd` and the given scripts, for PATH.
pub fn bin_dir(tmp: &Path, scripts: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(LOCKD, bin.join("lockd")).unwrap();
    for (name, text) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// A server answering every call with `answer`, `delay` between its
/// bytes; its URL.
pub fn answering(answer: String, delay: std::time::Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut request = [0; 65536];
                let _ = std::io::Read::read(&mut stream, &mut request);
                for byte in answer.as_bytes() {
                    std::thread::sleep(delay);
                    if std::io::Write::write_all(&mut stream, &[*byte]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}
