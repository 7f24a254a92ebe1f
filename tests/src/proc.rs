//! Child processes of the test bed: placed in a network namespace and a cgroup
//! before exec, logs in a file, killed when dropped.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Builds a command whose child joins `cgroup` and then `netns` (a `/run/netns/<name>`
/// path) before exec, with signals unblocked and SIGKILL on parent death. Not
/// `ip netns exec`: that remounts /sys and hides bpffs and cgroups.
pub fn command(args: &[&str], netns: Option<&Path>, cgroup: Option<&Path>) -> Result<Command> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let mut cmd = Command::new(prog);
    cmd.args(rest).stdin(Stdio::null());
    let ns_fd: Option<OwnedFd> = match netns {
        Some(p) => Some(File::open(p).with_context(|| format!("open netns {}", p.display()))?.into()),
        None => None,
    };
    let procs_fd: Option<OwnedFd> = match cgroup {
        Some(p) => {
            let f = OpenOptions::new().write(true).open(p.join("cgroup.procs"));
            Some(f.with_context(|| format!("open {}/cgroup.procs", p.display()))?.into())
        }
        None => None,
    };
    // SAFETY: the closure only makes async-signal-safe system calls and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = &procs_fd {
                let mut buf = [0u8; 24];
                let mut n = libc::getpid() as u64;
                let mut i = buf.len();
                loop {
                    i -= 1;
                    buf[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let len = buf.len() - i;
                if libc::write(fd.as_raw_fd(), buf[i..].as_ptr().cast(), len) != len as isize {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &ns_fd {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs a command to completion, bounded by `timeout` (coreutils `timeout`, which is
/// placed like the command itself).
pub fn run(args: &[&str], netns: Option<&Path>, cgroup: Option<&Path>, timeout: Duration) -> Result<Output> {
    let secs = format!("{}", timeout.as_secs().max(1));
    let mut full = vec!["timeout", "-k", "2", secs.as_str()];
    full.extend_from_slice(args);
    let out = command(&full, netns, cgroup)?
        .output()
        .with_context(|| format!("run {args:?}"))?;
    Ok(out)
}

/// Runs a host command (no namespace) and fails with its stderr when it fails.
pub fn host(args: &[&str]) -> Result<String> {
    let out = run(args, None, None, Duration::from_secs(20))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A long-running child with stdout and stderr in one log file; killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn().with_context(|| format!("spawn {name} ({cmd:?})"))?;
        Ok(Proc { name: name.to_string(), log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far, ANSI colour codes removed.
    pub fn output(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Some(st);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return Some(st);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        let s = "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3msrc.identity\u{1b}[0m\u{1b}[2m=\u{1b}[0mspiffe://x";
        assert_eq!(strip_ansi(s), "2024  INFO src.identity=spiffe://x");
    }
}
