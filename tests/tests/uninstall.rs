//! `mesh-agent uninstall` removes every link, pin and attachment the agent made, and
//! nothing else: a stand-in for a CNI's own programs, attached to the same pod's
//! cgroup (connect4), network namespace (sk_lookup) and interface (tcx ingress)
//! before the agent's, is still attached afterwards; the agent's pinned links are
//! gone from the kernel, its routing is gone from the pod's namespace, and the pod is
//! reached directly.
//!
//! The stand-in loads the agent's own object a second time with maps of its own (in a
//! separate bpffs folder): they hold nothing, so its programs decide nothing, but the
//! kernel sees other programs, attached by someone else.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SkLookup, TcAttachType};
use aya::EbpfLoader;
use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};

/// The ids of the links pinned under `bpffs/links/<pod>/`.
fn pinned_link_ids(bpffs: &Path) -> HashSet<u32> {
    let mut ids = HashSet::new();
    for pod in std::fs::read_dir(bpffs.join("links")).into_iter().flatten().flatten() {
        for pin in std::fs::read_dir(pod.path()).into_iter().flatten().flatten() {
            let link = FdLink::from(PinnedLink::from_pin(pin.path()).expect("opening a pinned link"));
            ids.insert(link.info().expect("link info").id());
        }
    }
    ids
}

/// The ids of every bpf_link in the kernel.
fn live_link_ids() -> HashSet<u32> {
    aya::programs::loaded_links().filter_map(Result::ok).map(|l| l.id()).collect()
}

/// The "CNI": the same programs, other maps, attached first.
struct Foreign {
    links: HashSet<u32>,
    /// Closing them detaches the CNI's programs (at the end of the test).
    held: Vec<FdLink>,
    _ebpf: aya::Ebpf,
    bpffs: PathBuf,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.held.clear();
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

fn attach_foreign(cgroup: &Path, netns: &Path) -> anyhow::Result<Foreign> {
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/mesh-test-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&bpffs)?;
    let mut ebpf = EbpfLoader::new().default_map_pin_directory(&bpffs).load(mesh_agent::kernel::ebpf_object())?;
    let mut held = Vec::new();
    let mut keep = |link: FdLink| -> anyhow::Result<()> {
        held.push(link);
        Ok(())
    };
    let connect4: &mut CgroupSockAddr = ebpf.program_mut("connect4").unwrap().try_into()?;
    connect4.load()?;
    let id = connect4.attach(std::fs::File::open(cgroup)?, CgroupAttachMode::Single)?;
    keep(FdLink::try_from(connect4.take_link(id)?)?)?;
    let lookup: &mut SkLookup = ebpf.program_mut("steer_inbound").unwrap().try_into()?;
    lookup.load()?;
    let id = lookup.attach(std::fs::File::open(netns)?)?;
    keep(FdLink::from(lookup.take_link(id)?))?;
    let tc: &mut SchedClassifier = ebpf.program_mut("policy_ingress").unwrap().try_into()?;
    tc.load()?;
    let tc_link = mesh_agent::netns::run_in(netns, || {
        let opts = aya::programs::tc::TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = tc.attach_with_options("eth0", TcAttachType::Ingress, opts).map_err(std::io::Error::other)?;
        tc.take_link(id).map_err(std::io::Error::other)
    })?;
    keep(FdLink::try_from(tc_link)?)?;
    let links = held.iter().map(|l| l.info().map(|i| i.id())).collect::<Result<_, _>>()?;
    Ok(Foreign { links, held, _ebpf: ebpf, bpffs })
}

#[test]
fn uninstall_removes_ours_and_nothing_else() -> anyhow::Result<()> {
    if !require_root("uninstall") {
        return Ok(());
    }
    let mut scene = Scene::start("uninstall", Options { second_node: false, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let url = format!("http://{}:8080/", echo1.ip);
    let foreign = attach_foreign(&echo1.cgroup, &echo1.netns_path())?;
    // Enrolling again attaches the agent's programs after the CNI's.
    scene.bed.enroll(&echo1)?;
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");

    let bpffs = scene.bed.bpffs("node1");
    let ours = pinned_link_ids(&bpffs);
    assert!(ours.len() >= 6, "expected the pods' links pinned, found {ours:?}");
    let live = live_link_ids();
    assert!(ours.is_subset(&live) && foreign.links.is_subset(&live), "links not live before uninstall");
    let rules = |pod: &mesh_tests::Pod| -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&pod.run(&["ip", "rule", "show"])?.stdout).into_owned())
    };
    assert!(rules(&echo1)?.contains("fwmark 0x539"), "podnet's rule is missing before uninstall");

    scene.bed.stop_agent("node1").expect("agent was running");
    scene.bed.uninstall("node1")?;

    let live = live_link_ids();
    let left: Vec<&u32> = ours.intersection(&live).collect();
    assert!(left.is_empty(), "links of ours still in the kernel: {left:?}");
    let lost: Vec<&u32> = foreign.links.difference(&live).collect();
    assert!(lost.is_empty(), "uninstall took the CNI's links too: {lost:?}");
    for pod in [&client, &echo1] {
        let r = rules(pod)?;
        assert!(!r.contains("fwmark 0x539"), "podnet's rule left in {}: {r}", pod.name);
    }
    // Nothing captures, steers or drops: the client reaches echo-1 directly.
    assert_eq!(curl_ok(&client, &url, 3)?.trim(), "hello from echo-1");
    drop(foreign);
    scene.finish();
    Ok(())
}
