//! Entering a mounted rootfs for `strata run`: new mount, UTS and IPC
//! namespaces (the PID namespace is made by the caller before it forks), the
//! mounts and files docker gives a container (/proc; a tmpfs /dev with the
//! standard nodes, /dev/pts, /dev/shm, /dev/mqueue; read-only /sys;
//! /etc/hostname, /etc/hosts, /etc/resolv.conf), pivot_root, then the
//! image's user (with its groups) and working directory, created when no
//! layer holds it.
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
const DEV_LINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];
/// Files of /etc that a container gets from its runtime, bound over the
/// image's (created empty in the writable layer where missing), as docker does.
pub const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Everything the child needs, prepared before the fork.
pub struct Entry {
    rootfs: CString,
    dev: CString,
    proc_dir: CString,
    sys: CString,
    devices: Vec<(CString, CString)>,
    links: Vec<(CString, CString)>,
    /// /dev/pts, /dev/shm, /dev/mqueue, each mounted after /dev.
    dev_mounts: Vec<DevMount>,
    /// Host file → the image's /etc file it is bound over (resolved within the rootfs).
    etc_binds: Vec<(CString, CString)>,
    /// The working directory and each of its ancestors, shortest first:
    /// made (root-owned, 0755, as docker does) where missing.
    cwd_prefixes: Vec<CString>,
    cwd: CString,
    hostname: Vec<u8>,
    user: ExecUser,
    c: Literals,
}

struct DevMount {
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: CString,
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
    /// Prepares entering `rootfs`. `etc_files` are the host files bound over
    /// the image's /etc files (see [`ETC_FILES`]), each with its target:
    /// the host path the image's file resolves to within the rootfs.
    pub fn new(
        rootfs: &Path,
        cwd: &str,
        hostname: &str,
        user: ExecUser,
        etc_files: &[(std::path::PathBuf, std::path::PathBuf)],
    ) -> io::Result<Self> {
        let at = |rel: &str| c([rootfs.as_os_str().as_bytes(), b"/", rel.as_bytes()].concat());
        let mut devices = Vec::new();
        for name in DEVICES {
            devices.push((c(format!("/dev/{name}"))?, at(&format!("dev/{name}"))?));
        }
        let mut links = Vec::new();
        for (target, link) in DEV_LINKS {
            links.push((c(target)?, c(link)?));
        }
        let nosuid_noexec_nodev = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
        let dev_mounts = vec![
            DevMount {
                target: at("dev/pts")?,
                fstype: c("devpts")?,
                flags: libc::MS_NOSUID | libc::MS_NOEXEC,
                data: c("newinstance,ptmxmode=0666,mode=0620,gid=5")?,
            },
            DevMount {
                target: at("dev/shm")?,
                fstype: c("tmpfs")?,
                flags: nosuid_noexec_nodev,
                data: c("mode=1777,size=65536k")?,
            },
            DevMount {
                target: at("dev/mqueue")?,
                fstype: c("mqueue")?,
                flags: nosuid_noexec_nodev,
                data: c("")?,
            },
        ];
        let mut etc_binds = Vec::new();
        for (host, target) in etc_files {
            etc_binds.push((c(host.as_os_str().as_bytes())?, c(target.as_os_str().as_bytes())?));
        }
        let cwd = if cwd.is_empty() { "/" } else { cwd };
        let mut cwd_prefixes = Vec::new();
        let mut prefix = String::new();
        for part in cwd.split('/').filter(|p| !p.is_empty() && *p != ".") {
            prefix.push('/');
            prefix.push_str(part);
            cwd_prefixes.push(c(&prefix)?);
        }
        Ok(Self {
            rootfs: c(rootfs.as_os_str().as_bytes())?,
            dev: at("dev")?,
            proc_dir: at("proc")?,
            sys: at("sys")?,
            devices,
            links,
            dev_mounts,
            etc_binds,
            cwd_prefixes,
            cwd: c(cwd)?,
            hostname: hostname.as_bytes().to_vec(),
            user,
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
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC), "unshare")?;
            // Nothing mounted from here on reaches the host.
            check(
                libc::mount(null, l.root.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()),
                "making mounts private",
            )?;
            check(libc::sethostname(self.hostname.as_ptr().cast(), self.hostname.len()), "sethostname")?;

            // Before /dev is mounted: a target the image's symlinks put
            // under /dev is still the image's file.
            for (host, target) in &self.etc_binds {
                check(
                    libc::mount(host.as_ptr(), target.as_ptr(), null, libc::MS_BIND, std::ptr::null()),
                    "binding /etc/hostname, /etc/hosts or /etc/resolv.conf",
                )?;
            }
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
            for m in &self.dev_mounts {
                check(libc::mkdir(m.target.as_ptr(), 0o755), "creating a /dev mount point")?;
                check(
                    libc::mount(
                        m.fstype.as_ptr(),
                        m.target.as_ptr(),
                        m.fstype.as_ptr(),
                        m.flags,
                        m.data.as_ptr().cast(),
                    ),
                    "mounting /dev/pts, /dev/shm or /dev/mqueue",
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

            for dir in &self.cwd_prefixes {
                // Inside the new root: symlinks resolve within the image.
                if libc::mkdir(dir.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST {
                    check(-1, "creating the working directory")?;
                }
            }
            let u = &self.user;
            check(libc::setgroups(u.groups.len(), u.groups.as_ptr()), "setgroups")?;
            check(libc::setgid(u.gid), "setgid")?;
            check(libc::setuid(u.uid), "setuid")?;
            check(libc::chdir(self.cwd.as_ptr()), "entering the working directory")?;
        }
        Ok(())
    }
}

/// Who the image's process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Every group of the process, the primary one first (setgroups(2)).
    pub groups: Vec<u32>,
    /// HOME, unless the image's Env sets it.
    pub home: String,
}

fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').map(str::to_owned).collect())
        .collect()
}

