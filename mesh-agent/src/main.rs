//! `mesh-agent`: the node agent (`agent`) and the control-plane role (`control-plane`).
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-agent", version, about = "Sidecarless service mesh: node agent and control plane")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the node agent (one per node): capture, mTLS, HBONE, enrollment.
    Agent(mesh_agent::agent::AgentArgs),
    /// Run the control plane: config from a folder, xDS and a CA.
    ControlPlane(mesh_agent::controlplane::ControlPlaneArgs),
    /// Print a node's token (for its agent's --node-token-file), made with the control
    /// plane's node-token key.
    NodeToken(mesh_agent::controlplane::NodeTokenArgs),
    /// Detach everything a stopped agent left attached (pinned links) and remove its
    /// bpffs folder.
    Uninstall(mesh_agent::agent::UninstallArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => exit(&format!("cannot start the async runtime: {e}")),
    };
    let result: Result<(), String> = rt.block_on(async {
        match cli.role {
            Role::Agent(args) => mesh_agent::agent::run(args, shutdown_signal()).await.map_err(|e| mesh_agent::error_chain(&e)),
            Role::Uninstall(args) => mesh_agent::agent::uninstall(&args).await.map_err(|e| mesh_agent::error_chain(&e)),
            Role::NodeToken(args) => mesh_agent::controlplane::node_token(&args)
                .map(|token| println!("{token}"))
                .map_err(|e| mesh_agent::error_chain(&e)),
            Role::ControlPlane(args) => {
                mesh_agent::controlplane::run(args, shutdown_signal()).await.map_err(|e| mesh_agent::error_chain(&e))
            }
        }
    });
    if let Err(e) = result {
        exit(&e);
    }
}

fn exit(msg: &str) -> ! {
    eprintln!("mesh-agent: {msg}");
    std::process::exit(1)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
