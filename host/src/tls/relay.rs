//! One TLS connection's thread: its handshake, within a deadline, then
//! the relay of its plaintext to and from lockd's HTTP server over a
//! loopback connection, each way as fast as the other side takes it.
//!
//! Both sockets are non-blocking and the thread sleeps in poll(2) until
//! one of them can go on: a silent client costs a sleeping thread, never
//! a spinning one. A side that is closed is not polled for reading again.

use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

/// The most plaintext held for one side that does not take it.
const BUFFER: usize = 64 * 1024;

/// Completes `tls`'s handshake with the client on `tcp` by `deadline`.
/// On failure the client is sent the alert that says why (a certificate
/// it lacks, or of an unknown CA), if it still listens.
pub fn handshake(tls: &mut ServerConnection, tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    tcp.set_nonblocking(true)?;
    refuse_plain_http(tcp, deadline)?;
    while tls.is_handshaking() {
        flush(tls, tcp)?;
        if !tls.is_handshaking() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut events = libc::POLLIN;
        if tls.wants_write() {
            events |= libc::POLLOUT;
        }
        let mut fds = [pollfd(tcp, events)];
        if poll(&mut fds, Some(left))? == 0 {
            return Err(io::Error::new(ErrorKind::TimedOut, "handshake timed out"));
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            continue;
        }
        match tls.read_tls(&mut &*tcp) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed during the handshake",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        match tls.process_new_packets() {
            Ok(state) if state.peer_has_closed() => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed during the handshake",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                // The alert saying why, best effort.
                let _ = flush(tls, tcp);
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
        }
    }
    flush(tls, tcp).map(drop)
}

/// What a client speaking plain HTTP to the TLS port is told.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\
    Connection: close\r\nContent-Length: 37\r\n\r\nlockd serves https on this port only\n";

