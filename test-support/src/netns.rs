//! Several hosts on one machine: network namespaces joined by a bridge.
//!
//! [`Hosts::create`] makes one bridge in the root namespace (address `10.A.B.254/24`) and, per
//! host, a network namespace with loopback up and one end of a veth pair at `10.A.B.<i+1>/24`,
//! the other end on the bridge. The test process (root namespace) reaches every host through the
//! bridge; hosts reach each other the same way. Nothing is routed anywhere else.
//!
//! Processes are started inside a host with [`Hosts::command`] + [`Hosts::spawn`]. Dropping the
//! [`Hosts`] (also while a test unwinds from a failure) SIGKILLs every process inside its
//! namespaces (`ip netns pids`, so children of children too), reaps the ones it spawned, and
//! deletes the namespaces and the bridge. Leftovers of a test process that died without
//! unwinding (SIGKILL) are removed by the next [`Hosts::create`]: every name carries the pid of
//! the process that made it, and names whose process is gone are deleted.
//!
//! Needs root and iproute2 (`scripts/install-nats` installs it); the README's test command runs
//! as root here and in CI.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_SET: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace this module makes: `shd-<tag>-h<i>`.
const NS_PREFIX: &str = "shd-";
/// Prefix of the bridge (`shb<tag>`) and of the root-side veth ends (`sv<tag>h<i>`).
const BRIDGE_PREFIX: &str = "shb";

/// One host: a network namespace with one address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// Position in [`Hosts`], from 0.
    pub index: usize,
    /// The namespace's name (for `ip netns exec`).
    pub netns: String,
    /// The host's address on the bridge.
    pub addr: Ipv4Addr,
    /// The root-side end of its veth pair (set down to cut the host's link).
    veth: String,
}

/// A set of hosts on one bridge; see the [module docs](self).
#[derive(Debug)]
pub struct Hosts {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    hosts: Vec<Host>,
    /// Processes spawned here, with the host they run on.
    children: Mutex<Vec<(usize, Child)>>,
}

