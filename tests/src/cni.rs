//! Client side of the agent's pod-enrollment socket: one JSON object per line, one
//! response line each (`{"ok":true}` or `{"ok":false,"error":"..."}`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Sends one request and waits (up to 30 s) for its answer.
pub fn request(socket: &Path, msg: &Value) -> Result<()> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(msg)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).context("no answer from the agent's CNI socket")?;
    check_answer(&answer)
}

fn check_answer(answer: &str) -> Result<()> {
    let v: Value = serde_json::from_str(answer.trim()).with_context(|| format!("CNI answer is not JSON: {answer:?}"))?;
    if v["ok"] == true {
        return Ok(());
    }
    bail!("agent refused: {}", v["error"].as_str().unwrap_or(answer.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        assert!(check_answer("{\"ok\":true}\n").is_ok());
        let e = check_answer("{\"ok\":false,\"error\":\"no such netns\"}").unwrap_err();
        assert!(e.to_string().contains("no such netns"));
        assert!(check_answer("garbage").is_err());
    }
}
