//! Reads the pinned maps back and decodes them for `meshctl maps`: addresses, ports,
//! cookies and counter names, never raw bytes.
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap, SockHash};
use mesh_common::{
    counter, drop_reason, inbound_mode, ip_from_addr, verdict, Addr, DestKey, DestValue, DropKey, InboundRule,
    NetnsPortKey, OrigDst, PodInfo, PolicyKey, PolicyMeta, PolicyValue, SockKey, DEST_SERVICE, MAP_COUNTERS,
    MAP_DROPS, MAP_INBOUND, MAP_INBOUND_EXEMPT_SRC, MAP_INBOUND_LISTENERS, MAP_INBOUND_PORTS, MAP_MESH_DESTS,
    MAP_ORIG_BY_COOKIE, MAP_ORIG_DST, MAP_OUTBOUND_EXCLUDED_PORTS, MAP_PODS, MAP_POLICY_META, MAP_POLICY_PODS,
    MAP_POLICY_RULES, POLICY_HAS_ALLOW, POLICY_KEY_FIXED_BITS,
};

use crate::l4policy::Prefix;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("no maps pinned under {0}: is the agent running with this --bpffs?")]
    NoPins(PathBuf),
    #[error("reading pinned map {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("unknown map {0:?}; `meshctl maps` lists the maps")]
    Unknown(String),
}

/// One line of `meshctl maps`.
#[derive(Debug, Serialize)]
pub struct MapSummary {
    pub name: String,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub entries: usize,
    pub capacity: u32,
}

/// The maps we decode, in display order.
pub const KNOWN: [&str; 18] = [
    MAP_PODS,
    MAP_MESH_DESTS,
    MAP_ORIG_BY_COOKIE,
    MAP_ORIG_DST,
    MAP_INBOUND,
    MAP_INBOUND_PORTS,
    MAP_INBOUND_LISTENERS,
    MAP_INBOUND_EXEMPT_SRC,
    MAP_OUTBOUND_EXCLUDED_PORTS,
    mesh_common::MAP_FORWARDS,
    MAP_COUNTERS,
    MAP_DROPS,
    MAP_POLICY_PODS,
    MAP_POLICY_META,
    MAP_POLICY_RULES,
    mesh_common::MAP_FAST_PODS,
    mesh_common::MAP_FAST_SOCKS,
    mesh_common::MAP_FAST_OFF,
];

pub fn list(bpffs: &Path) -> Result<Vec<MapSummary>, DumpError> {
    let mut out = Vec::new();
    for name in KNOWN {
        let path = bpffs.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DumpError::Read { path: path.clone(), source })?;
        let entries = dump(bpffs, name)?.len();
        out.push(MapSummary {
            name: name.to_string(),
            kind: info.map_type().map(|t| format!("{t:?}")).unwrap_or_else(|_| "unknown".into()),
            key_size: info.key_size(),
            value_size: info.value_size(),
            entries,
            capacity: info.max_entries(),
        });
    }
    if out.is_empty() {
        return Err(DumpError::NoPins(bpffs.to_path_buf()));
    }
    Ok(out)
}

