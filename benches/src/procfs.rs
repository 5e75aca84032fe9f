//! What the load generator reads from Linux's `/proc`: a process's resident memory, the
//! processes listening on a TCP port (to find the connectors of either stack without knowing
//! how they were started), and the open-files limit.

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
}
