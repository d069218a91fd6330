//! Entering a mounted rootfs for `strata run`: new mount and UTS namespaces
//! (the PID namespace is made by the caller before it forks), a minimal
//! /dev, /proc, read-only /sys, pivot_root, then the image's user and
//! working directory.
//!
//! [`Entry::enter`] runs in the forked child before exec, where only
//! async-signal-safe calls are allowed: every path is made into a C string
//! beforehand and nothing allocates.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Host device nodes bound into the container's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Links every /dev has.
const DEV_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Everything the child needs, prepared before the fork.
pub struct Entry {
    rootfs: CString,
    dev: CString,
    proc_dir: CString,
    sys: CString,
    devices: Vec<(CString, CString)>,
    links: Vec<(CString, CString)>,
    cwd: CString,
    hostname: Vec<u8>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    c: Literals,
}

/// Constant C strings, made once.
struct Literals {
    root: CString,
    dot: CString,
    tmpfs: CString,
    proc_fs: CString,
    sys_host: CString,
    dev_options: CString,
}

fn c(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref()).map_err(|_| io::Error::other("a path holds a NUL byte"))
}

fn check(ret: libc::c_int, what: &'static str) -> io::Result<()> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
    } else {
        Ok(())
    }
}

impl Entry {
    pub fn new(rootfs: &Path, cwd: &str, hostname: &str, uid: u32, gid: u32) -> io::Result<Self> {
        let at = |rel: &str| c([rootfs.as_os_str().as_bytes(), b"/", rel.as_bytes()].concat());
        let mut devices = Vec::new();
        for name in DEVICES {
            devices.push((c(format!("/dev/{name}"))?, at(&format!("dev/{name}"))?));
        }
        let mut links = Vec::new();
        for (target, link) in DEV_LINKS {
            links.push((c(target)?, c(link)?));
        }
        Ok(Self {
            rootfs: c(rootfs.as_os_str().as_bytes())?,
            dev: at("dev")?,
            proc_dir: at("proc")?,
            sys: at("sys")?,
            devices,
            links,
            cwd: c(if cwd.is_empty() { "/" } else { cwd })?,
            hostname: hostname.as_bytes().to_vec(),
            uid,
            gid,
            c: Literals {
                root: c("/")?,
                dot: c(".")?,
                tmpfs: c("tmpfs")?,
                proc_fs: c("proc")?,
                sys_host: c("/sys")?,
                dev_options: c("mode=755,size=65536k")?,
            },
        })
    }

    /// Runs in the child between fork and exec.
    pub fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        let l = &self.c;
        // SAFETY: raw system calls on C strings prepared in `new`; no allocation.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS), "unshare")?;
            // Nothing mounted from here on reaches the host.
            check(
                libc::mount(null, l.root.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()),
                "making mounts private",
            )?;
            check(libc::sethostname(self.hostname.as_ptr().cast(), self.hostname.len()), "sethostname")?;

            check(
                libc::mount(
                    l.tmpfs.as_ptr(),
                    self.dev.as_ptr(),
                    l.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NOEXEC,
                    l.dev_options.as_ptr().cast(),
                ),
                "mounting /dev",
            )?;
            for (host, target) in &self.devices {
                let fd = libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o666);
                check(fd, "creating a /dev node")?;
                libc::close(fd);
                check(
                    libc::mount(host.as_ptr(), target.as_ptr(), null, libc::MS_BIND, std::ptr::null()),
                    "binding a device",
                )?;
            }
            check(
                libc::mount(
                    l.proc_fs.as_ptr(),
                    self.proc_dir.as_ptr(),
                    l.proc_fs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ),
                "mounting /proc",
            )?;
            check(
                libc::mount(
                    l.sys_host.as_ptr(),
                    self.sys.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                "binding /sys",
            )?;
            check(
                libc::mount(
                    null,
                    self.sys.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ),
                "making /sys read-only",
            )?;

            // pivot_root(".", ".") stacks the old root under the new one;
            // detaching it leaves only the image's tree.
            check(libc::chdir(self.rootfs.as_ptr()), "entering the rootfs")?;
            check(
                libc::syscall(libc::SYS_pivot_root, l.dot.as_ptr(), l.dot.as_ptr()) as libc::c_int,
                "pivot_root",
            )?;
            check(libc::umount2(l.dot.as_ptr(), libc::MNT_DETACH), "detaching the old root")?;
            check(libc::chdir(l.root.as_ptr()), "chdir /")?;
            for (target, link) in &self.links {
                libc::symlink(target.as_ptr(), link.as_ptr());
            }

            check(libc::setgroups(1, &self.gid), "setgroups")?;
            check(libc::setgid(self.gid), "setgid")?;
            check(libc::setuid(self.uid), "setuid")?;
            check(libc::chdir(self.cwd.as_ptr()), "entering the working directory")?;
        }
        Ok(())
    }
}

/// The uid and gid of an image's `User` ("", "uid", "uid:gid", "name",
/// "name:group"), names looked up in the rootfs's /etc/passwd and /etc/group.
pub fn resolve_user(user: &str, rootfs: &Path) -> anyhow::Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entry =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && f[0] == name);
    let (uid, primary) = match name.parse::<u32>() {
        Ok(uid) => (uid, entry.and_then(|f| f[3].parse().ok()).unwrap_or(0)),
        Err(_) => {
            let f =
                entry.ok_or_else(|| anyhow::anyhow!("user {name:?} is not in the image's /etc/passwd"))?;
            (f[2].parse()?, f[3].parse()?)
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                let f = groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 2 && f[0] == g)
                    .ok_or_else(|| anyhow::anyhow!("group {g:?} is not in the image's /etc/group"))?;
                f[2].parse()?
            }
        },
    };
    Ok((uid, gid))
}
