//! The socket calls the standard library does not make (options, binding
//! before connecting, listening sockets that share a port), in one place.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd};
use std::time::Duration;

/// A new TCP socket of `addr`'s family, closed on exec.
pub fn tcp_for(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets socket option `option` of `level` to `value`.
pub fn set<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt on a socket the caller owns, with a value of the
    // size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `duration` as the `timeval` of `SO_RCVTIMEO` and `SO_SNDTIMEO`.
pub fn timeval(duration: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: duration.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: duration.subsec_micros().into(),
    }
}

/// Binds `socket` to `addr`.
pub fn bind(socket: &impl AsRawFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: bind(2) on the caller's socket, with an address of the
    // length given.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `socket` to address `ip`, its port left to `connect`, which
/// chooses it by the whole address pair: ports in TIME_WAIT towards
/// another address are reused, so that lockd's own connections to itself,
/// tens of thousands a minute, closed by either side, do not run out of
/// them.
pub fn bind_for_connect(socket: &impl AsRawFd, ip: IpAddr) -> io::Result<()> {
    set(
        socket,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &1_i32,
    )?;
    bind(socket, SocketAddr::new(ip, 0))
}

/// Connects `socket` to `addr` (within its `SO_SNDTIMEO`, if set).
pub fn connect(socket: &impl AsRawFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: connect(2) on the caller's socket, with an address of the
    // length given.
    if unsafe { libc::connect(socket.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `socket` listen, with `backlog` connections completed before they
/// are accepted (the kernel caps it at `net.core.somaxconn`); on a socket
/// that listens already, only the backlog changes.
pub fn listen(socket: &impl AsRawFd, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen(2) on the caller's socket.
    if unsafe { libc::listen(socket.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the listening `socket` refuse new connections: a thread blocked
/// in accept(2) on it gets an error, which ends its accept loop.
/// Connections accepted before stay open.
pub fn stop_listening(socket: &impl AsRawFd) {
    // SAFETY: shutdown(2) of the caller's socket; it touches no memory.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// `addr` as the C socket address bind(2) and connect(2) take.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and
            // suitably aligned for it.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
