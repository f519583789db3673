//! Server-side CPU of full TLS 1.3 handshakes, in memory (no sockets, no threads): a rustls
//! client and a sluice-like rustls server (ring, ALPN http/1.1), EC P-256 certificate. Measures
//! only the server's calls (`read_tls`, `process_new_packets`, `write_tls`) with the thread's CPU
//! clock. `cargo run --release --example tls_handshake_cpu -- [N]`.
//! Variants: tickets 2/1/0, client offering AES-256 first (as Node/OpenSSL do) or AES-128 first
//! (as browsers do), server order AES-128 first.
use std::io::Cursor;
use std::sync::Arc;

fn cpu_ns() -> u128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let ca = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&ca).unwrap();
    let cert_der = cert.der().clone();
    let key_der: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::PrivatePkcs8KeyDer::from(ca.serialize_der()).into();
    let suites = rustls::crypto::ring::default_provider().cipher_suites;
    let by = |name: &str| {
        *suites
            .iter()
            .find(|s| format!("{:?}", s.suite()) == name)
            .unwrap()
    };
    let aes256 = by("TLS13_AES_256_GCM_SHA384");
    let aes128 = by("TLS13_AES_128_GCM_SHA256");
    let chacha = by("TLS13_CHACHA20_POLY1305_SHA256");
    let server = |tickets: usize, order: Option<Vec<rustls::SupportedCipherSuite>>| {
        let mut p = rustls::crypto::ring::default_provider();
        let ignore = order.is_some();
        if let Some(o) = order {
            p.cipher_suites = o;
        }
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(p))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der.clone_key())
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.send_tls13_tickets = tickets;
        c.ignore_client_order = ignore;
        Arc::new(c)
    };
    let client = |order: Vec<rustls::SupportedCipherSuite>| {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites = order;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(p))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let node_like = client(vec![aes256, chacha, aes128]);
    let browser_like = client(vec![aes128, aes256, chacha]);
    let cases: Vec<(&str, Arc<rustls::ServerConfig>, &Arc<rustls::ClientConfig>)> = vec![
        (
            "default, 2 tickets, client AES-256 first",
            server(2, None),
            &node_like,
        ),
        (
            "default, 1 ticket,  client AES-256 first",
            server(1, None),
            &node_like,
        ),
        (
            "default, 0 tickets, client AES-256 first",
            server(0, None),
            &node_like,
        ),
        (
            "default, 2 tickets, client AES-128 first",
            server(2, None),
            &browser_like,
        ),
        (
            "server AES-128 first, 2 tickets, client AES-256 first",
            server(2, Some(vec![aes128, aes256, chacha])),
            &node_like,
        ),
        (
            "server AES-128 first, 1 ticket,  client AES-256 first",
            server(1, Some(vec![aes128, aes256, chacha])),
            &node_like,
        ),
        (
            "server CHACHA first, 2 tickets, client AES-256 first",
            server(2, Some(vec![chacha, aes128, aes256])),
            &node_like,
        ),
    ];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    for round in 0..2 {
        for (label, sc, cc) in &cases {
            let mut server_ns = 0u128;
            let mut suite = String::new();
            for _ in 0..n {
                let mut cl = rustls::ClientConnection::new((*cc).clone(), name.clone()).unwrap();
                let mut sv = rustls::ServerConnection::new(sc.clone()).unwrap();
                let mut buf = Vec::new();
                while cl.is_handshaking() || sv.is_handshaking() || sv.wants_write() {
                    buf.clear();
                    while cl.wants_write() {
                        cl.write_tls(&mut buf).unwrap();
                    }
                    let t = cpu_ns();
                    if !buf.is_empty() {
                        let mut r = Cursor::new(&buf[..]);
                        while (r.position() as usize) < buf.len() {
                            sv.read_tls(&mut r).unwrap();
                        }
                        sv.process_new_packets().unwrap();
                    }
                    let mut out = Vec::new();
                    while sv.wants_write() {
                        sv.write_tls(&mut out).unwrap();
                    }
                    server_ns += cpu_ns() - t;
                    if !out.is_empty() {
                        let mut r = Cursor::new(&out[..]);
                        while (r.position() as usize) < out.len() {
                            cl.read_tls(&mut r).unwrap();
                        }
                        cl.process_new_packets().unwrap();
                    }
                    if !cl.is_handshaking()
                        && !sv.is_handshaking()
                        && !sv.wants_write()
                        && !cl.wants_write()
                    {
                        break;
                    }
                }
                suite = format!("{:?}", sv.negotiated_cipher_suite().unwrap().suite());
            }
            if round == 1 {
                println!(
                    "{:>7.1} µs server CPU per handshake  {label}  [{suite}]",
                    server_ns as f64 / n as f64 / 1000.0
                );
            }
        }
    }
}
