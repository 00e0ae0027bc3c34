//! Whether a client's connection is still open, asked of the kernel.
//!
//! tiny_http does not let lockd see a connection's socket, so a client
//! that hangs up while its call waits for a lock would go unnoticed until
//! its answer is written. The kernel's socket diagnostics (`sock_diag`,
//! what `ss` uses) tell instead: a connection whose client has closed it
//! has left the ESTABLISHED state (it is in CLOSE-WAIT, or gone after a
//! reset). Asked by the connection's four addresses, the kernel looks the
//! socket up directly, where a dump filtered by ports walks every socket
//! (docs/benchmarks.md has the figures), and no privilege is needed.
//! The count of a port's connections, for `--max-connections`, is such a
//! dump.
//!
//! For the rare connection lockd must end itself (a client that piles up
//! requests without reading answers), [`cut`] finds its socket among the
//! process's descriptors by its two ends and shuts it down.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;

/// Whether a TCP connection from `peer` to lockd, listening on `local`,
/// is established. Asked by the connection's four addresses, which the
/// kernel looks up in its table directly (a dump would walk every socket
/// of the machine); a wildcard listening address is tried as each of the
/// machine's addresses.
pub fn established(local: SocketAddr, peer: SocketAddr) -> io::Result<bool> {
    for ip in local_ips(local.ip(), peer.ip())? {
        if lookup(SocketAddr::new(ip, local.port()), peer)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The addresses a connection from `peer` to a socket listening on
/// `listening` can have reached.
fn local_ips(listening: IpAddr, peer: IpAddr) -> io::Result<Vec<IpAddr>> {
    if !listening.is_unspecified() {
        return Ok(vec![listening]);
    }
    let mapped = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        IpAddr::V4(_) => false,
    };
    let mut ips = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not
        // freed yet; its address, if any, is of the family it says.
        unsafe {
            let address = (*entry).ifa_addr;
            if !address.is_null() {
                match (i32::from((*address).sa_family), peer) {
                    (libc::AF_INET, IpAddr::V4(_)) | (libc::AF_INET, IpAddr::V6(_)) => {
                        let sin = &*address.cast::<libc::sockaddr_in>();
                        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        match peer {
                            IpAddr::V4(_) => ips.push(IpAddr::V4(ip)),
                            IpAddr::V6(_) if mapped => ips.push(IpAddr::V6(ip.to_ipv6_mapped())),
                            IpAddr::V6(_) => {}
                        }
                    }
                    (libc::AF_INET6, IpAddr::V6(_)) if !mapped => {
                        let sin6 = &*address.cast::<libc::sockaddr_in6>();
                        ips.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(ips)
}

/// Whether the kernel has an established TCP socket from `local` to
/// `peer`.
fn lookup(local: SocketAddr, peer: SocketAddr) -> io::Result<bool> {
    let mut established = false;
    let answer = ask(&exact_request(local, peer), |message| {
        established |= message.get(1) == Some(&(TCP_ESTABLISHED as u8))
    });
    match answer {
        Ok(()) => Ok(established),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many TCP connections to `local`'s port, of its family, are
/// established (taken or waiting to be).
pub fn established_on(local: SocketAddr) -> io::Result<usize> {
    let mut count = 0;
    ask(&dump_request(local), |_| count += 1)?;
    Ok(count)
}

fn family(addr: SocketAddr) -> u8 {
    match addr.ip() {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// Sends `request` to the kernel's socket diagnostics and hands each
/// `inet_diag_msg` of the answer to `each`.
fn ask(request: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: send(2) of a buffer we own, on a socket we own; the kernel
    // is the default destination of a netlink socket.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0_u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, of the length we pass.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut messages = &buffer[..n as usize];
        while messages.len() >= 16 {
            let len = u32::from_ne_bytes(messages[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(messages[4..6].try_into().unwrap());
            if len < 16 || len > messages.len() {
                return Err(io::Error::other("a malformed sock_diag answer"));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                // An exact lookup answers with one message and no DONE.
                SOCK_DIAG_BY_FAMILY if !dumping(request) => {
                    each(&messages[16..len]);
                    return Ok(());
                }
                NLMSG_ERROR => {
                    let errno = messages
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => each(&messages[16..len]),
                _ => {}
            }
            messages = &messages[len.next_multiple_of(4).min(messages.len())..];
        }
    }
}

/// One connection to lockd, as found among the process's descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    /// A descriptor of its socket.
    pub fd: libc::c_int,
    pub peer: SocketAddr,
    /// Its address on lockd's side.
    pub local: SocketAddr,
    /// Whether another connection from the same peer is open, to another
    /// of lockd's addresses.
    pub shared: bool,
    /// The bytes lockd has read from it so far; `None` once it is no
    /// longer established (shut by lockd or its client: what it holds is
    /// being let go).
    pub read: Option<u64>,
    /// The bytes it sent that wait unread in the kernel.
    pub unread: u64,
}

/// The TCP connections to lockd's `port`, found among the process's
/// descriptors (a connection's reading and writing halves are two
/// descriptors of one socket: each is listed once), each with the bytes
/// read from it: what the kernel received on it (`tcpi_bytes_received`,
/// Linux 4.1 and later) less what waits unread. Unlike a socket
/// diagnostics dump, which walks the kernel's whole table of connections,
/// this costs a few system calls per descriptor of lockd's.
/// Descriptors in `own` (lockd's own copies, see [`adopt`]) are not
/// looked at.
pub fn open_on(port: u16, own: &HashSet<libc::c_int>) -> io::Result<Vec<Open>> {
    Ok(sockets_on(port, own)?
        .into_iter()
        .map(|found| {
            let (read, unread) = bytes_read_on(found.fd).unzip();
            Open {
                fd: found.fd,
                peer: found.peer,
                local: found.local,
                shared: found.shared,
                read,
                unread: unread.unwrap_or(0),
            }
        })
        .collect())
}

/// A socket of this process on lockd's port.
struct Found {
    fd: libc::c_int,
    peer: SocketAddr,
    local: SocketAddr,
    /// Whether another socket has the same peer (to another of lockd's
    /// addresses: a client address shared through NAT, say).
    shared: bool,
}

/// The connected TCP sockets of this process on local `port`: a
/// descriptor of each, and its peer. (A connection's reading and writing
/// halves are two descriptors of one socket: each is listed once.)
fn sockets_on(port: u16, own: &HashSet<libc::c_int>) -> io::Result<Vec<Found>> {
    let mut sockets: Vec<Found> = Vec::new();
    // Where each peer is in `sockets`: hundreds of connections are looked
    // at while lockd is flooded, when a look must be quick.
    let mut by_peer: HashMap<SocketAddr, usize> = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if own.contains(&fd) {
            continue;
        }
        let Some(local) = local_of(fd).filter(|local| local.port() == port) else {
            continue;
        };
        let Some(peer) = peer_of(fd) else { continue };
        match by_peer.entry(peer) {
            Entry::Occupied(at) => {
                let same = &mut sockets[*at.get()];
                same.shared |= same.local != local;
            }
            Entry::Vacant(at) => {
                at.insert(sockets.len());
                sockets.push(Found {
                    fd,
                    peer,
                    local,
                    shared: false,
                });
            }
        }
    }
    Ok(sockets)
}

/// The bytes read from the TCP socket `fd` so far, and those waiting to
/// be read.
fn bytes_read_on(fd: libc::c_int) -> Option<(u64, u64)> {
    let mut info = [0_u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // tcpi_bytes_received: a u64 at offset 128 of struct tcp_info. A
    // connection shut (by lockd or its client) is not counted: what it
    // holds is being let go.
    if rc != 0 || (len as usize) < 136 || u32::from(info[0]) != TCP_ESTABLISHED {
        return None;
    }
    let received = u64::from_ne_bytes(info[128..136].try_into().ok()?);
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 {
        return None;
    }
    let unread = unread.max(0) as u64;
    Some((received.saturating_sub(unread), unread))
}

/// Shuts `open`'s connection as `how` says, after writing `last_words`
/// (as far as the socket takes them at once), if its descriptor is still
/// that connection's.
pub fn cut_open(open: &Open, how: libc::c_int, last_words: &[u8]) -> io::Result<bool> {
    if peer_of(open.fd) != Some(open.peer) {
        return Ok(false);
    }
    shut(open.fd, how, last_words)?;
    Ok(true)
}

/// Writes `last_words` to socket `fd` without waiting, then shuts it.
fn shut(fd: libc::c_int, how: libc::c_int, last_words: &[u8]) -> io::Result<()> {
    if !last_words.is_empty() {
        // As far as it goes: the connection is shut either way.
        let _ = send_at_once(fd, last_words);
    }
    // SAFETY: shutdown(2) on a descriptor of this process that is the
    // client's connection (its two ends were checked just before; the
    // connection is open, so the descriptor was not reused).
    if unsafe { libc::shutdown(fd, how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if how == libc::SHUT_RDWR {
        discard_unread(fd);
    }
    Ok(())
}

/// Drops what waits unread on socket `fd`, shut both ways: tiny_http
/// would otherwise go on reading it, and a flood's connections would hand
/// out tens of thousands of requests cut off before they were answered.
fn discard_unread(fd: libc::c_int) {
    // A few rounds: what arrives later is not queued (data arriving on a
    // socket shut both ways resets it).
    for _ in 0..16 {
        // SAFETY: recv(2) with MSG_TRUNC on a TCP socket discards up to
        // `len` bytes without writing to the buffer, which may be null.
        let n = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                1 << 30,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

/// What to do to one connection.
pub struct Cut<'a> {
    pub peer: SocketAddr,
    /// `SHUT_RD` or `SHUT_RDWR`.
    pub how: libc::c_int,
    /// Written (as far as the socket takes it at once) before shutting.
    pub last_words: &'a [u8],
}

/// Shuts down each of `cuts`' connections to lockd's `port` as it says,
/// finding them among the process's descriptors in one pass. Returns how
/// many were found.
pub fn cut(port: u16, own: &HashSet<libc::c_int>, cuts: &[Cut<'_>]) -> io::Result<usize> {
    let mut found = 0;
    for socket in sockets_on(port, own)? {
        if let Some(cut) = cuts.iter().find(|c| c.peer == socket.peer) {
            shut(socket.fd, cut.how, cut.last_words)?;
            found += 1;
        }
    }
    Ok(found)
}

/// A copy of descriptor `fd` (as found among the process's descriptors)
/// if it is the connection from `peer` to lockd's `local` address. The copy is
/// checked, not `fd`: `fd` may have been closed and its number reused
/// since it was found, but the copy stays the socket it was checked to
/// be for as long as it is held (and keeps that socket, shut or not,
/// from being freed: drop it once the connection ends).
pub fn adopt(fd: libc::c_int, peer: SocketAddr, local: SocketAddr) -> Option<OwnedFd> {
    // SAFETY: fcntl(2) F_DUPFD_CLOEXEC makes a new descriptor of whatever
    // `fd` is now (or fails); the new one is owned from here on.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return None;
    }
    // SAFETY: `copy` was just made and is not owned elsewhere.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    let ours = peer_of(copy.as_raw_fd()) == Some(peer) && local_of(copy.as_raw_fd()) == Some(local);
    ours.then_some(copy)
}

/// The bytes written to `socket` that its client has not acknowledged
/// yet, sent or not (`SIOCOUTQ`).
pub fn outstanding(socket: &OwnedFd) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int, on a descriptor we own.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| usize::try_from(queued).unwrap_or(usize::MAX))
}

/// Writes what `socket` takes of `bytes` at once: how much. Never
/// blocks, never raises SIGPIPE.
pub fn send_now(socket: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    send_at_once(socket.as_raw_fd(), bytes)
}

/// [`send_now`] on a descriptor of this process that is a client's
/// connection.
fn send_at_once(fd: libc::c_int, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: send(2) of a buffer we own, of the length we pass; it never
    // blocks and never raises SIGPIPE.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(0),
            _ => Err(e),
        };
    }
    Ok(sent as usize)
}

/// The local end of a socket `fd`, if it is an IP socket.
fn local_of(fd: libc::c_int) -> Option<SocketAddr> {
    let (family, bytes) = address(fd, libc::getsockname)?;
    socket_addr(family, &bytes)
}

/// The remote end of a socket `fd`, if it is a connected IP socket.
fn peer_of(fd: libc::c_int) -> Option<SocketAddr> {
    let (family, bytes) = address(fd, libc::getpeername)?;
    socket_addr(family, &bytes)
}

fn socket_addr(family: libc::c_int, bytes: &[u8]) -> Option<SocketAddr> {
    let port = port_of(family, bytes)?;
    let ip = match family {
        libc::AF_INET => IpAddr::from(<[u8; 4]>::try_from(&bytes[4..8]).ok()?),
        libc::AF_INET6 => IpAddr::from(<[u8; 16]>::try_from(&bytes[8..24]).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn port_of(family: libc::c_int, bytes: &[u8]) -> Option<u16> {
    matches!(family, libc::AF_INET | libc::AF_INET6)
        .then(|| u16::from_be_bytes([bytes[2], bytes[3]]))
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// An address of socket `fd` by `call` (getsockname or getpeername): its
/// family and its bytes as `struct sockaddr_in` or `sockaddr_in6` lays
/// them out.
fn address(fd: libc::c_int, call: NameCall) -> Option<(libc::c_int, [u8; 28])> {
    let mut storage = [0_u8; 28];
    let mut len = storage.len() as libc::socklen_t;
    // SAFETY: the call writes at most `len` bytes into `storage`; a
    // descriptor that is not a socket only makes it fail.
    let rc = unsafe { call(fd, storage.as_mut_ptr().cast(), &mut len) };
    if rc != 0 || (len as usize) < 16 {
        return None;
    }
    let family = libc::c_int::from(u16::from_ne_bytes([storage[0], storage[1]]));
    Some((family, storage))
}

/// Whether `request` asks for a dump (not one socket).
fn dumping(request: &[u8]) -> bool {
    let flags = u16::from_ne_bytes([request[6], request[7]]);
    flags & (libc::NLM_F_DUMP as u16) != 0
}

/// A request for the one TCP socket from `local` to `peer`.
fn exact_request(local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let mut id = Vec::with_capacity(48);
    id.extend_from_slice(&local.port().to_be_bytes());
    id.extend_from_slice(&peer.port().to_be_bytes());
    id.extend_from_slice(&address_bytes(local.ip()));
    id.extend_from_slice(&address_bytes(peer.ip()));
    id.extend_from_slice(&0_u32.to_ne_bytes()); // any interface
    id.extend_from_slice(&[0xff; 8]); // no cookie
    request(libc::NLM_F_REQUEST, family(peer), &id, &[])
}

/// A dump request for the established TCP sockets whose local port is
/// `local`'s, of its family.
fn dump_request(local: SocketAddr) -> Vec<u8> {
    // A filter of one operation and its operand: if the local port equals
    // the operand, jump `yes` (8) bytes, exactly to the end, which accepts;
    // if not, `no` (12) bytes, past the end, which rejects.
    let mut filter = vec![INET_DIAG_BC_S_EQ, 8];
    filter.extend_from_slice(&12_u16.to_ne_bytes());
    filter.extend_from_slice(&[0, 0]);
    filter.extend_from_slice(&local.port().to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_DUMP;
    request(flags, family(local), &[0; 48], &filter)
}

/// An address as `inet_diag_sockid` holds it: IPv4 in the first 4 bytes.
fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut bytes = [0; 16];
    match ip {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

/// A `SOCK_DIAG_BY_FAMILY` request with `flags` for established TCP
/// sockets of `family`: `id` is its `inet_diag_sockid` (unused in a dump),
/// `filter` its bytecode, if any.
fn request(flags: libc::c_int, family: u8, id: &[u8], filter: &[u8]) -> Vec<u8> {
    let attribute = if filter.is_empty() {
        0
    } else {
        4 + filter.len()
    };
    let total = 16 + 8 + id.len() + attribute;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1_u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel
    // struct inet_diag_req_v2
    message.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    message.extend_from_slice(&(1_u32 << TCP_ESTABLISHED).to_ne_bytes());
    message.extend_from_slice(id);
    if !filter.is_empty() {
        // struct rtattr holding the filter
        message.extend_from_slice(&(attribute as u16).to_ne_bytes());
        message.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        message.extend_from_slice(filter);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_connection_is_established_until_its_client_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let port = local.port();
        let client = TcpStream::connect(local).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(established(local, peer).unwrap());
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(client);
        // The server side reads the end of the stream once the client's
        // FIN has arrived: it is in CLOSE-WAIT then.
        assert_eq!(
            std::io::Read::read(&mut server_side, &mut [0; 1]).unwrap(),
            0
        );
        assert!(!established(local, peer).unwrap());
        assert!(established(local, other.local_addr().unwrap()).unwrap());
        let elsewhere = SocketAddr::new(local.ip(), port + 1);
        assert!(!established(elsewhere, other.local_addr().unwrap()).unwrap());
        // The closed one (in CLOSE-WAIT) is not counted, the other is.
        assert_eq!(established_on(listener.local_addr().unwrap()).unwrap(), 1);
    }

    #[test]
    fn a_connection_to_a_wildcard_address_is_found_by_the_machines_addresses() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert!(established(listener.local_addr().unwrap(), peer).unwrap());
        drop(client);
    }

    #[test]
    fn the_bytes_read_from_each_connection_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, &[7; 100]).unwrap();
        let mut first = [0; 60];
        std::io::Read::read_exact(&mut server_side, &mut first).unwrap();
        let open = open_on(port, &HashSet::new()).unwrap();
        let found: Vec<_> = open.iter().filter(|o| o.peer == peer).collect();
        assert_eq!(found.len(), 1, "{open:?}");
        assert_eq!(found[0].read, Some(60));
        assert!(cut_open(found[0], libc::SHUT_RDWR, b"bye").unwrap());
        let mut answer = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut answer).unwrap();
        assert_eq!(answer, b"bye");
        let open = open_on(port, &HashSet::new()).unwrap();
        let shut: Vec<_> = open.iter().filter(|o| o.peer == peer).collect();
        assert_eq!(
            shut.len(),
            1,
            "a shut socket still held is listed: {open:?}"
        );
        assert_eq!(shut[0].read, None, "and counts nothing");
    }

    #[test]
    fn what_waits_unread_is_counted_and_dropped_when_the_connection_is_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, &[7; 5000]).unwrap();
        let found = |open: Vec<Open>| open.into_iter().find(|o| o.peer == peer).unwrap();
        let mut waiting = found(open_on(port, &HashSet::new()).unwrap());
        while waiting.unread < 5000 {
            // Loopback delivers at once; the kernel may still be queueing.
            std::thread::yield_now();
            waiting = found(open_on(port, &HashSet::new()).unwrap());
        }
        assert_eq!((waiting.read, waiting.unread), (Some(0), 5000));
        assert!(cut_open(&waiting, libc::SHUT_RDWR, &[]).unwrap());
        // Whoever reads the socket next (tiny_http's thread) finds the end,
        // not the 5000 bytes sent before the cut.
        assert_eq!(
            std::io::Read::read(&mut server_side, &mut [0; 100]).unwrap(),
            0
        );
    }

    #[test]
    fn hanging_up_ends_the_connection_for_its_client() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let bystander = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_bystander_side, _) = listener.accept().unwrap();
        let hang_up = |peer| {
            let both = Cut {
                peer,
                how: libc::SHUT_RDWR,
                last_words: &[],
            };
            cut(port, &HashSet::new(), &[both]).unwrap() == 1
        };
        assert!(hang_up(peer));
        assert_eq!(std::io::Read::read(&mut client, &mut [0; 1]).unwrap(), 0);
        let local = listener.local_addr().unwrap();
        assert!(established(local, bystander.local_addr().unwrap()).unwrap());
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!hang_up(nobody));
    }

    #[test]
    fn a_copy_is_adopted_only_of_the_connection_it_is_checked_to_be_and_is_not_listed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let fd = server_side.as_raw_fd();
        let local = listener.local_addr().unwrap();
        let copy = adopt(fd, peer, local).expect("the connection's own socket");
        assert_ne!(copy.as_raw_fd(), fd);
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(adopt(fd, elsewhere, local).is_none(), "another peer's");
        let other_address = SocketAddr::new("127.0.0.2".parse().unwrap(), port);
        assert!(
            adopt(fd, peer, other_address).is_none(),
            "to another address"
        );
        let file = tempfile::tempfile().unwrap();
        assert!(
            adopt(file.as_raw_fd(), peer, local).is_none(),
            "not a socket"
        );
        let own = [copy.as_raw_fd()].into_iter().collect();
        let open = open_on(port, &own).unwrap();
        assert!(
            open.iter().all(|o| o.fd != copy.as_raw_fd()),
            "lockd's own copies are not listed: {open:?}"
        );
        assert_eq!(open.iter().filter(|o| o.peer == peer).count(), 1);
        // The copy stays the connection's once tiny_http's descriptors of
        // it are closed (and their numbers free for anything).
        drop(server_side);
        assert_eq!(send_now(&copy, b"late").unwrap(), 4);
        let mut client = client;
        let mut got = [0; 4];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(&got, b"late");
    }

    #[test]
    fn sending_at_once_stops_where_the_socket_is_full_instead_of_waiting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // A client that never reads.
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let local = listener.local_addr().unwrap();
        let copy = adopt(server_side.as_raw_fd(), peer, local).unwrap();
        assert_eq!(outstanding(&copy), Some(0), "nothing written yet");
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let full = (0..10_000).any(|_| {
            let n = send_now(&copy, &chunk).unwrap();
            sent += n;
            n < chunk.len()
        });
        assert!(full, "the socket took {sent} bytes without filling up");
        assert_eq!(send_now(&copy, &chunk).unwrap(), 0, "full: nothing more");
        assert!(
            outstanding(&copy).unwrap() > 0,
            "what the client has not taken"
        );
        drop(server_side);
        // Shut by its client: an error, not a signal.
        drop(_client);
        let failed = (0..100).any(|_| send_now(&copy, b"x").is_err());
        assert!(failed, "writing to a connection its client closed fails");
    }
}