/// Every entry of map `name`, decoded.
pub fn dump(bpffs: &Path, name: &str) -> Result<Vec<Value>, DumpError> {
    let path = bpffs.join(name);
    let read = |source| DumpError::Read { path: path.clone(), source };
    let data = MapData::from_pin(&path).map_err(read)?;
    let map = Map::from_map_data(data).map_err(read)?;
    let rows = match name {
        MAP_PODS => {
            let m: HashMap<_, u64, PodInfo> = HashMap::try_from(map).map_err(read)?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(cookie, v)| json!({"netns_cookie": cookie, "addr": ip_from_addr(v.addr).to_string()}))
                .collect()
        }
        MAP_MESH_DESTS => {
            let m: HashMap<_, DestKey, DestValue> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    let kind = if v.flags & DEST_SERVICE != 0 { "service" } else { "workload" };
                    json!({"addr": ip_from_addr(k.addr).to_string(), "port": u16::from_be(k.port_be), "kind": kind})
                })
                .collect();
            rows.sort_by_key(|r| (r["addr"].as_str().unwrap_or("").to_string(), r["port"].as_u64()));
            rows
        }
        MAP_ORIG_BY_COOKIE => {
            let m: HashMap<_, u64, OrigDst> = HashMap::try_from(map).map_err(read)?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(cookie, v)| json!({"socket_cookie": cookie, "netns_cookie": v.netns_cookie, "dst": orig(&v)}))
                .collect()
        }
        MAP_ORIG_DST => {
            let m: HashMap<_, SockKey, OrigDst> = HashMap::try_from(map).map_err(read)?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(k, v)| json!({"netns_cookie": k.netns_cookie, "port": k.port, "dst": orig(&v)}))
                .collect()
        }
        MAP_COUNTERS => {
            let m: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(read)?;
            (0..counter::COUNT)
                .map(|i| {
                    let total: u64 = m.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
                    json!({"name": counter::NAMES[i as usize], "value": total})
                })
                .collect()
        }
        MAP_DROPS => {
            let m: PerCpuHashMap<_, DropKey, u64> = PerCpuHashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, per_cpu)| {
                    let total: u64 = per_cpu.iter().sum();
                    json!({"pod": ip_from_addr(k.addr).to_string(), "reason": drop_reason::name(k.reason), "code": k.reason, "count": total})
                })
                .collect();
            rows.sort_by_key(|r| (r["pod"].as_str().unwrap_or("").to_string(), r["code"].as_u64()));
            rows
        }
        MAP_INBOUND => {
            let m: HashMap<_, Addr, InboundRule> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(a, r)| json!({"pod": ip_from_addr(a).to_string(), "mode": inbound_mode::name(r.mode)}))
                .collect();
            rows.sort_by_key(|r| r["pod"].as_str().unwrap_or("").to_string());
            rows
        }
        MAP_INBOUND_PORTS => {
            let m: HashMap<_, DestKey, InboundRule> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, r)| {
                    json!({"pod": ip_from_addr(k.addr).to_string(), "port": u16::from_be(k.port_be), "mode": inbound_mode::name(r.mode)})
                })
                .collect();
            rows.sort_by_key(|r| (r["pod"].as_str().unwrap_or("").to_string(), r["port"].as_u64()));
            rows
        }
        MAP_INBOUND_LISTENERS => {
            // The values are sockets; userspace can list the keys only.
            let m: SockHash<_, Addr> = SockHash::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .keys()
                .filter_map(Result::ok)
                .map(|a| json!({"pod": ip_from_addr(a).to_string(), "listener": "15006"}))
                .collect();
            rows.sort_by_key(|r| r["pod"].as_str().unwrap_or("").to_string());
            rows
        }
        MAP_INBOUND_EXEMPT_SRC => {
            let m: HashMap<_, Addr, u32> = HashMap::try_from(map).map_err(read)?;
            m.keys().filter_map(Result::ok).map(|a| json!({"source": ip_from_addr(a).to_string()})).collect()
        }
        MAP_OUTBOUND_EXCLUDED_PORTS => {
            let m: HashMap<_, NetnsPortKey, u32> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .keys()
                .filter_map(Result::ok)
                .map(|k| json!({"netns_cookie": k.netns_cookie, "port": u16::from_be(k.port_be)}))
                .collect();
            rows.sort_by_key(|r| (r["netns_cookie"].as_u64(), r["port"].as_u64()));
            rows
        }
        mesh_common::MAP_FORWARDS => {
            let m: HashMap<_, mesh_common::ForwardKey, u8> = HashMap::try_from(map).map_err(read)?;
            m.keys()
                .filter_map(Result::ok)
                .map(|k| {
                    let src = std::net::SocketAddr::new(ip_from_addr(k.remote), u16::from_be(k.remote_port_be));
                    json!({"src": src.to_string(), "app_port": k.local_port})
                })
                .collect()
        }
        mesh_common::MAP_FAST_PODS => {
            let m: HashMap<_, u64, u32> = HashMap::try_from(map).map_err(read)?;
            m.iter().filter_map(Result::ok).map(|(cookie, on)| json!({"netns_cookie": cookie, "on": on})).collect()
        }
        mesh_common::MAP_FAST_SOCKS => {
            // The values are sockets; userspace can list the keys only.
            let m: SockHash<_, mesh_common::FastKey> = SockHash::try_from(map).map_err(read)?;
            m.keys().filter_map(Result::ok).map(|k| super::fastpath::key_json(&k)).collect()
        }
        mesh_common::MAP_FAST_OFF => {
            let m: HashMap<_, mesh_common::FastKey, u32> = HashMap::try_from(map).map_err(read)?;
            m.keys().filter_map(Result::ok).map(|k| super::fastpath::key_json(&k)).collect()
        }
        MAP_POLICY_PODS => {
            let m: HashMap<_, Addr, u32> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(pod, version)| json!({"pod": ip_from_addr(pod).to_string(), "version": version}))
                .collect();
            rows.sort_by_key(|r| r["pod"].as_str().unwrap_or("").to_string());
            rows
        }
        MAP_POLICY_META => {
            let active = policy_active(bpffs);
            let m: HashMap<_, u32, PolicyMeta> = HashMap::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(version, v)| {
                    json!({
                        "version": version,
                        "pod": ip_from_addr(v.pod).to_string(),
                        "active": active.contains_key(&version),
                        "default": if v.flags & POLICY_HAS_ALLOW != 0 { "deny (an ALLOW policy selects the pod)" } else { "allow" },
                        "entries": v.entries,
                    })
                })
                .collect();
            rows.sort_by_key(|r| r["version"].as_u64());
            rows
        }
        MAP_POLICY_RULES => {
            // Which pod each version belongs to, and whether it is the one in force.
            let active = policy_active(bpffs);
            let m: LpmTrie<_, PolicyKey, PolicyValue> = LpmTrie::try_from(map).map_err(read)?;
            let mut rows: Vec<Value> = m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    let d = k.data();
                    let prefix = policy_prefix(&k);
                    let port = u16::from_be(d.port_be);
                    json!({
                        "pod": active.get(&d.version).map(|p| p.to_string()).unwrap_or_else(|| "(retired)".into()),
                        "version": d.version,
                        "port": if port == 0 { "*".to_string() } else { port.to_string() },
                        "source": prefix.to_string(),
                        "verdict": verdict::name(v.verdict),
                        "policy": if v.policy == u32::MAX { Value::Null } else { json!(v.policy) },
                    })
                })
                .collect();
            rows.sort_by_key(|r| {
                (
                    r["pod"].as_str().unwrap_or("").to_string(),
                    r["version"].as_u64(),
                    r["port"].as_str().unwrap_or("").to_string(),
                    r["source"].as_str().unwrap_or("").to_string(),
                )
            });
            rows
        }
        other => return Err(DumpError::Unknown(other.to_string())),
    };
    Ok(rows)
}

/// The source prefix of a `POLICY_RULES` key (its length net of the fixed fields).
pub(crate) fn policy_prefix(key: &aya::maps::lpm_trie::Key<PolicyKey>) -> Prefix {
    let len = key.prefix_len().saturating_sub(POLICY_KEY_FIXED_BITS).min(128) as u8;
    let mut octets = [0u8; 16];
    for (i, w) in key.data().src.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Prefix { bits: u128::from_be_bytes(octets), len }
}

/// Version -> pod, for the versions `POLICY_PODS` points at (the ones in force).
fn policy_active(bpffs: &Path) -> std::collections::HashMap<u32, std::net::IpAddr> {
    let Ok(data) = MapData::from_pin(bpffs.join(MAP_POLICY_PODS)) else { return Default::default() };
    let Ok(m) = HashMap::<_, Addr, u32>::try_from(Map::HashMap(data)) else { return Default::default() };
    m.iter().filter_map(Result::ok).map(|(pod, v)| (v, ip_from_addr(pod))).collect()
}

fn orig(v: &OrigDst) -> String {
    std::net::SocketAddr::new(ip_from_addr(v.addr), u16::from_be(v.port_be)).to_string()
}