impl Hosts {
    /// Makes `n` hosts on a fresh bridge.
    ///
    /// # Errors
    /// When not root, when `ip` is missing, or when a step fails (the error names the command
    /// and carries its stderr); whatever was made before the failure is deleted again.
    pub fn create(n: usize) -> io::Result<Self> {
        remove_stale();
        let set = NEXT_SET.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}g{set}", std::process::id());
        let subnet = free_subnet(set)?;
        let bridge = format!("{BRIDGE_PREFIX}{tag}");
        let mut hosts = Self {
            tag,
            bridge,
            subnet,
            hosts: Vec::new(),
            children: Mutex::new(Vec::new()),
        };
        // From here on, Drop deletes whatever exists.
        ip(&["link", "add", &hosts.bridge, "type", "bridge"])?;
        let [a, b, c] = subnet;
        ip(&[
            "addr",
            "add",
            &format!("{a}.{b}.{c}.254/24"),
            "dev",
            &hosts.bridge,
        ])?;
        ip(&["link", "set", &hosts.bridge, "up"])?;
        for _ in 0..n {
            hosts.add_host()?;
        }
        Ok(hosts)
    }

    /// Adds one more host (the next index) to the bridge and returns it.
    ///
    /// # Errors
    /// As [`Hosts::create`]; at most 250 hosts.
    pub fn add_host(&mut self) -> io::Result<Host> {
        let index = self.hosts.len();
        if index >= 250 {
            return Err(io::Error::other("at most 250 hosts on one bridge"));
        }
        let netns = format!("{NS_PREFIX}{}-h{index}", self.tag);
        let veth = format!("sv{}h{index}", self.tag);
        let peer = format!("sp{}h{index}", self.tag);
        let [a, b, c] = self.subnet;
        let addr = Ipv4Addr::new(a, b, c, index as u8 + 1);
        ip(&["netns", "add", &netns])?;
        // Pushed before the rest so that Drop deletes the namespace if a later step fails.
        self.hosts.push(Host {
            index,
            netns: netns.clone(),
            addr,
            veth: veth.clone(),
        });
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &netns])?;
        ip(&["link", "set", &veth, "master", &self.bridge])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &netns, "link", "set", &peer, "up"])?;
        Ok(self.hosts[index].clone())
    }

    /// The hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    ///
    /// # Panics
    /// When there is no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The root namespace's address on the bridge (where the test process is seen from).
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// A command that runs `program` inside host `i` (`ip netns exec`, which execs the program:
    /// the spawned pid is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns")
            .arg("exec")
            .arg(&self.hosts[i].netns)
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Spawns a command made by [`Hosts::command`] for host `i` and keeps it, to kill and reap
    /// it when the hosts are dropped. Returns its pid.
    ///
    /// # Errors
    /// When the spawn fails.
    pub fn spawn(&self, i: usize, mut cmd: Command) -> io::Result<u32> {
        let child = cmd.spawn()?;
        let pid = child.id();
        lock(&self.children).push((i, child));
        Ok(pid)
    }

    /// Takes back a child spawned with [`Hosts::spawn`] (to read its stdout, wait for it, ...);
    /// the namespace teardown still kills it if it runs then.
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        let mut children = lock(&self.children);
        let at = children.iter().position(|(_, c)| c.id() == pid)?;
        Some(children.swap_remove(at).1)
    }

    /// SIGKILLs every process inside host `i` (its whole namespace), as a host that loses
    /// power; the host's network stays. Returns how many processes were killed.
    pub fn kill_host(&self, i: usize) -> usize {
        let killed = kill_netns(&self.hosts[i].netns);
        reap(&mut lock(&self.children), Some(i));
        killed
    }

    /// Sends `signal` (e.g. `"KILL"`, `"STOP"`, `"CONT"`) to one pid started on these hosts.
    ///
    /// # Errors
    /// When `kill` fails (e.g. the process is gone).
    pub fn signal(&self, pid: u32, signal: &str) -> io::Result<()> {
        run("kill", &[&format!("-{signal}"), &pid.to_string()]).map(|_| ())
    }

    /// Cuts host `i` off the bridge (its veth end set down): packets to and from it are lost,
    /// its processes keep running.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn cut_link(&self, i: usize) -> io::Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "down"])
    }

    /// Sets the MTU of every link of these hosts (the bridge, both ends of every veth pair);
    /// 1500 when they are made. The load runner uses it to compare with loopback's 65536.
    ///
    /// # Errors
    /// When `ip` fails (veth takes at most 65535).
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mtu = mtu.to_string();
        for h in &self.hosts {
            let peer = format!("sp{}h{}", self.tag, h.index);
            ip(&["link", "set", &h.veth, "mtu", &mtu])?;
            ip(&["-n", &h.netns, "link", "set", &peer, "mtu", &mtu])?;
        }
        ip(&["link", "set", &self.bridge, "mtu", &mtu])
    }

    /// A tokio runtime whose threads run inside host `i`'s network namespace: the sockets its
    /// tasks open are that host's (e.g. clients that still reach the host's servers while its
    /// link is cut, when the test process in the root namespace cannot). Spawn the work on it
    /// ([`HostRuntime::spawn`]) and await the handle from the test's own runtime; a
    /// `block_on` would run on the calling thread, in the root namespace.
    ///
    /// # Errors
    /// When the namespace cannot be opened or entered, or the runtime cannot be built.
    pub fn runtime(&self, i: usize) -> io::Result<HostRuntime> {
        let path = format!("/run/netns/{}", self.hosts[i].netns);
        let ns = std::sync::Arc::new(std::fs::File::open(&path)?);
        let failed: std::sync::Arc<Mutex<Option<String>>> = std::sync::Arc::default();
        let (f_ns, f_failed) = (ns.clone(), failed.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("netns-h{i}"))
            .enable_all()
            .on_thread_start(move || {
                use std::os::fd::AsFd;
                if let Err(e) = rustix::thread::move_into_link_name_space(
                    f_ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                ) {
                    *lock(&f_failed) = Some(e.to_string());
                }
            })
            .build()?;
        let rt = HostRuntime { rt: Some(rt) };
        // Every worker has started (and entered the namespace, or failed to) once a task ran.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| io::Error::other("the host's runtime ran no task within 10 s"))?;
        if let Some(e) = lock(&failed).take() {
            return Err(io::Error::other(format!("entering netns {path}: {e}")));
        }
        Ok(rt)
    }

    /// Puts host `i` back on the bridge after [`Hosts::cut_link`].
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn restore_link(&self, i: usize) -> io::Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "up"])
    }
}

