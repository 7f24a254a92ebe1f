//! Builds the eBPF programs (embedded into the agent) and the gRPC/xDS schemas.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let protos = [
        "../proto/envoy_discovery.proto",
        "../proto/istio_workload.proto",
        "../proto/istio_ca.proto",
        "../proto/istio_authorization.proto",
    ];
    // Our own schemas are compiled on their own: `istio.security` refers to
    // `mesh.security` by the module path `proto::mesh_security` (the packages are flat
    // modules there).
    let ours = ["../proto/mesh_authorization.proto", "../proto/mesh_networking.proto"];
    for p in protos.iter().chain(&ours) {
        println!("cargo::rerun-if-changed={p}");
    }
    let hint = "compiling proto/ (is protoc installed? run scripts/setup.sh)";
    // Maps in served resources are BTreeMaps: a resource's version is a hash of its
    // encoding, and a HashMap encodes in a random order per instance, so the same
    // content would get a new version in every process (a restarted control plane
    // would re-send what the agents hold) and at every rebuild. Every map of ours is
    // in a served resource.
    tonic_build::configure().btree_map(["."]).compile_protos(&ours, &["../proto"]).context(hint)?;
    tonic_build::configure()
        .btree_map([".istio.workload.Workload.services"])
        .build_server(true)
        .build_client(true)
        .extern_path(".mesh.security", "crate::proto::mesh_security")
        .compile_protos(&protos, &["../proto"])
        .context(hint)?;

    // AYA_BUILD_SKIP=1 (host-only checks while the eBPF crate is being edited) leaves
    // an empty object; the agent then refuses to start with a clear message.
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("mesh");
        std::fs::write(out, b"")?;
        return Ok(());
    }
    // The eBPF crate lives beside this one; aya-build compiles it with the nightly
    // toolchain for the bpf target and leaves the object in OUT_DIR.
    let ebpf = aya_build::Package {
        name: "mesh-ebpf",
        root_dir: "../mesh-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
        .context("building the eBPF programs (see scripts/setup.sh for bpf-linker and rust-src)")
}
