//! Developer commands: `cargo xtask demo`, `cargo xtask bench`, `cargo xtask bench-policy`,
//! `cargo xtask bench-restart`, `cargo xtask bench-fastpath`, `cargo xtask bench-l7`, `cargo xtask bench-xds`,
//! `cargo xtask bench-ondemand`,
//! `cargo xtask cleanup`.

mod bench;
mod bench_fastpath;
mod bench_l7;
mod bench_ondemand;
mod bench_policy;
mod bench_restart;
mod bench_xds;
mod demo;
mod doc;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mesh developer commands (run as root: they build network namespaces and load eBPF)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Two nodes, four pods, the control plane and two agents: requests through the
    /// mesh, access logs and kernel maps, then everything removed.
    Demo,
    /// Direct vs meshed throughput and latency, same node and across nodes; writes
    /// docs/benchmarks.md.
    Bench {
        /// iperf3 duration per run, seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Round trips per latency run (bounded by 20 s).
        #[arg(long, default_value_t = 20000)]
        round_trips: u32,
    },
    /// Nanoseconds per packet of the L4 policy program with 1k, 10k and 100k rules
    /// (BPF_PROG_TEST_RUN); replaces its section of docs/benchmarks.md.
    BenchPolicy {
        /// Runs per measured packet.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
    /// Failed requests while node1's agent restarts under connect-each load: left
    /// alone, replaced gracefully (hand-over + drain), stopped and started; replaces
    /// its section of docs/benchmarks.md.
    BenchRestart {
        /// Requests per client (two clients: same node, across nodes).
        #[arg(long, default_value_t = 100_000)]
        requests: u32,
        /// Bound on each client's run, seconds.
        #[arg(long, default_value_t = 8)]
        seconds: u32,
    },
    /// The same-node fast path on vs off, side by side in one run (throughput, 64 B
    /// and 64 KiB RR latency, new connections); replaces its section of docs/benchmarks.md.
    BenchFastpath {
        /// iperf3 duration per run, seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Round trips per 64 B latency run (bounded by 20 s); 64 KiB runs do a quarter.
        #[arg(long, default_value_t = 20000)]
        round_trips: u32,
        /// Rounds of (on, off); the table gives medians.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// What judging HTTP costs: no policy, an L4 policy, an HTTP policy, and an HTTP
    /// policy with a JWT on every request, side by side (h2load, same node and across
    /// nodes); replaces its section of docs/benchmarks.md.
    BenchL7 {
        /// Requests per h2load run.
        #[arg(long, default_value_t = 20000)]
        requests: u32,
        /// Rounds of the four setups; the table gives medians.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// The control plane at scale: 1,000 delta ADS clients (one per node), a series of
    /// changes timed from the file write to the affected agents' ACKs, bytes, memory and
    /// CPU; replaces its section of docs/benchmarks.md.
    BenchXds {
        /// Pods.
        #[arg(long, default_value_t = 10_000)]
        workloads: usize,
        /// Services (the pods are spread evenly over them).
        #[arg(long, default_value_t = 1_000)]
        services: usize,
        /// Nodes, each with one connected client.
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Changes measured (alternating kinds).
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// With a mesh default Sidecar (egress `./*`): changes reach only the agents
        /// whose pods may call what changed; writes its own section.
        #[arg(long)]
        sidecar: bool,
    },
    /// What an on-demand lookup of a caller costs: first and second requests from fresh
    /// callers to a node that holds them (no Sidecar) and to one that looks them up (a
    /// mesh default Sidecar), side by side; replaces its section of docs/benchmarks.md.
    BenchOndemand {
        /// Fresh caller pods per mode and round.
        #[arg(long, default_value_t = 10)]
        callers: usize,
        /// Rounds of (open, narrowed).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Removes leftovers (namespaces, cgroups, bpffs folders) of killed test runs.
    Cleanup,
}

fn main() -> Result<()> {
    mesh_tests::install_signal_cleanup();
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this command needs root (network namespaces, cgroups, eBPF); try: sudo -E cargo xtask ...");
    }
    match cli.cmd {
        Cmd::Demo => demo::run(),
        Cmd::Bench { seconds, round_trips } => bench::run(seconds, round_trips),
        Cmd::BenchPolicy { repeat } => bench_policy::run(repeat),
        Cmd::BenchRestart { requests, seconds } => bench_restart::run(requests, seconds),
        Cmd::BenchFastpath { seconds, round_trips, rounds } => bench_fastpath::run(seconds, round_trips, rounds.clamp(1, 20)),
        Cmd::BenchL7 { requests, rounds } => bench_l7::run(requests, rounds.clamp(1, 20)),
        Cmd::BenchOndemand { callers, rounds } => bench_ondemand::run(callers.clamp(1, 50), rounds.clamp(1, 10)),
        Cmd::BenchXds { workloads, services, nodes, changes, sidecar } => {
            bench_xds::run(workloads, services, nodes, changes.clamp(1, 200), sidecar)
        }
        Cmd::Cleanup => {
            mesh_tests::cleanup::cleanup_stale();
            Ok(())
        }
    }
}
