//! Hosts on one machine for the end-to-end benches: network namespaces made
//! by the bench itself, joined by links it shapes.
//!
//! - [`DelayLink`]: two namespaces joined point to point through a pair of
//!   TUN devices and a relay in this process that holds every packet for
//!   half the round-trip time; each end's rate is capped by `tc tbf`. This
//!   kernel has no `netem`, so the delay is added in user space, per packet,
//!   below TCP and QUIC alike.
//! - [`Switch`]: namespaces on one bridge, each host's veth capped by
//!   `tbf` both ways (upload at the host, download at the bridge).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "{cmd}");
}

/// Runs `f` on a thread inside network namespace `name`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns")
    })
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(std::process::Stdio::null()).status();
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Netns { name: name.to_owned() }
    }

    /// Runs `f` on a thread inside this namespace: sockets it makes stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// `program` started inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Caps what leaves `dev` here at `mbit` Mbit/s, queueing at most 50 ms.
    pub fn shape(&self, dev: &str, mbit: u64) {
        // Ten milliseconds at the rate, and at least a GSO packet.
        let burst = (mbit * 1_000_000 / 8 / 100).max(64 << 10);
        sh(&format!(
            "tc -n {} qdisc replace dev {dev} root tbf rate {mbit}mbit burst {burst} latency 50ms",
            self.name
        ));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a TUN device named `name` in `ns` (layer 3, no packet header).
fn open_tun(ns: &Netns, name: &str) -> OwnedFd {
    ns.run(|| {
        // SAFETY: plain open(2) and ioctl(2) on a buffer laid out as struct ifreq.
        unsafe {
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            assert!(fd >= 0, "open /dev/net/tun: {}", std::io::Error::last_os_error());
            let mut ifreq = [0u8; 40];
            ifreq[..name.len()].copy_from_slice(name.as_bytes());
            let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
            ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
            let r = libc::ioctl(fd, TUNSETIFF as _, ifreq.as_mut_ptr());
            assert!(r >= 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        }
    })
}

/// Two namespaces joined point to point, shaped to a rate and delayed.
pub struct DelayLink {
    pub a: Netns,
    pub b: Netns,
    pub a_ip: String,
    pub b_ip: String,
    one_way_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLink {
    /// Namespaces `{prefix}-a` (at 10.77.0.1) and `{prefix}-b` (10.77.0.2),
    /// each sending at most `mbit` Mbit/s, no delay yet.
    pub fn new(prefix: &str, mbit: u64) -> DelayLink {
        let (a, b) = (Netns::new(&format!("{prefix}-a")), Netns::new(&format!("{prefix}-b")));
        let (a_ip, b_ip) = ("10.77.0.1".to_owned(), "10.77.0.2".to_owned());
        let a_tun = open_tun(&a, "tun-a");
        let b_tun = open_tun(&b, "tun-b");
        for (ns, dev, me, peer) in [(&a, "tun-a", &a_ip, &b_ip), (&b, "tun-b", &b_ip, &a_ip)] {
            sh(&format!(
                "ip -n {n} addr add {me} peer {peer} dev {dev} && ip -n {n} link set {dev} up",
                n = ns.name
            ));
            ns.shape(dev, mbit);
        }
        let one_way_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let a_tun = Arc::new(a_tun);
        let b_tun = Arc::new(b_tun);
        let mut threads = Vec::new();
        for (from, to) in [(a_tun.clone(), b_tun.clone()), (b_tun, a_tun)] {
            threads.extend(relay(from, to, one_way_us.clone(), stop.clone()));
        }
        DelayLink { a, b, a_ip, b_ip, one_way_us, stop, threads }
    }

    /// From now on every packet takes `rtt / 2` each way (plus its time on
    /// the wire at the capped rate).
    pub fn set_rtt(&self, rtt: Duration) {
        self.one_way_us.store(rtt.as_micros() as u64 / 2, Ordering::SeqCst);
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One direction of the relay: a reader stamping each packet with the time
/// it may leave, a writer sending them in order at that time.
fn relay(
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    one_way_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !reader_stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd { fd: from.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd, then read(2) into our buffer.
            let n = unsafe {
                if libc::poll(&mut poll, 1, 100) <= 0 {
                    continue;
                }
                libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n <= 0 {
                continue;
            }
            let due = Instant::now() + Duration::from_micros(one_way_us.load(Ordering::Relaxed));
            if tx.send((due, buf[..n as usize].to_vec())).is_err() {
                return;
            }
        }
    });
    let writer = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(100)) else { continue };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // SAFETY: write(2) of a whole packet from our buffer.
            unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        }
    });
    [reader, writer]
}

/// Hosts on one bridge, each capped both ways.
pub struct Switch {
    bridge: Netns,
    pub hosts: Vec<Netns>,
    prefix: String,
}

impl Switch {
    /// A bridge in its own namespace `{prefix}-sw`.
    pub fn new(prefix: &str) -> Switch {
        let bridge = Netns::new(&format!("{prefix}-sw"));
        sh(&format!("ip -n {n} link add br0 type bridge && ip -n {n} link set br0 up", n = bridge.name));
        Switch { bridge, hosts: Vec::new(), prefix: prefix.to_owned() }
    }

    /// A new host at 10.78.0.{10 + index}, capped at `mbit` up and down;
    /// returns its namespace's index in `hosts` and its address.
    pub fn add_host(&mut self, mbit: u64) -> (usize, String) {
        let i = self.hosts.len();
        let ns = Netns::new(&format!("{}-h{i}", self.prefix));
        let ip = format!("10.78.0.{}", 10 + i);
        let (dev, port) = (format!("h{i}"), format!("h{i}-br"));
        sh(&format!(
            "ip link add {dev} netns {host} type veth peer name {port} netns {sw} && \
             ip -n {sw} link set {port} master br0 up && \
             ip -n {host} addr add {ip}/24 dev {dev} && ip -n {host} link set {dev} up",
            host = ns.name,
            sw = self.bridge.name,
        ));
        ns.shape(&dev, mbit);
        self.bridge.shape(&port, mbit);
        self.hosts.push(ns);
        (i, ip)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.hosts.clear();
    }
}
