//! Tiny HTTP/1.1 server for test pods: answers every request with
//! `hello from <name>` and prints each request line (with the peer) to stdout,
//! followed by its headers, each as `  > name: value`.
//! Usage: mesh-echo --port 8080 --name echo-1

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let mut port = 8080u16;
    let mut name = String::from("echo");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| usage()),
            "--name" => name = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(("::", port)).unwrap_or_else(|e| {
        eprintln!("mesh-echo: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    println!("mesh-echo {name} listening on {port}");
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &name);
        });
    }
}

fn usage() -> ! {
    eprintln!("usage: mesh-echo --port PORT --name NAME");
    std::process::exit(2)
}

fn serve(conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_nodelay(true)?;
    let peer = conn.peer_addr().map(|a| std::net::SocketAddr::new(a.ip().to_canonical(), a.port()).to_string()).unwrap_or_default();
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    // Bounded keep-alive: at most 100,000 requests on one connection.
    for _ in 0..100_000 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut close = false;
        let mut headers = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            headers.push_str(&format!("  > {}\n", h.trim_end()));
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length.min(1 << 20)];
        reader.read_exact(&mut body)?;
        print!("{} from {peer}\n{headers}", request_line.trim_end());
        let _ = std::io::stdout().flush();
        let text = format!("hello from {name}\n");
        // One write per response: several small ones would wait on delayed ACKs.
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{text}",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}