/// A tokio runtime inside one host's network namespace ([`Hosts::runtime`]); dropping it ends
/// its tasks (without waiting, so it may be dropped inside another runtime).
#[derive(Debug)]
pub struct HostRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl HostRuntime {
    /// Runs `fut` on the host's runtime (its sockets are the host's).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("runtime until dropped").spawn(fut)
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_netns(&host.netns);
        }
        let mut children = lock(&self.children);
        for (_, child) in children.iter_mut() {
            let _ = child.kill();
        }
        reap(&mut children, None);
        drop(children);
        for host in &self.hosts {
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                eprintln!("netns teardown: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("netns teardown: {e}");
        }
    }
}

/// Waits for the kept children that have exited (all of them when `host` is `None`, else those
/// of that host, which were just killed) and forgets them.
fn reap(children: &mut Vec<(usize, Child)>, host: Option<usize>) {
    children.retain_mut(|(h, child)| {
        if host.is_none() || host == Some(*h) {
            let _ = child.wait();
            false
        } else {
            true
        }
    });
}

/// SIGKILLs every process in a namespace; returns how many. Repeats until none is left (a
/// process may fork while the first ones die), at most a few rounds.
fn kill_netns(netns: &str) -> usize {
    let mut killed = 0;
    for _ in 0..20 {
        let Ok(pids) = run("ip", &["netns", "pids", netns]) else {
            return killed;
        };
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return killed;
        }
        for pid in &pids {
            if run("kill", &["-KILL", pid]).is_ok() {
                killed += 1;
            }
        }
        // A killed process leaves the namespace's pid list once it is reaped; its parent may be
        // another killed process, so give the kernel a moment before looking again.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

/// Deletes namespaces and bridges made by test processes that no longer exist.
fn remove_stale() {
    let alive = |tag: &str| {
        let Some((pid, _)) = tag.split_once('g') else {
            return true; // not ours
        };
        match u32::from_str_radix(pid, 16) {
            Ok(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => true, // not ours
        }
    };
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let tag = rest.split("-h").next().unwrap_or("");
            if !alive(tag) {
                kill_netns(name);
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = run("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in list.lines() {
            // "7: shb1a2bg0: <BROADCAST,...> ..."
            let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
            if let Some(tag) = name.strip_prefix(BRIDGE_PREFIX)
                && !alive(tag)
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A `10.A.B` subnet that no interface of the root namespace uses, chosen from the pid and the
/// set number so that concurrent test processes usually pick different ones.
fn free_subnet(set: u32) -> io::Result<[u8; 3]> {
    let used = run("ip", &["-4", "-o", "addr", "show"])?;
    let pid = std::process::id();
    for k in 0..200u32 {
        let a = 10u8;
        let b = 100 + ((pid + k) % 100) as u8;
        let c = (set % 250) as u8 + 1;
        let prefix = format!(" {a}.{b}.{c}.");
        if !used.contains(&prefix) {
            return Ok([a, b, c]);
        }
    }
    Err(io::Error::other(
        "no free 10.x.y.0/24 subnet for the test hosts",
    ))
}

fn ip(args: &[&str]) -> io::Result<()> {
    run("ip", args).map(|_| ())
}

/// Runs a command to completion; its stdout, or an error naming the command with its stderr.
fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run `{program}` (the multi-host tests need root and iproute2; scripts/install-nats installs it): {e}"),
            )
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
