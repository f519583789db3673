//! TLS on sluice's own listener (the `tls` option): `wss://` served by rustls.
//!
//! * **Certificates.** [`server_config`] turns the PEM of `tls: { key, cert, ca, passphrase }`
//!   into a rustls `ServerConfig` when the server is created (or at `setSecureContext`), so that
//!   a wrong, encrypted or mismatched key, or a certificate that is no certificate, is refused
//!   there with a stable code ([`TlsFault`]), never at the first connection. `cert` may hold the
//!   whole chain; `ca` adds certificates sent after it (intermediates, as OpenSSL's chain
//!   building does for Node when they are only in `ca`). Client certificates are not asked for.
//!   ALPN offers `http/1.1`, the only protocol a WebSocket upgrade runs over.
//! * **The handshake.** It runs on the accept thread, like the upgrade it carries, under the
//!   same `handshakeTimeout`, counted from the TCP accept: a client that dribbles its hello is
//!   cut at the deadline. tokio-rustls drives it and the upgrade request over it
//!   (`net::handshake` reads the head of any [`HeadStream`]); a failure is counted in
//!   `metrics().tlsErrors` and ends that socket alone.
//! * **Once upgraded** the connection drives rustls itself, from socket readiness, like a plain
//!   one ([`Sock`]): a read decrypts what the socket holds, a write encrypts the frames it is
//!   given and hands the records to the kernel. rustls keeps at most [`TLS_BUFFER`] of records
//!   the kernel did not take; the writer empties it before anything else, and our close frame
//!   counts as written only once its record is out. `bufferedAmount` counts bytes not yet
//!   encrypted, so it is below the exact figure by at most that much.
//!
//! Edge cases owned here: a key in a format rustls cannot read (a legacy encrypted PEM), a
//! passphrase given for a plain key (ignored, as Node does) or missing for an encrypted one, a peer that closes without
//! `close_notify` (an end of stream like any other), an alert or a bad record mid-connection (the
//! connection ends, counted as a TLS error).

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConnection;
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::core::config::{ConfigError, Fault, TlsFault, TlsPem};
use crate::core::metrics::Metrics;

/// The most of TLS records one read decrypts before it returns (with `WouldBlock` if they held no
/// data): a client sending records with little or no data (one-byte records, key updates) costs
/// a worker at most this much decryption per read, and its connection's read budget and byte
/// rate count every byte of it.
pub(crate) const READ_WIRE_CAP: usize = 16 * 1024;

/// The most of TLS records rustls holds that the kernel has not taken yet (and so the most of
/// plaintext it accepts in one write): one full record. `bufferedAmount` does not count it.
pub(crate) const TLS_BUFFER: usize = 16 * 1024;

fn refuse(fault: TlsFault, message: impl Into<String>) -> ConfigError {
    ConfigError {
        option: "tls",
        fault: Fault::Tls(fault),
        message: message.into(),
    }
}

