//! Request/response latency over one TCP connection: fixed-size ping-pong.
//!   mesh-rr server --port 7000
//!   mesh-rr client --addr 10.201.1.3:7000 [--size 64] [--count 20000] [--seconds 20] [--connect-each]
//! The client prints one JSON line: count, p50_us, p90_us, p99_us, mean_us, max_us,
//! failed. With `--connect-each` every sample is a whole connection: connect, one round
//! trip, close; `--addr` may then list several addresses (comma-separated), used in
//! turn. By default the first failure ends the client (exit 1); with `--keep-going`
//! failures are counted (connects bounded by 2 s), and the client goes on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, default: &str| -> String {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
    };
    let size: usize = get("--size", "64").parse().unwrap_or(64).clamp(1, 1 << 16);
    match args.first().map(String::as_str) {
        Some("server") => server(get("--port", "7000").parse().unwrap_or(7000), size),
        Some("client") => client(
            &get("--addr", "127.0.0.1:7000"),
            size,
            get("--count", "20000").parse().unwrap_or(20000),
            Duration::from_secs(get("--seconds", "20").parse().unwrap_or(20)),
            args.iter().any(|a| a == "--connect-each"),
            args.iter().any(|a| a == "--keep-going"),
        ),
        _ => {
            eprintln!("usage: mesh-rr server --port P | client --addr IP:P [--size N] [--count N] [--seconds S] [--connect-each] [--keep-going]");
            std::process::exit(2)
        }
    }
}

fn server(port: u16, size: usize) {
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("mesh-rr: cannot listen on {port}: {e}");
        std::process::exit(1)
    });
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
            let mut conn = conn;
            let mut buf = vec![0u8; size];
            while conn.read_exact(&mut buf).is_ok() {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
    let conn = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    conn.set_nodelay(true).ok();
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    Ok(conn)
}

fn client(addr: &str, size: usize, count: usize, limit: Duration, connect_each: bool, keep_going: bool) {
    let addrs: Vec<&str> = addr.split(',').collect();
    let fail = |what: String| {
        eprintln!("mesh-rr: {what}");
        if !keep_going {
            std::process::exit(1);
        }
    };
    let mut conn = None;
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    let mut samples: Vec<u32> = Vec::with_capacity(count);
    let mut failed = 0usize;
    let start = Instant::now();
    while samples.len() + failed < count && start.elapsed() < limit {
        let t = Instant::now();
        let target = addrs[(samples.len() + failed) % addrs.len()];
        if conn.is_none() {
            match connect(target) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failed += 1;
                    fail(format!("cannot connect to {target} after {} round trips: {e}", samples.len()));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if let Err(e) = c.write_all(&msg).and_then(|_| c.read_exact(&mut buf)) {
            conn = None;
            failed += 1;
            fail(format!("connection to {target} failed after {} round trips: {e}", samples.len()));
            continue;
        }
        if connect_each {
            conn = None;
        }
        samples.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    samples.sort_unstable();
    let pct = |p: f64| -> u32 {
        if samples.is_empty() {
            return 0;
        }
        samples[((samples.len() - 1) as f64 * p).round() as usize]
    };
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len().max(1) as f64;
    println!(
        "{{\"count\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"mean_us\":{:.1},\"max_us\":{},\"failed\":{failed}}}",
        samples.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        mean,
        samples.last().copied().unwrap_or(0),
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
