//! The listening socket: bound here, accepted from by tiny_http, and shut
//! here when the daemon stops taking new connections.

use std::net::TcpListener;
use std::time::Duration;
use tiny_http::Server;

/// A tiny_http server and a handle on its listening socket.
pub struct Listener {
    pub server: Server,
    /// The same socket as the server's, to stop accepting on.
    socket: TcpListener,
}

impl Listener {
    /// Listens on `addr`. Connections time out reads and writes after
    /// `idle` (set on the listening socket, whose accepted sockets inherit
    /// it on Linux): a connection silent that long, between requests or
    /// within one, is closed, and a client that does not take its answer
    /// cannot hold a thread for longer.
    pub fn bind(addr: &str, idle: Option<Duration>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        if let Some(idle) = idle {
            set_timeouts(&listener, idle)?;
        }
        let socket = listener.try_clone()?;
        let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        Ok(Self { server, socket })
    }

    /// New connections are refused from now on; those open stay open.
    pub fn stop_accepting(&self) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: shutdown(2) of a socket this process owns. On a
        // listening socket it makes accept() fail, which ends tiny_http's
        // accept loop, and new connections are refused.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

fn set_timeouts(listener: &TcpListener, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt on a socket we own, with a timeval of the
        // size we pass.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
