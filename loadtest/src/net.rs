//! Socket set-up for client connections: non-blocking connect from a chosen source address.
//!
//! Linux picks a source port per (source address, destination) pair, and with the default
//! `net.ipv4.ip_local_port_range` connects stall at about 14,000 connections per pair
//! (`../shared/anchors/scale.md`). Each worker therefore binds its sockets to its own
//! source addresses in 127.0.0.0/8, with `IP_BIND_ADDRESS_NO_PORT` set before `bind`, so
//! the port is chosen at `connect` time for the whole 4-tuple instead of at `bind` time
//! for the address alone.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Start a non-blocking TCP connect to `dest`, from `source` when given (port chosen by the
/// kernel at connect time). The connect completes when the socket turns writable.
pub fn connect(dest: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let (Some(ip), SocketAddr::V4(_)) = (source, dest) {
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    match socket.connect(&dest.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Set `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+), which socket2 does not expose.
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `socket` for the duration of the call; the
    // option value points to a live c_int whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The `count` source addresses of worker `worker`: `127.10+w/60.(w%60)*4+j.1`, distinct for
/// every worker up to 14,000 workers and never 127.0.0.1 (where gateways listen).
pub fn worker_sources(worker: u32, count: u32) -> Vec<Ipv4Addr> {
    (0..count.min(4))
        .map(|j| {
            let b = 10 + (worker / 60) % 240;
            let c = (worker % 60) * 4 + j;
            Ipv4Addr::new(127, b as u8, c as u8, 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_per_worker() {
        let mut seen = std::collections::HashSet::new();
        for w in 0..200 {
            for ip in worker_sources(w, 4) {
                assert!(ip.is_loopback() && ip != Ipv4Addr::LOCALHOST);
                assert!(seen.insert(ip), "{ip} twice");
            }
        }
    }

    #[test]
    fn connects_from_the_chosen_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let src = worker_sources(7, 1)[0];
        let stream = connect(listener.local_addr().unwrap(), Some(src)).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(src));
        assert_eq!(stream.local_addr().unwrap().ip(), std::net::IpAddr::V4(src));
    }
}
