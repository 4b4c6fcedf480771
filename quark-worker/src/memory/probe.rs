//! Reading a process's memory: its resident set, the limit of its control group, and the
//! machine's memory. On Linux from `/proc` and `/sys/fs/cgroup` (version 2, or version 1's
//! `memory` controller); elsewhere every reading fails and the worker says so.

use std::io;
use std::path::{Path, PathBuf};

/// Where a worker's memory figures come from. The default reads the operating system
/// ([`ProcProbe`]); another may measure differently (an allocator's own statistics) or script
/// the figures in a test.
pub trait MemoryProbe: Send + Sync + 'static {
    /// The process's resident memory, in bytes.
    fn resident(&self) -> io::Result<u64>;
    /// The memory limit of the process's control group, if it has one.
    fn group_limit(&self) -> io::Result<Option<u64>>;
    /// The machine's memory, in bytes.
    fn machine(&self) -> io::Result<u64>;
}

/// Reads `/proc/self/status` (`VmRSS`), `/proc/meminfo` (`MemTotal`) and the memory limit of the
/// process's control group, the smallest along its path up to the root.
#[derive(Debug, Clone)]
pub struct ProcProbe {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl Default for ProcProbe {
    fn default() -> Self {
        ProcProbe::at("/proc", "/sys/fs/cgroup")
    }
}

impl ProcProbe {
    /// A probe that reads `proc_root` as `/proc` and `cgroup_root` as `/sys/fs/cgroup`.
    pub fn at(proc_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        ProcProbe {
            proc_root: proc_root.into(),
            cgroup_root: cgroup_root.into(),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The value in kB of `key` in a `/proc` status-like text, in bytes.
fn kilobytes(text: &str, key: &str) -> io::Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| invalid(format!("no {key} line")))?;
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|e| invalid(format!("{key}: {e}")))?;
    Ok(kb * 1024)
}

/// A limit file's value: `max` (version 2) is none.
fn limit_value(text: &str) -> io::Result<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| invalid(format!("memory limit {text:?}: {e}")))
}

/// The control groups of `/proc/self/cgroup`: the version 2 path, and the version 1 `memory`
/// controller's path.
fn group_paths(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// The smallest limit in `file` along `path` up to `root` (a group's limit binds its children),
/// also trying `root` itself (a container sees its own group there).
fn smallest_limit(root: &Path, path: &str, file: &str) -> io::Result<Option<u64>> {
    let mut smallest: Option<u64> = None;
    let mut read_any = false;
    let mut dir = PathBuf::from(path.trim_start_matches('/'));
    loop {
        match std::fs::read_to_string(root.join(&dir).join(file)) {
            Ok(text) => {
                read_any = true;
                if let Some(limit) = limit_value(&text)? {
                    smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !dir.pop() {
            break;
        }
    }
    if read_any {
        Ok(smallest)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {file} under {}", root.display()),
        ))
    }
}

impl MemoryProbe for ProcProbe {
    fn resident(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(self.proc_root.join("self/status"))?;
        kilobytes(&status, "VmRSS")
    }

    fn group_limit(&self) -> io::Result<Option<u64>> {
        let groups = match std::fs::read_to_string(self.proc_root.join("self/cgroup")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (v2, v1) = group_paths(&groups);
        if let Some(path) = v2 {
            match smallest_limit(&self.cgroup_root, &path, "memory.max") {
                Ok(limit) => return Ok(limit),
                // A hybrid layout: version 2 without the memory controller.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(path) = v1 {
            let root = self.cgroup_root.join("memory");
            // Version 1 says "no limit" with a huge number; anything past the machine is none.
            let machine = self.machine().unwrap_or(u64::MAX);
            return Ok(smallest_limit(&root, &path, "memory.limit_in_bytes")?
                .filter(|&limit| limit < machine));
        }
        Ok(None)
    }

    fn machine(&self) -> io::Result<u64> {
        let meminfo = std::fs::read_to_string(self.proc_root.join("meminfo"))?;
        kilobytes(&meminfo, "MemTotal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("quark-probe-{}", uuid::Uuid::now_v7()));
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    const STATUS: &str = "Name:\tquark\nVmPeak:\t  99999 kB\nVmRSS:\t    2020 kB\nThreads:\t4\n";
    const MEMINFO: &str = "MemTotal:       24683784 kB\nMemFree:        1000 kB\n";

    #[test]
    fn it_reads_rss_and_the_machine_from_proc() {
        let root = tree(&[("proc/self/status", STATUS), ("proc/meminfo", MEMINFO)]);
        let probe = ProcProbe::at(root.join("proc"), root.join("cg"));
        assert_eq!(probe.resident().unwrap(), 2020 * 1024);
        assert_eq!(probe.machine().unwrap(), 24_683_784 * 1024);
        // No cgroup file at all: no limit.
        assert_eq!(probe.group_limit().unwrap(), None);
    }

    #[test]
    fn it_takes_the_smallest_version_2_limit_along_the_group_s_path() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/app/worker\n"),
            ("proc/meminfo", MEMINFO),
            ("cg/app/memory.max", "1073741824\n"),
            ("cg/app/worker/memory.max", "max\n"),
        ]);
        let probe = ProcProbe::at(root.join("proc"), root.join("cg"));
        assert_eq!(probe.group_limit().unwrap(), Some(1 << 30));
    }

    #[test]
    fn it_reads_version_1_and_takes_its_huge_number_for_no_limit() {
        let v1 = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let limited = tree(&[
            ("proc/self/cgroup", v1),
            ("proc/meminfo", MEMINFO),
            (
                "cg/memory/process_api/abc/memory.limit_in_bytes",
                "536870912\n",
            ),
        ]);
        let probe = ProcProbe::at(limited.join("proc"), limited.join("cg"));
        assert_eq!(probe.group_limit().unwrap(), Some(512 << 20));
        let unlimited = tree(&[
            ("proc/self/cgroup", v1),
            ("proc/meminfo", MEMINFO),
            ("cg/memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        let probe = ProcProbe::at(unlimited.join("proc"), unlimited.join("cg"));
        assert_eq!(probe.group_limit().unwrap(), None);
    }

    #[test]
    fn a_garbled_file_is_an_error_that_names_it() {
        let root = tree(&[
            ("proc/self/status", "VmRSS:\tlots kB\n"),
            ("proc/self/cgroup", "0::/\n"),
            ("cg/memory.max", "a lot\n"),
        ]);
        let probe = ProcProbe::at(root.join("proc"), root.join("cg"));
        assert!(probe.resident().unwrap_err().to_string().contains("VmRSS"));
        let limit = probe.group_limit().unwrap_err().to_string();
        assert!(limit.contains("a lot"), "{limit}");
        assert!(probe.machine().is_err(), "no meminfo");
    }

    #[test]
    fn the_default_probe_reads_this_machine() {
        let probe = ProcProbe::default();
        if cfg!(target_os = "linux") {
            let rss = probe.resident().unwrap();
            let machine = probe.machine().unwrap();
            assert!(rss > 0 && rss < machine, "rss {rss}, machine {machine}");
        } else {
            assert!(probe.resident().is_err());
        }
    }
}
