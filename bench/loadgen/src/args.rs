//! Hand-rolled command line parsing (see `usage()`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use crate::ws::Target;

pub struct Config {
    pub target: Target,
    pub fast: u64,
    pub stalled: u64,
    pub slow: u64,
    pub slow_rate: u64,
    pub keys: u64,
    pub idle: bool,
    /// Offer permessage-deflate (every client and probe) and inflate what the server compresses.
    pub deflate: bool,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub ramp_per_s: f64,
    pub max_inflight: usize,
    pub connect_timeout_ms: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub ready_file: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub threads: usize,
    pub stalled_rcvbuf: usize,
    pub src_count: u8,
    /// Slow client i binds 127.0.0.(base + i), an address of its own (0 = the shared round-robin
    /// addresses like every other client), so that a qdisc filter can shape each one.
    pub slow_src_base: u8,
    pub quiet: bool,
}

pub fn usage() -> &'static str {
    "sluice-loadgen: WebSocket load generator for the sluice benchmarks (loopback targets only)

USAGE: sluice-loadgen --url ws://127.0.0.1:PORT/ [options]

  --url URL                 target, ws://127.x.y.z:PORT/path or ws://localhost:PORT/path
  --fast N                  clients that read as fast as possible (default 0)
  --stalled N               clients with SO_RCVBUF 4096 that never read after the upgrade (default 0)
  --slow N                  clients that read at most --slow-rate bytes/s (default 0)
  --slow-rate B             read budget of each slow client in bytes/s (default 10000); 0 = no
                            read limit: the slow clients read as fast as fast ones, and what makes
                            them slow is the network (bench scenario `mobile`: a shaped link)
  --keys K                  the server's messages carry K rotating conflation keys (key = sequence
                            number mod K): report, per slow client, how many newer versions of each
                            key it lacked at the end of the window (default 0 = not reported)
  --idle                    fast clients don't expect messages (idle scenario)
  --deflate                 offer `permessage-deflate; client_max_window_bits` in every upgrade
                            (clients and probes), check the server's answer and inflate its
                            compressed (RSV1) messages; report wire bytes and inflated bytes apart
  --probe-interval-ms P     during the window, a new probe connection every P ms (default 0 = none)
  --probe-timeout-ms T      probe timeout, connect + upgrade (default 2000)
  --ramp-per-s R            connection attempts per second while ramping up (default 2000)
  --max-inflight N          concurrent connection attempts while ramping (default 256)
  --connect-timeout-ms T    timeout of one client's connect + upgrade (default 10000)
  --warmup-s W              the window starts W s after all clients are connected (default 2)
  --duration-s D            measurement window length in seconds (default 10)
  --ready-file PATH         written (empty) when connecting has finished
  --out PATH                result JSON (default: stdout)
  --threads N               tokio worker threads; 1 = current_thread runtime (default 1)
  --stalled-rcvbuf B        SO_RCVBUF of stalled clients (default 4096)
  --src-count N             source addresses 127.0.0.2 .. 127.0.0.(1+N), round-robin (default 100)
  --slow-src-base A         slow client i binds 127.0.0.(A+i) alone, above the round-robin range
                            (default 0 = slow clients share the round-robin addresses)
  --quiet                   no per-second progress line on stderr
"
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url must start with ws:// (got {url})"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in --url: {p}"))?,
        ),
        None => (hostport, 80),
    };
    let ip: Ipv4Addr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse().map_err(|_| {
            format!("--url host must be an IPv4 loopback address or localhost (got {host})")
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "refusing non-loopback target {ip}: only 127.0.0.0/8 is allowed"
        ));
    }
    if port == 0 {
        return Err("--url port must not be 0".into());
    }
    Ok(Target {
        addr: SocketAddrV4::new(ip, port),
        host_header: hostport.to_string(),
        path: path.to_string(),
    })
}