/// A client that starts with an HTTP request line instead of a TLS
/// record (a TLS connection starts with a handshake record, 0x16) is
/// answered 400 in plain text, so that a client given an http:// URL by
/// mistake says why, and fails the handshake.
fn refuse_plain_http(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let mut fds = [pollfd(tcp, libc::POLLIN)];
    let left = deadline.saturating_duration_since(Instant::now());
    if poll(&mut fds, Some(left))? == 0 {
        return Err(io::Error::new(ErrorKind::TimedOut, "handshake timed out"));
    }
    let mut first = [0; 1];
    match tcp.peek(&mut first) {
        Ok(1) if first[0].is_ascii_uppercase() => {
            let _ = (&*tcp).write_all(PLAIN_HTTP_ANSWER);
            Err(io::Error::new(
                ErrorKind::InvalidData,
                "plain HTTP on the TLS port",
            ))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Closes a connection whose handshake failed so that the client reads
/// the alert that says why: lockd's side is shut for writing, and what the
/// client still sends (a TLS 1.3 client may have sent its request already)
/// is read and dropped until it closes too, for at most `linger`. Closing
/// with unread data would reset the connection, and a reset can reach the
/// client before it has read the alert.
pub fn linger(tcp: &TcpStream, linger: Duration) {
    let deadline = Instant::now() + linger;
    if tcp.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let mut buf = [0; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        let mut fds = [pollfd(tcp, libc::POLLIN)];
        let wait = deadline.saturating_duration_since(Instant::now());
        match poll(&mut fds, Some(wait)) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match (&*tcp).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Relays between the client (`tls` on `client`) and lockd's HTTP server
/// (`upstream`) until either is done: the server closed the connection
/// (its answers then reach the client, followed by close_notify), the
/// client closed it (the server's end is shut for writing, so it answers
/// what it has and closes), or the client took nothing of what there is
/// for it for `idle`. Silence is the HTTP server's to judge, as over plain
/// HTTP (a call waiting for a lock is silent for as long as it waits): it
/// closes an idle connection, and the relay follows.
pub fn relay(
    tls: &mut ServerConnection,
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Option<Duration>,
) -> io::Result<()> {
    client.set_nonblocking(true)?;
    upstream.set_nonblocking(true)?;
    tls.set_buffer_limit(Some(BUFFER));
    let mut to_upstream: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    // The client sent close_notify or closed its socket: nothing more
    // will come from it.
    let mut client_done = false;
    let mut client_eof = false;
    let mut upstream_shut = false;
    let mut upstream_done = false;
    let mut closing = false;
    // Since when the client has taken nothing of what waits for it.
    let mut stalled_since: Option<Instant> = None;
    loop {
        // The client's plaintext, to the server.
        while !client_done && to_upstream.len() < BUFFER {
            match tls.reader().read(&mut buf) {
                Ok(0) => client_done = true,
                Ok(n) => to_upstream.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => client_done = true,
            }
        }
        send(upstream, &mut to_upstream)?;
        if client_done && to_upstream.is_empty() && !upstream_shut {
            upstream.shutdown(Shutdown::Write)?;
            upstream_shut = true;
        }
        // The server's answers, to the client.
        if !to_client.is_empty() {
            let n = tls.writer().write(&to_client)?;
            to_client.drain(..n);
        }
        if upstream_done && to_client.is_empty() && !closing {
            tls.send_close_notify();
            closing = true;
        }
        if flush(tls, client)? > 0 || !tls.wants_write() {
            stalled_since = None;
        }
        if closing && !tls.wants_write() {
            return Ok(());
        }

        let mut client_events = 0;
        if !client_eof && to_upstream.len() < BUFFER {
            client_events |= libc::POLLIN;
        }
        if tls.wants_write() {
            client_events |= libc::POLLOUT;
        }
        let mut upstream_events = 0;
        if !upstream_done && to_client.is_empty() {
            upstream_events |= libc::POLLIN;
        }
        if !to_upstream.is_empty() {
            upstream_events |= libc::POLLOUT;
        }
        if client_events == 0 && upstream_events == 0 {
            // Neither side can move: both are done.
            return Ok(());
        }
        let mut fds = [
            pollfd(client, client_events),
            pollfd(upstream, upstream_events),
        ];
        let timeout = match idle {
            Some(idle) if tls.wants_write() => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                Some(idle.saturating_sub(since.elapsed()))
            }
            _ => None,
        };
        if poll(&mut fds, timeout)? == 0 {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "the client took no answer for the idle timeout",
            ));
        }
        let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
        if client_events & libc::POLLIN != 0 && fds[0].revents & ready != 0 {
            match tls.read_tls(&mut &*client) {
                Ok(0) => client_eof = true,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = flush(tls, client);
                        return Err(io::Error::new(ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if upstream_events & libc::POLLIN != 0 && fds[1].revents & ready != 0 {
            match (&*upstream).read(&mut buf) {
                Ok(0) => upstream_done = true,
                Ok(n) => to_client.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => upstream_done = true,
            }
        }
    }
}

/// Writes what `tls` has for the client until the socket takes no more;
/// how many bytes it took.
fn flush(tls: &mut ServerConnection, tcp: &TcpStream) -> io::Result<usize> {
    let mut written = 0;
    while tls.wants_write() {
        match tls.write_tls(&mut &*tcp) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Writes what `pending` holds to `tcp` until it takes no more.
fn send(tcp: &TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    while written < pending.len() {
        match (&*tcp).write(&pending[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    pending.drain(..written);
    Ok(())
}

/// `tcp` polled for `events`; with none, not polled at all (a hung-up
/// socket is reported whatever is asked, which would wake the thread for
/// a side it cannot serve yet).
fn pollfd(tcp: &TcpStream, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: if events == 0 { -1 } else { tcp.as_raw_fd() },
        events,
        revents: 0,
    }
}

/// poll(2) for at most `timeout` (for ever if `None`); the number of
/// descriptors ready. Interrupted calls are retried.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so that a wait does not end just before its
                // time and spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