/// The largest ClientHello read: 16 KiB, as for a request head. Real ones take 0.3 to 2 KiB
/// (post-quantum key shares included); rustls alone would hold up to 64 KiB of one for every
/// socket that announces it and sends it slowly.
pub(crate) const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The first TLS record of a connection, looked at before rustls reads it ([`await_hello`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// It has arrived whole (or it is no TLS handshake record: rustls refuses it).
    Arrived,
    /// It announces a ClientHello above [`MAX_CLIENT_HELLO`], or a record above TLS's 16 KiB:
    /// refused.
    TooLarge(usize),
    /// The client closed first.
    Gone,
}

/// Bytes queued in the socket's receive buffer (`FIONREAD`).
fn queued(tcp: &TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: the fd is a live socket owned by `tcp`; FIONREAD writes one c_int into `n`.
    if unsafe { libc::ioctl(tcp.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Waits, with `SO_RCVLOWAT` raised to what is still missing, until the first TLS record (the
/// ClientHello, or its first part) has arrived whole: a client that dribbles its hello a byte at
/// a time wakes the accept thread about four times, not once per packet, and one that
/// announces more than [`MAX_CLIENT_HELLO`] (or a record longer than TLS allows) is refused
/// before anything is buffered.
/// `SO_RCVLOWAT` is back to 1 when it returns. The caller bounds it by `handshakeTimeout`.
pub(crate) async fn await_hello(tcp: &TcpStream) -> io::Result<Hello> {
    use crate::net::handshake::set_rcvlowat;
    // The record header (5 bytes), then the handshake header (4), which says the hello's length.
    const RECORD: usize = 5;
    const HEADERS: usize = 9;
    /// The largest record TLS allows: 2^14 bytes of plaintext (RFC 8446 §5.1).
    const MAX_RECORD: usize = 1 << 14;
    let mut want = RECORD;
    // The first record's length is known and awaited.
    let mut awaiting_record = false;
    let result = loop {
        set_rcvlowat(tcp, want)?;
        let ready = tcp.ready(tokio::io::Interest::READABLE).await?;
        let enough = tcp.try_io(tokio::io::Interest::READABLE, || {
            if queued(tcp)? >= want {
                Ok(true)
            } else if ready.is_read_closed() {
                Ok(false)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match enough {
            Ok(true) => {}
            Ok(false) => break Hello::Gone,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if awaiting_record {
            break Hello::Arrived;
        }
        let mut head = [std::mem::MaybeUninit::<u8>::uninit(); HEADERS];
        let n = SockRef::from(tcp).peek(&mut head[..want])?;
        // SAFETY: `peek` initialised the first `n` bytes.
        let head: Vec<u8> = head[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // Anything but a handshake record is for rustls to refuse.
        if n < want || head[0] != 0x16 {
            break Hello::Arrived;
        }
        let record = (head[3] as usize) << 8 | head[4] as usize;
        if record > MAX_RECORD {
            break Hello::TooLarge(record);
        }
        if want == RECORD {
            want = HEADERS;
            continue;
        }
        if head[5] != 0x01 {
            break Hello::Arrived;
        }
        let hello = (head[6] as usize) << 16 | (head[7] as usize) << 8 | head[8] as usize;
        if hello > MAX_CLIENT_HELLO {
            break Hello::TooLarge(hello);
        }
        want = RECORD + record.max(HEADERS - RECORD);
        awaiting_record = true;
    };
    set_rcvlowat(tcp, 1)?;
    Ok(result)
}

/// The crypto provider: ring, the only one compiled in.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `pem`, or why it is refused.
pub(crate) fn server_config(pem: &TlsPem) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let key = private_key(&pem.key, pem.passphrase.as_deref())?;
    let mut chain = certificates(&pem.cert, "cert")?;
    if chain.is_empty() {
        return Err(refuse(
            TlsFault::Cert,
            "tls.cert holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let mut pool = Vec::new();
    for ca in &pem.ca {
        pool.extend(certificates(ca, "ca")?);
    }
    complete_chain(&mut chain, &pool);
    let provider = provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| {
        refuse(
            TlsFault::Key,
            format!("tls.key is not a private key rustls can sign with: {e}"),
        )
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(refuse(
                TlsFault::Mismatch,
                "tls.key does not match tls.cert (the first certificate's public key)",
            ))
        }
        Err(e) => {
            return Err(refuse(
                TlsFault::Cert,
                format!("tls.cert's first certificate cannot be checked against tls.key: {e}"),
            ))
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse(TlsFault::Cert, format!("no TLS version available: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The longest chain a handshake sends: the leaf and this many more.
const MAX_CHAIN: usize = 10;

/// Appends to `chain` (the leaf first) the certificates of `pool` that certify its last one, one
/// after the other, as OpenSSL's chain building does for Node's `ca`: the issuer of each is the
/// subject of the next. A self-signed certificate (a root, which the client must already trust)
/// ends the chain and is not sent; certificates of `pool` that do not chain are not sent either,
/// so a CA bundle given as `ca` does not ride along with every handshake.
fn complete_chain(chain: &mut Vec<CertificateDer<'static>>, pool: &[CertificateDer<'static>]) {
    while chain.len() <= MAX_CHAIN {
        let Some((issuer, subject)) = chain.last().and_then(|c| names(c)) else {
            return;
        };
        if issuer == subject {
            return;
        }
        let next = pool
            .iter()
            .find(|c| names(c).is_some_and(|(i, s)| s == issuer && i != s) && !chain.contains(c));
        match next {
            Some(c) => chain.push(c.clone()),
            None => return,
        }
    }
}

/// A certificate's issuer and subject, as their DER encodings (compared byte for byte, as
/// certificates issued by one CA encode its name the same way); `None` if it does not parse.
fn names(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, certificate, _) = der_item(cert)?;
    let (_, tbs, _) = der_item(certificate)?;
    let (tag, _, after_version) = der_item(tbs)?;
    // version [0] EXPLICIT, absent in v1 certificates
    let rest = if tag == 0xa0 { after_version } else { tbs };
    let (_, _, rest) = der_item(rest)?; // serialNumber
    let (_, _, rest) = der_item(rest)?; // signature algorithm
    let issuer_len = rest.len() - der_item(rest)?.2.len();
    let (issuer, rest) = rest.split_at(issuer_len);
    let (_, _, rest) = der_item(rest)?; // validity
    let subject_len = rest.len() - der_item(rest)?.2.len();
    Some((issuer, &rest[..subject_len]))
}

/// One DER item of `input`: its tag, its content and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificates of a PEM text, in order; an error for a section that does not parse.
fn certificates(pem: &[u8], option: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            refuse(
                TlsFault::Cert,
                format!("tls.{option} is not valid PEM: {e}"),
            )
        })
}

/// The private key of `pem`: a plain PKCS#8, PKCS#1 or SEC1 key, or an encrypted PKCS#8 one
/// (`-----BEGIN ENCRYPTED PRIVATE KEY-----`) opened with `passphrase`.
fn private_key(
    pem: &[u8],
    passphrase: Option<&str>,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(refuse(
            TlsFault::Key,
            "tls.key is a legacy encrypted PEM key (Proc-Type: 4,ENCRYPTED), which sluice cannot \
             read: convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc` \
             (or to a plain key)",
        ));
    }
    if let Some(start) = text.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(passphrase) = passphrase else {
            return Err(refuse(
                TlsFault::Passphrase,
                "tls.key is encrypted: tls.passphrase is needed to open it",
            ));
        };
        let (label, der) = pkcs8::der::pem::decode_vec(&pem[start..])
            .map_err(|e| refuse(TlsFault::Key, format!("tls.key is not valid PEM: {e}")))?;
        if label != "ENCRYPTED PRIVATE KEY" {
            return Err(refuse(TlsFault::Key, "tls.key is not valid PEM"));
        }
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| {
            refuse(
                TlsFault::Key,
                format!("tls.key is not an encrypted PKCS#8 key: {e}"),
            )
        })?;
        let plain = info.decrypt(passphrase).map_err(|_| {
            refuse(
                TlsFault::Passphrase,
                "tls.passphrase does not open tls.key (a wrong passphrase, or a cipher sluice \
                 cannot use)",
            )
        })?;
        return Ok(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec()).into());
    }
    // A passphrase with a plain key is ignored, as Node's TLS ignores it.
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(refuse(
            TlsFault::Key,
            "tls.key holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC \
             PRIVATE KEY)",
        )),
        Err(e) => Err(refuse(
            TlsFault::Key,
            format!("tls.key is not valid PEM: {e}"),
        )),
    }
}

/// Bounds what rustls buffers for a connection at [`TLS_BUFFER`].
pub(crate) fn limit_buffers(conn: &mut ServerConnection) {
    conn.set_buffer_limit(Some(TLS_BUFFER));
}

/// Reads into `buf` what the peer sent, decrypted: first what rustls holds already, then from
/// `rd` (the socket). `held` is the plaintext rustls holds, decrypted by earlier reads and not
/// yet returned; it is kept up to date. Returns the result and the bytes read from `rd` that
/// are not plaintext (records' headers and tags, records without data): what the socket carried
/// is then counted once, as this overhead now and as plaintext when it is returned.
///
/// `Ok(0)` is the end of the stream, with or without `close_notify`. `WouldBlock` when rustls
/// holds no plaintext and either the socket has nothing more (so a reader that then waits for
/// readiness misses nothing) or [`READ_WIRE_CAP`] was read without data (the socket is still
/// readable: readiness stays set). A record that fails is an `InvalidData` error, after
/// rustls's alert was offered to `wr`.
pub(crate) fn read_plain(
    c: &mut ServerConnection,
    rd: &mut dyn Read,
    wr: &mut dyn Write,
    buf: &mut [u8],
    held: &mut usize,
) -> (io::Result<usize>, usize) {
    let mut wire = 0usize;
    let mut decrypted = 0usize;
    let r = loop {
        match c.reader().read(buf) {
            Ok(n) => {
                *held = held.saturating_sub(n);
                break Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *held = 0,
            // The peer closed the TCP stream without close_notify: an end like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(0),
            Err(e) => break Err(e),
        }
        if wire >= READ_WIRE_CAP {
            break Err(io::ErrorKind::WouldBlock.into());
        }
        let n = match c.read_tls(rd) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        wire += n;
        if n == 0 {
            break Ok(0);
        }
        match c.process_new_packets() {
            Ok(state) => {
                let now = state.plaintext_bytes_to_read();
                decrypted += now.saturating_sub(*held);
                *held = now;
            }
            Err(e) => {
                let _ = push(c, wr);
                break Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    };
    (r, wire.saturating_sub(decrypted))
}

/// Hands rustls's pending records to `wr` until it would block. `Ok(true)`: none left.
pub(crate) fn push(c: &mut ServerConnection, wr: &mut dyn Write) -> io::Result<bool> {
    while c.wants_write() {
        match c.write_tls(wr) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads and writes through tokio's readiness (`try_read`/`try_write`): a `WouldBlock` clears
/// it, so that waiting for readiness then waits for the kernel.
struct Ready<'a>(&'a TcpStream);

impl Read for Ready<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Ready<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Plain `send(2)`s, for a socket the reactor has not polled yet (see `Sock::write_now`).
pub(crate) struct Raw<'a>(pub(crate) SockRef<'a>);

impl Write for Raw<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        const FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
        #[cfg(not(target_os = "linux"))]
        const FLAGS: libc::c_int = 0;
        self.0.send_with_flags(buf, FLAGS)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Raw<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// A connection's TLS session, once upgraded.
struct Session {
    conn: Mutex<ServerConnection>,
    /// The plaintext rustls holds (see [`read_plain`]); read and written under `conn`'s lock.
    held: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

/// A connection's socket: TCP, and its TLS session if it has one. The connection reads, writes
/// and waits through this alone, so that it does not know which it is.
pub(crate) struct Sock {
    tcp: TcpStream,
    tls: Option<Box<Session>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sock {
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Self { tcp, tls: None }
    }

    pub(crate) fn tls(tcp: TcpStream, mut conn: ServerConnection, metrics: Arc<Metrics>) -> Self {
        limit_buffers(&mut conn);
        // What the client sent with its request (its first frames), decrypted already.
        let held = conn
            .process_new_packets()
            .map_or(0, |s| s.plaintext_bytes_to_read());
        Self {
            tcp,
            tls: Some(Box::new(Session {
                conn: Mutex::new(conn),
                held: std::sync::atomic::AtomicUsize::new(held),
                metrics,
            })),
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Counts a failed record (an `InvalidData` from [`read_plain`]) as a TLS error.
    fn counted<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let (Err(e), Some(s)) = (&r, &self.tls) {
            if e.kind() == io::ErrorKind::InvalidData {
                s.metrics
                    .tls_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        r
    }

    /// A non-blocking read of what the peer sent (decrypted), and the bytes it took from the
    /// socket beyond those it returns: records' headers and tags, and records without data (0
    /// for a plain socket). `WouldBlock` when nothing is there.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> (io::Result<usize>, usize) {
        match &self.tls {
            None => (self.tcp.try_read(buf), 0),
            Some(s) => {
                let mut c = lock(&s.conn);
                let mut held = s.held.load(std::sync::atomic::Ordering::Relaxed);
                let (r, overhead) = read_plain(
                    &mut c,
                    &mut Ready(&self.tcp),
                    &mut Ready(&self.tcp),
                    buf,
                    &mut held,
                );
                s.held.store(held, std::sync::atomic::Ordering::Relaxed);
                // Records rustls answers with (a key update): out now, as far as they go; the
                // writer pushes the rest ([`Sock::pending_out`]).
                if c.wants_write() {
                    let _ = push(&mut c, &mut Ready(&self.tcp));
                }
                drop(c);
                (self.counted(r), overhead)
            }
        }
    }

    /// Over TLS: no read or write holds the session right now (a look, not a promise), so that
    /// the fan-out does not wait behind a reader's decryption to write inline.
    pub(crate) fn is_free(&self) -> bool {
        self.tls.as_ref().is_none_or(|s| s.conn.try_lock().is_ok())
    }

    /// A non-blocking write; returns the bytes taken. Over TLS: the records rustls still holds
    /// go first (`WouldBlock` while they do not), then up to [`TLS_BUFFER`] of `b` is encrypted
    /// and handed on as far as the kernel takes it; the rest of those records waits in rustls.
    ///
    /// Plain, it is one `send(2)` straight to the socket, without tokio's look at its readiness
    /// first: that look reads the socket's readiness word, a line of memory of its own, and the
    /// fan-out writing to 10,000 sockets in a row found it cold each time. Only a refusal goes
    /// through tokio, whose own attempt then clears the readiness it had (if no new event came
    /// in the meantime), so that a wait for `writable()` after it waits for the kernel.
    pub(crate) fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => match Raw(SockRef::from(&self.tcp)).write(b) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.try_write(b),
                r => r,
            },
            Some(_) => self.try_write_vectored(&[IoSlice::new(b)]),
        }
    }

    /// As [`Sock::try_write`], from several buffers.
    pub(crate) fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match &self.tls {
            None => self.tcp.try_write_vectored(iov),
            Some(s) => {
                let mut c = lock(&s.conn);
                if !push(&mut c, &mut Ready(&self.tcp))? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = c.writer().write_vectored(iov)?;
                push(&mut c, &mut Ready(&self.tcp))?;
                Ok(n)
            }
        }
    }

    /// TLS records wait in rustls for the kernel (never for a plain socket).
    pub(crate) fn pending_out(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|s| lock(&s.conn).wants_write())
    }

    /// Hands pending TLS records to the kernel. `Ok(true)`: none left (always, plain).
    pub(crate) fn push_pending(&self) -> io::Result<bool> {
        match &self.tls {
            None => Ok(true),
            Some(s) => push(&mut lock(&s.conn), &mut Ready(&self.tcp)),
        }
    }

    /// Writes what the socket takes at once of `bytes` with plain `send(2)`s, for a socket just
    /// registered with a reactor that has not polled it (tokio's `try_write` would not even try).
    /// Returns the bytes taken. Over TLS all of `bytes` is encrypted; records the kernel did not
    /// take wait in rustls for the writer.
    pub(crate) fn write_now(&self, mut bytes: &[u8]) -> io::Result<usize> {
        let mut raw = Raw(SockRef::from(&self.tcp));
        match &self.tls {
            None => {
                let all = bytes.len();
                while !bytes.is_empty() {
                    match raw.write(bytes) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => bytes = &bytes[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(all - bytes.len())
            }
            Some(s) => {
                let mut c = lock(&s.conn);
                // Above the buffer limit for once: the 101 is small and goes out whole.
                c.set_buffer_limit(None);
                c.writer().write_all(bytes)?;
                limit_buffers(&mut c);
                push(&mut c, &mut raw)?;
                Ok(bytes.len())
            }
        }
    }

    /// Shuts the write side: over TLS after `close_notify`, offered to the kernel first.
    pub(crate) fn shutdown_write(&self) {
        if let Some(s) = &self.tls {
            let mut c = lock(&s.conn);
            c.send_close_notify();
            let _ = push(&mut c, &mut Raw(SockRef::from(&self.tcp)));
        }
        let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }

    /// The socket's read readiness, as `readable()` waits for it, polled by the reader alone
    /// (tokio keeps one waker per direction: the last poll's).
    pub(crate) fn poll_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.tcp.poll_read_ready(cx)
    }

    /// The same for writes, polled by the writer alone.
    pub(crate) fn poll_write_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }
}

impl crate::net::handshake::HeadStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let (tcp, c) = self.get_mut();
        crate::net::handshake::read_into(buf, |b| {
            let sock = SockRef::from(&*tcp);
            read_plain(c, &mut Raw(SockRef::from(&*tcp)), &mut Raw(sock), b, &mut 0).0
        })
    }
    fn into_parts(self) -> (TcpStream, Option<ServerConnection>) {
        let (tcp, session) = self.into_inner();
        (tcp, Some(session))
    }
    /// A clean TLS close is `close_notify` before the FIN, which a peek at the TCP socket would
    /// take for data: one read of what arrived goes into rustls (its data stays there for the
    /// connection to read first) and tells whether the peer closed.
    fn hung_up(&mut self) -> bool {
        let (tcp, c) = self.get_mut();
        match c.read_tls(&mut Raw(SockRef::from(&*tcp))) {
            Ok(0) => true,
            Ok(_) => c
                .process_new_packets()
                .map_or(true, |s| s.peer_has_closed()),
            // rustls refusing to buffer more (a client that sent much meanwhile) is no hang-up.
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testkit::test_certs;

    fn fault(pem: &TlsPem) -> (TlsFault, String) {
        match server_config(pem) {
            Ok(_) => panic!("accepted: {pem:?}"),
            Err(e) => match e.fault {
                Fault::Tls(f) => (f, e.message),
                other => panic!("not a TLS fault: {other:?}"),
            },
        }
    }

    fn ca(
        name: &str,
        issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
    ) -> (
        rcgen::CertificateParams,
        rcgen::KeyPair,
        CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = match issuer {
            None => params.self_signed(&key).unwrap(),
            Some(i) => params.signed_by(&key, i).unwrap(),
        };
        (params, key, cert.der().clone())
    }

    /// `ca` completes the chain from the leaf up, as OpenSSL does for Node: intermediates that
    /// certify it are sent in order; the root and certificates that do not chain are not.
    #[test]
    fn ca_completes_the_chain_and_sends_nothing_else() {
        let (root_p, root_k, root) = ca("root", None);
        let root_i = rcgen::Issuer::new(root_p, root_k);
        let (mid_p, mid_k, mid) = ca("intermediate", Some(&root_i));
        let mid_i = rcgen::Issuer::new(mid_p, mid_k);
        let (_, _, other) = ca("unrelated root", None);
        let (_, _, other_mid) = ca("unrelated intermediate", Some(&root_i));
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &mid_i)
            .unwrap()
            .der()
            .clone();
        let pool = vec![other.clone(), root.clone(), other_mid, mid.clone()];
        let mut chain = vec![leaf.clone()];
        complete_chain(&mut chain, &pool);
        assert!(
            chain == vec![leaf.clone(), mid.clone()],
            "leaf, intermediate: {} certificates",
            chain.len()
        );
        // Already complete in `cert`: nothing added twice.
        let mut chain = vec![leaf.clone(), mid.clone()];
        complete_chain(&mut chain, &pool);
        assert_eq!(chain.len(), 2);
        assert!(names(b"not DER").is_none());
    }

    /// Each way a `tls` option cannot serve is refused with its own fault, naming the field.
    #[test]
    fn keys_and_certificates_that_cannot_serve_are_refused_each_with_its_code() {
        let good = test_certs().pem.clone();
        server_config(&good).expect("the test certificate serves");
        let with_passphrase = TlsPem {
            passphrase: Some("ignored".into()),
            ..good.clone()
        };
        server_config(&with_passphrase).expect("a passphrase with a plain key is ignored");
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let cases = [
            (TlsPem { key: other_key.into_bytes(), ..good.clone() }, TlsFault::Mismatch, "does not match"),
            (TlsPem { key: b"not a key".to_vec(), ..good.clone() }, TlsFault::Key, "holds no PEM private key"),
            (TlsPem { cert: b"not a certificate".to_vec(), ..good.clone() }, TlsFault::Cert, "holds no PEM certificate"),
            (
                TlsPem { cert: b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(), ..good.clone() },
                TlsFault::Cert,
                "not valid PEM",
            ),
            (
                TlsPem { key: b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".to_vec(), ..good.clone() },
                TlsFault::Passphrase,
                "passphrase is needed",
            ),
            (
                TlsPem {
                    key: b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n".to_vec(),
                    ..good.clone()
                },
                TlsFault::Key,
                "legacy encrypted PEM",
            ),
        ];
        for (pem, want, says) in cases {
            let (got, message) = fault(&pem);
            assert_eq!(got, want, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
            assert!(message.starts_with("tls."), "{message:?} names the field");
        }
    }
}
