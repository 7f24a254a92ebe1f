//! docs/benchmarks.md holds one section per benchmark command; each command replaces
//! only its own section (from its `## ` heading to the next one).
use std::path::PathBuf;

use anyhow::Result;

pub fn benchmarks_md() -> PathBuf {
    mesh_tests::workspace_root().join("docs/benchmarks.md")
}

/// `kernel <release>, <CPU model>, <n> cores`, for a benchmark's machine line.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("kernel {}, {}, {cores} cores", kernel.trim(), model.unwrap_or_else(|| "?".into()))
}

/// Replaces (or appends) the section whose heading line is `heading` with `body`
/// in docs/benchmarks.md.
pub fn replace_section(heading: &str, body: &str) -> Result<PathBuf> {
    let path = benchmarks_md();
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, replace_in(&old, heading, body))?;
    Ok(path)
}

/// `doc` with the section under `heading` replaced by `body` (appended if absent).
fn replace_in(doc: &str, heading: &str, body: &str) -> String {
    let mut sections: Vec<String> = Vec::new();
    let mut replaced = false;
    let mut skipping = false;
    for line in doc.lines() {
        if line.starts_with("## ") {
            skipping = false;
        }
        if line == heading {
            sections.push(format!("{heading}\n{}\n\n", body.trim_end()));
            replaced = true;
            skipping = true;
            continue;
        }
        if !skipping {
            sections.push(format!("{line}\n"));
        }
    }
    let out = sections.concat();
    if replaced {
        format!("{}\n", out.trim_end())
    } else {
        format!("{}\n\n{heading}\n{}\n", out.trim_end(), body.trim_end())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sections_are_replaced_in_place() {
        let doc = "# B\n\n## one\nold\n\n## two\nkeep\n";
        let out = super::replace_in(doc, "## one", "new");
        assert_eq!(out, "# B\n\n## one\nnew\n\n## two\nkeep\n");
        let out = super::replace_in(doc, "## three", "added");
        assert!(out.ends_with("## two\nkeep\n\n## three\nadded\n"), "{out}");
    }
}
