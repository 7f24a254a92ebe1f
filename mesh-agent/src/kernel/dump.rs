//! Reads the pinned maps back and decodes them for `meshctl maps`: addresses, ports,
//! cookies and counter names, never raw bytes.
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap, SockHash};
use mesh_common::{
    counter, drop_reason, inbound_mode, ip_from_addr, Addr, DestKey, DestValue, DropKey, InboundRule,
    NetnsPortKey, OrigDst, PodInfo, SockKey, DEST_SERVICE, MAP_COUNTERS, MAP_DROPS, MAP_INBOUND,
    MAP_INBOUND_EXEMPT_SRC, MAP_INBOUND_LISTENERS, MAP_INBOUND_PORTS, MAP_MESH_DESTS, MAP_ORIG_BY_COOKIE,
    MAP_ORIG_DST, MAP_OUTBOUND_EXCLUDED_PORTS, MAP_PODS,
};
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
pub const KNOWN: [&str; 12] = [
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
        other => return Err(DumpError::Unknown(other.to_string())),
    };
    Ok(rows)
}

fn orig(v: &OrigDst) -> String {
    std::net::SocketAddr::new(ip_from_addr(v.addr), u16::from_be(v.port_be)).to_string()
}
