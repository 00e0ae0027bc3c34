//! A thread that accepts connections on a listening socket of lockd's own
//! and hands each to a function, until it is told to stop: the TLS front
//! door's and the plain front door's.

use crate::socket;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The accept thread of one listening socket.
pub struct Acceptor {
    socket: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Starts a thread named `name` accepting on `socket`; `take` gets
    /// each connection and its client's address, on that thread (it
    /// should only hand the connection on).
    pub fn start(
        name: &str,
        socket: TcpListener,
        mut take: impl FnMut(TcpStream, SocketAddr) + Send + 'static,
    ) -> io::Result<Self> {
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, stopping) = (socket.clone(), stopping.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || accept(&socket, &stopping, &mut take))?
        };
        Ok(Self {
            socket,
            stopping,
            thread: Some(thread),
        })
    }

    /// Whether the thread ended without being told to stop (it panicked):
    /// nobody accepts on the socket any more.
    pub fn failed(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// New connections are refused from now on; those open stay open.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        socket::stop_listening(&*self.socket);
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop_accepting();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(
    socket: &TcpListener,
    stopping: &AtomicBool,
    take: &mut impl FnMut(TcpStream, SocketAddr),
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match socket.accept() {
            Ok((stream, client)) => take(stream, client),
            Err(_) if stopping.load(Ordering::Relaxed) => return,
            Err(e) => {
                // Out of descriptors or memory: the connection stays in
                // the queue; try again shortly rather than spin. (Others,
                // such as a client gone before it was accepted, concern
                // one connection only.)
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if exhausted {
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        let local = socket.local_addr().ok();
                        tracing::warn!("accepting a connection on {local:?}: {e}");
                        last_warning = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}
