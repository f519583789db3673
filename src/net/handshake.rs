//! The opening handshake's socket side: reading the request head from a client that may dribble
//! it, and writing refusals. What is read is checked by `wire::handshake` (see its module doc for
//! the table of answers and what a request may cost).

use std::io::{self, Read};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::handshake::{
    reason_phrase, response_head, HeadReader, Invalid, RawHead, MAX_REQUEST_HEAD,
};

/// Reads of an unfinished request head done as soon as bytes arrive; each later one first waits
/// (see [`HEAD_READ_PACE`]). A client sends its head in one packet, or a few: even a 16 KiB
/// head in 1448-byte packets (a real path's MSS), each read on its own, takes 12. A client that
/// dribbles its head a byte per packet would otherwise cost the accept thread a wake-up and two
/// system calls per byte.
pub(crate) const HEAD_READS_AT_ONCE: usize = 16;
/// The wait before the first read past [`HEAD_READS_AT_ONCE`]: 5 ms, doubling at each further
/// read up to [`HEAD_READ_PACE_MAX`]. Meanwhile the bytes of a dribbling client pile up in the
/// kernel and come in with one read, so a connection costs at most about 70 reads over a 5 s
/// `handshakeTimeout`, however it splits its head; an honest head that needs more than 16
/// reads is late by at most 100 ms.
pub(crate) const HEAD_READ_PACE: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest wait between two paced reads of a head: 100 ms.
pub(crate) const HEAD_READ_PACE_MAX: std::time::Duration = std::time::Duration::from_millis(100);
/// Spare room before each read of the head, so that one read takes what piled up.
const HEAD_READ_ROOM: usize = 1024;

/// A handshake that did not complete.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The request is refused for this reason (not yet answered).
    Invalid(Invalid),
    /// The socket failed or closed before a full request arrived.
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// A socket an upgrade request is read from and refusals are written to: TCP, or a TLS stream
/// over it (`tls.rs`).
pub(crate) trait HeadStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// One non-blocking read of whatever the kernel holds (decrypted, over TLS), appended to
    /// `buf`. Straight to the socket: tokio's `try_read` only reads after the reactor has seen the
    /// socket readable, and with `SO_RCVLOWAT` raised it may never see that.
    fn read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
    /// The TCP socket and the TLS session (if any), once the upgrade succeeded.
    fn into_parts(self) -> (TcpStream, Option<rustls::ServerConnection>);
    /// True if the peer has closed its side (or the connection failed); what it sent before
    /// is kept for the connection to read.
    fn hung_up(&mut self) -> bool;
}

impl HeadStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        read_into(buf, |b| (&*socket2::SockRef::from(&*self)).read(b))
    }
    fn into_parts(self) -> (TcpStream, Option<rustls::ServerConnection>) {
        (self, None)
    }
    /// EOF waits at the front of the receive queue (or the socket failed); bytes it sent after
    /// the request (its first frames) are left in place.
    fn hung_up(&mut self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&*self).peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted
            }
        }
    }
}

/// Runs `read` on the spare room of `buf` (at least one byte) and keeps what it read.
pub(crate) fn read_into(
    buf: &mut Vec<u8>,
    read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let len = buf.len();
    buf.resize(buf.capacity().max(len + 1), 0);
    let r = read(&mut buf[len..]);
    buf.truncate(len + *r.as_ref().unwrap_or(&0));
    r
}

/// Reads from `stream` until the request head is complete. Nothing is answered here: an
/// [`Invalid`] is for the caller to answer and count.
///
/// The first [`HEAD_READS_AT_ONCE`] reads happen as bytes arrive. Past them the client is
/// dribbling: the socket's `SO_RCVLOWAT` is raised above any acceptable head, so that its
/// packets no longer wake the accept thread one by one, and what piled up is read after a
/// growing wait ([`HEAD_READ_PACE`]). `SO_RCVLOWAT` is back to 1 before the socket is handed
/// on.
pub(crate) async fn read_head<S: HeadStream>(stream: &mut S) -> Result<RawHead, Refusal> {
    // On the heap, not in the future: a stack array here would stay in every connection task's
    // state for the connection's whole life (the task's size is that of its largest state).
    let mut reader = HeadReader::new();
    let mut paced = false;
    for reads in 0.. {
        // Room for whatever arrived meanwhile (the Vec doubles: amortised linear).
        if {
            let b = reader.buf_mut();
            b.capacity() - b.len()
        } < HEAD_READ_ROOM
        {
            reader.buf_mut().reserve(HEAD_READ_ROOM);
        }
        let n = if reads < HEAD_READS_AT_ONCE {
            stream.read_buf(&mut reader.buf_mut()).await?
        } else {
            if !paced {
                paced = true;
                set_rcvlowat(stream.tcp(), MAX_REQUEST_HEAD + 1)?;
            }
            let doublings = (reads - HEAD_READS_AT_ONCE).min(16) as u32;
            tokio::time::sleep((HEAD_READ_PACE * (1 << doublings)).min(HEAD_READ_PACE_MAX)).await;
            match stream.read_now(reader.buf_mut()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Refusal::Io(e)),
            }
        };
        if n == 0 {
            return Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        match reader.check() {
            Ok(Some(len)) => {
                if paced {
                    set_rcvlowat(stream.tcp(), 1)?;
                }
                return Ok(reader.finish(len));
            }
            Ok(None) => {}
            Err(why) => return Err(Refusal::Invalid(why)),
        }
    }
    unreachable!("the loop returns")
}

/// Sets `SO_RCVLOWAT`: the socket is reported readable (and its arrivals wake the reactor) only
/// once this many bytes are queued. Linux; elsewhere a no-op (the pacing then saves reads only).
pub(crate) fn set_rcvlowat(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: the fd is a live TCP socket owned by `stream`; the option value is a c_int read
        // from a local that outlives the call, with its exact size passed.
        let r = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, bytes);
    Ok(())
}

/// Answers an invalid request: its status, extra headers and [`Invalid::message`] as the body.
pub(crate) async fn refuse_invalid<S: HeadStream>(stream: &mut S, why: &Invalid) {
    refuse_with(stream, why.status(), &why.extra_headers(), &why.message()).await;
}

/// Answers with an HTTP error (its reason phrase as the body) and closes the write side.
/// Returns the refusal to propagate.
pub(crate) async fn refuse<S: HeadStream>(
    stream: &mut S,
    status: u16,
    extra: &[(&str, &str)],
) -> u16 {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    refuse_with(stream, status, &extra, reason_phrase(status)).await
}

/// Answers with `status`, extra headers and a plain-text body, then closes the write side.
/// Header names and values must already be checked ([`is_token`], [`is_header_value`]).
/// Returns `status`.
pub(crate) async fn refuse_with<S: HeadStream>(
    stream: &mut S,
    status: u16,
    extra: &[(String, String)],
    body: &str,
) -> u16 {
    let resp = response_head(status, extra, body);
    // Best effort: the peer may already be gone.
    let _ = stream.write_all(resp.as_bytes()).await;
    // Over TLS, close_notify goes first.
    let _ = stream.shutdown().await;
    status
}
