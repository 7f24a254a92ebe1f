//! The test bed itself, without agents: pods on two nodes reach each other directly,
//! commands run inside pods' cgroups and namespaces, and nothing is left behind.

use std::path::Path;
use std::time::Duration;

use mesh_tests::{binary, require_root, TestBed};

#[test]
fn pods_on_two_nodes_talk_directly_and_cleanup_is_complete() -> anyhow::Result<()> {
    if !require_root("bed self-test") {
        return Ok(());
    }
    let name;
    {
        let mut bed = TestBed::new("bed self-test")?;
        name = bed.name.clone();
        bed.add_node("node1")?;
        bed.add_node("node2")?;
        let a = bed.add_pod("node1", "default", "a", "sleep", &[("app", "a")])?;
        let b = bed.add_pod("node2", "default", "b", "echo", &[("app", "b")])?;
        assert!(a.yaml.exists(), "pod YAML written");

        let echo = binary("mesh-echo")?;
        let server = b.spawn(&[echo.to_str().unwrap(), "--port", "8080", "--name", "b"])?;
        b.wait_listening(8080, Duration::from_secs(10))?;
        // The server runs in b's cgroup.
        let procs = std::fs::read_to_string(b.cgroup.join("cgroup.procs"))?;
        assert!(procs.lines().any(|l| l.trim() == server.pid().to_string()), "server joined the pod cgroup");

        let (code, body) = a.curl(&format!("http://{}:8080/", b.ip))?;
        assert_eq!((code, body.trim()), (200, "hello from b"));
        assert!(server.output().contains("GET / HTTP/1.1"), "server printed the request: {}", server.output());

        assert_ne!(a.netns_cookie()?, b.netns_cookie()?);
        let out = a.run(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
        assert!(String::from_utf8_lossy(&out.stdout).contains(&a.ip));

        bed.remove_pod(&b)?;
        assert!(!b.yaml.exists() && !b.cgroup.exists() && !b.netns_path().exists());
        let (code, _) = a.curl(&format!("http://{}:8080/", b.ip))?;
        assert_eq!(code, 0, "removed pod no longer answers");
        drop(server);
        bed.finish();
    }
    assert!(!Path::new("/sys/fs/cgroup/unified/mesh-test").join(&name).exists(), "cgroups removed");
    let left: Vec<_> = std::fs::read_dir("/run/netns")?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "namespaces removed: {left:?}");
    Ok(())
}