/// Resolves an image's `User` ("", "uid", "name", "uid:gid", "name:group")
/// against the image's own /etc/passwd and /etc/group (their text), as docker does
/// (runc's `GetExecUser`): a name must be in passwd; a numeric uid may be
/// missing there (then gid 0 and HOME "/"); the primary group and HOME come
/// from passwd; without an explicit group the user also gets every group
/// /etc/group lists it in; an explicit group (name looked up in
/// /etc/group, or a number) replaces the primary group and adds none.
/// An empty `User` is uid 0, resolved the same way.
pub fn resolve_user(user: &str, passwd: &str, group_file: &str) -> crate::error::Result<ExecUser> {
    let (name, group) = match user.split_once(':') {
        Some((n, g)) => (if n.is_empty() { "0" } else { n }, Some(g).filter(|g| !g.is_empty())),
        None => (if user.is_empty() { "0" } else { user }, None),
    };
    let passwd = table(passwd);
    let entry = match name.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|f| f.len() > 5 && f[2].parse::<u32>().ok() == Some(uid)),
        Err(_) => Some(passwd.iter().find(|f| f.len() > 5 && f[0] == name).ok_or_else(|| {
            crate::error::Error::Refused(format!(
                "unable to find user {name}: no matching entries in the image's /etc/passwd"
            ))
        })?),
    };
    let uid = match entry {
        Some(f) => f[2].parse().map_err(|_| {
            crate::error::Error::Refused(format!("the image's /etc/passwd has a bad uid for {name}"))
        })?,
        None => name.parse().map_err(|_| crate::error::Error::Refused(format!("bad user {name}")))?,
    };
    let mut gid: u32 = match entry {
        Some(f) => f[3].parse().map_err(|_| {
            crate::error::Error::Refused(format!("the image's /etc/passwd has a bad gid for {name}"))
        })?,
        None => 0,
    };
    let home = entry.map(|f| f[5].clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| "/".to_owned());
    let groups_table = table(group_file);
    let mut groups = Vec::new();
    match group {
        Some(g) => {
            gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups_table.iter().find(|f| f.len() > 2 && f[0] == g).ok_or_else(|| {
                    crate::error::Error::Refused(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    ))
                })?[2]
                    .parse()
                    .map_err(|_| {
                        crate::error::Error::Refused(format!("the image's /etc/group has a bad gid for {g}"))
                    })?,
            };
        }
        None => {
            if let Some(user_name) = entry.map(|f| f[0].as_str()) {
                for f in groups_table.iter().filter(|f| f.len() > 3) {
                    if f[3].split(',').any(|member| member.trim() == user_name) {
                        if let Ok(g) = f[2].parse::<u32>() {
                            groups.push(g);
                        }
                    }
                }
            }
        }
    }
    groups.retain(|g| *g != gid);
    groups.insert(0, gid);
    groups.dedup();
    Ok(ExecUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
        let group = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nmore:x:3000:other,app\n";
        let u = |spec: &str| resolve_user(spec, passwd, group).unwrap();
        let app = ExecUser { uid: 1000, gid: 1000, groups: vec![1000, 2000, 3000], home: "/home/app".into() };
        assert_eq!(u("app"), app);
        assert_eq!(u("1000"), app, "a numeric uid found in passwd is that user");
        assert_eq!(u(""), ExecUser { uid: 0, gid: 0, groups: vec![0], home: "/root".into() });
        assert_eq!(u("4242"), ExecUser { uid: 4242, gid: 0, groups: vec![0], home: "/".into() });
        assert_eq!(
            u("app:extra"),
            ExecUser { uid: 1000, gid: 2000, groups: vec![2000], home: "/home/app".into() }
        );
        assert_eq!(u("1000:77"), ExecUser { uid: 1000, gid: 77, groups: vec![77], home: "/home/app".into() });
        let err = resolve_user("nobody-here", passwd, group).unwrap_err().to_string();
        assert!(err.contains("unable to find user nobody-here"), "{err}");
        let err = resolve_user("app:nogroup", passwd, group).unwrap_err().to_string();
        assert!(err.contains("unable to find group nogroup"), "{err}");
    }
}