pub fn parse() -> Result<Config, String> {
    let mut url: Option<String> = None;
    let mut c = Config {
        target: Target {
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            host_header: String::new(),
            path: "/".into(),
        },
        fast: 0,
        stalled: 0,
        slow: 0,
        slow_rate: 10_000,
        keys: 0,
        idle: false,
        deflate: false,
        probe_interval_ms: 0,
        probe_timeout_ms: 2000,
        ramp_per_s: 2000.0,
        max_inflight: 256,
        connect_timeout_ms: 10_000,
        warmup_s: 2.0,
        duration_s: 10.0,
        ready_file: None,
        out: None,
        threads: 1,
        stalled_rcvbuf: 4096,
        src_count: 100,
        slow_src_base: 0,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = |n: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("{n} needs a value")),
            }
        };
        fn num<T: std::str::FromStr>(n: &str, v: String) -> Result<T, String> {
            v.parse::<T>()
                .map_err(|_| format!("{n}: not a valid number: {v}"))
        }
        match name.as_str() {
            "--help" | "-h" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            "--url" => url = Some(val(&name)?),
            "--fast" => c.fast = num(&name, val(&name)?)?,
            "--stalled" => c.stalled = num(&name, val(&name)?)?,
            "--slow" => c.slow = num(&name, val(&name)?)?,
            "--slow-rate" => c.slow_rate = num(&name, val(&name)?)?,
            "--keys" => c.keys = num(&name, val(&name)?)?,
            "--idle" => c.idle = true,
            "--deflate" => c.deflate = true,
            "--probe-interval-ms" => c.probe_interval_ms = num(&name, val(&name)?)?,
            "--probe-timeout-ms" => c.probe_timeout_ms = num(&name, val(&name)?)?,
            "--ramp-per-s" => c.ramp_per_s = num(&name, val(&name)?)?,
            "--max-inflight" => c.max_inflight = num(&name, val(&name)?)?,
            "--connect-timeout-ms" => c.connect_timeout_ms = num(&name, val(&name)?)?,
            "--warmup-s" => c.warmup_s = num(&name, val(&name)?)?,
            "--duration-s" => c.duration_s = num(&name, val(&name)?)?,
            "--ready-file" => c.ready_file = Some(PathBuf::from(val(&name)?)),
            "--out" => c.out = Some(PathBuf::from(val(&name)?)),
            "--threads" => c.threads = num(&name, val(&name)?)?,
            "--stalled-rcvbuf" => c.stalled_rcvbuf = num(&name, val(&name)?)?,
            "--src-count" => c.src_count = num(&name, val(&name)?)?,
            "--slow-src-base" => c.slow_src_base = num(&name, val(&name)?)?,
            "--quiet" => c.quiet = true,
            other => return Err(format!("unknown argument {other}\n\n{}", usage())),
        }
    }
    c.target = parse_url(&url.ok_or_else(|| format!("--url is required\n\n{}", usage()))?)?;
    if !(c.ramp_per_s > 0.0 && c.ramp_per_s.is_finite()) {
        return Err("--ramp-per-s must be > 0".into());
    }
    let warmup_ok = c.warmup_s >= 0.0 && c.warmup_s.is_finite();
    let duration_ok = c.duration_s > 0.0 && c.duration_s.is_finite();
    if !warmup_ok || !duration_ok {
        return Err("--warmup-s must be >= 0 and --duration-s > 0".into());
    }
    if c.warmup_s + c.duration_s > 24.0 * 3600.0 {
        return Err("--warmup-s + --duration-s must be below 24 h".into());
    }
    if c.slow_src_base != 0 {
        let last = c.slow_src_base as u64 + c.slow.max(1) - 1;
        if (c.slow_src_base as u64) <= 1 + c.src_count as u64 || last > 254 {
            return Err(format!(
                "--slow-src-base: 127.0.0.{}..127.0.0.{last} must lie above the round-robin \
                 addresses 127.0.0.2..127.0.0.{} and at most at .254",
                c.slow_src_base,
                1 + c.src_count as u64
            ));
        }
    }
    if c.keys > 65_536 {
        return Err("--keys must be at most 65536".into());
    }
    if c.max_inflight == 0 || c.threads == 0 || c.src_count == 0 || c.src_count > 254 {
        return Err("--max-inflight and --threads must be > 0, --src-count 1..254".into());
    }
    if c.probe_timeout_ms == 0 || c.connect_timeout_ms == 0 {
        return Err("timeouts must be > 0".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = parse_url("ws://127.0.0.1:8080/").unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.path, "/");
        let t = parse_url("ws://localhost:9000").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.host_header, "localhost:9000");
        assert!(parse_url("ws://10.0.0.1:80/").is_err());
        assert!(parse_url("ws://example.com:80/").is_err());
        assert!(parse_url("http://127.0.0.1:80/").is_err());
    }
}
