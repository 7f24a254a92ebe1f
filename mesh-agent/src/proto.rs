//! Generated gRPC/protobuf types, one module per upstream package (see `proto/README.md`).
#![allow(clippy::all, missing_docs)]

/// Envoy's delta ADS (`envoy.service.discovery.v3`).
pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

/// Istio's workload API (`istio.workload`).
pub mod workload {
    tonic::include_proto!("istio.workload");
}

/// Istio's CA API (`istio.v1.auth`).
pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

/// Istio's authorization policy for node proxies (`istio.security`).
pub mod security {
    tonic::include_proto!("istio.security");
}

/// mesh's extension of [`security::Authorization`] (`mesh.security`): rules as written.
pub mod mesh_security {
    tonic::include_proto!("mesh.security");
}

/// mesh's L7 routing resources (`mesh.networking`): VirtualService and
/// DestinationRule with hosts resolved.
pub mod mesh_networking {
    tonic::include_proto!("mesh.networking");
}

/// The xDS type URL of [`mesh_networking::VirtualService`] (ours, not Istio's).
pub const VIRTUAL_SERVICE_TYPE_URL: &str = "type.googleapis.com/mesh.networking.VirtualService";

/// The xDS type URL of [`mesh_networking::DestinationRule`] (ours, not Istio's).
pub const DESTINATION_RULE_TYPE_URL: &str = "type.googleapis.com/mesh.networking.DestinationRule";

/// The xDS type URL of [`security::Authorization`].
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// The xDS type URL of [`mesh_security::RequestAuthentication`] (ours, not Istio's).
pub const REQUEST_AUTHENTICATION_TYPE_URL: &str = "type.googleapis.com/mesh.security.RequestAuthentication";

/// The xDS type URL of [`workload::Address`].
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// `DeltaDiscoveryResponse.system_version_info` of each part of a split response but
/// the last (`controlplane::xds_server::PART_BYTES`): more of this answer follows.
pub const MORE_TO_COME: &str = "mesh:more-to-come";

#[cfg(test)]
mod tests {
    use super::{mesh_security, workload};
    use prost::Message as _;

    /// The same content encodes to the same bytes however its maps were built: the
    /// control plane's versions hash the encoding (see build.rs).
    #[test]
    fn maps_in_resources_encode_in_one_order() {
        let keys: Vec<String> = (0..8).map(|i| format!("ns/svc-{i}")).collect();
        let workload = |keys: &mut dyn Iterator<Item = &String>| workload::Workload {
            services: keys.map(|k| (k.clone(), workload::PortList::default())).collect(),
            ..Default::default()
        };
        let forward = workload(&mut keys.iter()).encode_to_vec();
        let backward = workload(&mut keys.iter().rev()).encode_to_vec();
        assert_eq!(forward, backward);
        let ra = |keys: &mut dyn Iterator<Item = &String>| mesh_security::RequestAuthentication {
            selector: keys.map(|k| (k.clone(), "v".to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(ra(&mut keys.iter()).encode_to_vec(), ra(&mut keys.iter().rev()).encode_to_vec());
    }
}
