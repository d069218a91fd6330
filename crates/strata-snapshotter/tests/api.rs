//! containerd's snapshots API over a real Unix socket, call by call, with
//! the rules of containerd's snapshotter test suite (`snapshots/testsuite`,
//! containerd 1.6) and its metastore: a tonic client speaks to
//! [`strata_snapshotter::serve`] on a real store, and (as root) the mounts
//! it answers are mounted with mount(2) as containerd's `mount.All` does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_snapshotter::api::snapshots::snapshots_client::SnapshotsClient;
use strata_snapshotter::api::snapshots::{self as pb, Kind};
use strata_snapshotter::api::types::Mount;
use strata_snapshotter::Snapshots;
use strata_store::{OpenMode, Store};
use tonic::transport::Channel;
use tonic::Code;

struct Server {
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("run/snapshotter.sock")
}

impl Server {
    async fn start() -> (Server, SnapshotsClient<Channel>) {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server { dir, stop: None, task: None };
        let client = server.restart().await;
        (server, client)
    }

    /// (Re)opens the store and serves it; returns a fresh client.
    async fn restart(&mut self) -> SnapshotsClient<Channel> {
        self.shutdown().await;
        let root = self.dir.path().to_owned();
        let snapshots = tokio::task::spawn_blocking(move || {
            let store = Arc::new(Store::open(&root.join("store"), OpenMode::ReadWrite).unwrap());
            Arc::new(Snapshots::open(store, &root.join("snapshotter")).unwrap())
        })
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let listener = strata_snapshotter::bind(&socket(self.dir.path())).unwrap();
        let task = tokio::spawn(async move {
            strata_snapshotter::serve(snapshots, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        self.stop = Some(stop);
        self.task = Some(task);
        connect(&socket(self.dir.path())).await
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("snapshotter")
    }
}

async fn connect(path: &Path) -> SnapshotsClient<Channel> {
    strata_snapshotter::client::connect(path).await.unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn prepare(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
    let req = pb::PrepareSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
    c.prepare(req).await.map(|r| r.into_inner().mounts).map_err(|s| s.code())
}

async fn view(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
    let req = pb::ViewSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
    c.view(req).await.map(|r| r.into_inner().mounts).map_err(|s| s.code())
}

async fn commit(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    key: &str,
    l: &[(&str, &str)],
) -> Result<(), Code> {
    let req = pb::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        labels: labels(l),
        ..Default::default()
    };
    c.commit(req).await.map(|_| ()).map_err(|s| s.code())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::Info, Code> {
    let req = pb::StatSnapshotRequest { key: key.into(), ..Default::default() };
    c.stat(req).await.map(|r| r.into_inner().info.unwrap()).map_err(|s| s.code())
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), Code> {
    let req = pb::RemoveSnapshotRequest { key: key.into(), ..Default::default() };
    c.remove(req).await.map(|_| ()).map_err(|s| s.code())
}

async fn mounts(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<Vec<Mount>, Code> {
    let req = pb::MountsRequest { key: key.into(), ..Default::default() };
    c.mounts(req).await.map(|r| r.into_inner().mounts).map_err(|s| s.code())
}

/// Every listed name for `filters`, and how many responses carried them.
async fn list(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Result<(Vec<String>, usize), Code> {
    let req = pb::ListSnapshotsRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    let mut stream = c.list(req).await.map_err(|s| s.code())?.into_inner();
    let mut names = Vec::new();
    let mut responses = 0;
    while let Some(batch) = stream.message().await.map_err(|s| s.code())? {
        responses += 1;
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    names.sort();
    Ok((names, responses))
}

async fn update(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    l: &[(&str, &str)],
    paths: &[&str],
) -> Result<pb::Info, Code> {
    let req = pb::UpdateSnapshotRequest {
        info: Some(pb::Info { name: name.into(), labels: labels(l), ..Default::default() }),
        update_mask: (!paths.is_empty())
            .then(|| prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        ..Default::default()
    };
    c.update(req).await.map(|r| r.into_inner().info.unwrap()).map_err(|s| s.code())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts `mounts` on `target` as containerd's `mount.All` (Linux): bind
/// with MS_BIND (MS_REC for rbind), then a read-only remount for `ro`;
/// overlay with its options as data.
fn mount_all(mounts: &[Mount], target: &Path) {
    use std::ffi::CString;
    assert_eq!(mounts.len(), 1, "one mount per snapshot: {mounts:?}");
    let m = &mounts[0];
    let c = |s: &str| CString::new(s).unwrap();
    let target_c = c(target.to_str().unwrap());
    let rc = match m.r#type.as_str() {
        "bind" => {
            let mut flags = libc::MS_BIND;
            if m.options.iter().any(|o| o == "rbind") {
                flags |= libc::MS_REC;
            }
            // SAFETY: valid NUL-terminated strings; null fstype and data.
            let mut rc = unsafe {
                libc::mount(
                    c(&m.source).as_ptr(),
                    target_c.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            };
            if rc == 0 && m.options.iter().any(|o| o == "ro") {
                // SAFETY: as above.
                rc = unsafe {
                    libc::mount(
                        std::ptr::null(),
                        target_c.as_ptr(),
                        std::ptr::null(),
                        flags | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    )
                };
            }
            rc
        }
        "overlay" => {
            let data = c(&m.options.join(","));
            // SAFETY: valid NUL-terminated strings.
            unsafe {
                libc::mount(
                    c("overlay").as_ptr(),
                    target_c.as_ptr(),
                    c("overlay").as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            }
        }
        other => panic!("unexpected mount type {other}"),
    };
    assert_eq!(rc, 0, "mounting {m:?}: {}", std::io::Error::last_os_error());
}

fn unmount(target: &Path) {
    let c = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(rc, 0, "unmounting {}: {}", target.display(), std::io::Error::last_os_error());
}

/// containerd's testsuite `checkSnapshotterBasic`, with real mounts: a
/// base layer written through its bind, a second through overlay (a file
/// deleted, one added), a view of the result; what each sees, and the
/// metadata of each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_write_commit_and_view_through_real_mounts() {
    if !is_root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let (server, mut c) = Server::start().await;
    let target = server.dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();

    let m = prepare(&mut c, "preparing", "").await.unwrap();
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    mount_all(&m, &target);
    std::fs::create_dir(target.join("foo")).unwrap();
    std::fs::write(target.join("foo/a"), b"a from the base").unwrap();
    std::fs::write(target.join("kept"), b"kept").unwrap();
    unmount(&target);
    assert_eq!(mounts(&mut c, "preparing").await.unwrap(), m, "Mounts gives what Prepare gave");
    commit(&mut c, "committed", "preparing", &[("containerd.io/gc.root", "x")]).await.unwrap();
    assert_eq!(stat(&mut c, "preparing").await, Err(Code::NotFound), "commit removes the key");
    let info = stat(&mut c, "committed").await.unwrap();
    assert_eq!((info.kind, info.parent.as_str()), (Kind::Committed as i32, ""));
    assert_eq!(info.labels, labels(&[("containerd.io/gc.root", "x")]));

    let m = prepare(&mut c, "nextlayer", "committed").await.unwrap();
    assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("overlay", "overlay"));
    let opt = |m: &[Mount], name: &str| {
        m[0].options.iter().find_map(|o| o.strip_prefix(&format!("{name}="))).map(str::to_owned)
    };
    assert!(opt(&m, "upperdir").is_some() && opt(&m, "workdir").is_some(), "{m:?}");
    mount_all(&m, &target);
    assert_eq!(std::fs::read(target.join("foo/a")).unwrap(), b"a from the base");
    std::fs::remove_file(target.join("foo/a")).unwrap();
    std::fs::write(target.join("bar"), b"bar from the second").unwrap();
    unmount(&target);
    commit(&mut c, "nextCommitted", "nextlayer", &[]).await.unwrap();
    assert_eq!(stat(&mut c, "nextCommitted").await.unwrap().parent, "committed", "commit keeps the parent");

    let m = view(&mut c, "view", "nextCommitted").await.unwrap();
    let lower = opt(&m, "lowerdir").unwrap();
    assert_eq!(lower.split(':').count(), 2, "nearest layer first: {lower}");
    assert!(opt(&m, "upperdir").is_none(), "a view has no upper: {m:?}");
    mount_all(&m, &target);
    assert!(!target.join("foo/a").exists(), "the whiteout of the second layer hides the base's file");
    assert!(target.join("foo").is_dir());
    assert_eq!(std::fs::read(target.join("bar")).unwrap(), b"bar from the second");
    assert_eq!(std::fs::read(target.join("kept")).unwrap(), b"kept");
    let err = std::fs::write(target.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "a view is read-only");
    unmount(&target);

    // A view of a single layer is a read-only bind of it.
    let m = view(&mut c, "view1", "committed").await.unwrap();
    assert_eq!(
        (m[0].r#type.as_str(), m[0].options.as_slice()),
        ("bind", &["ro".to_owned(), "rbind".to_owned()][..])
    );
    mount_all(&m, &target);
    assert_eq!(std::fs::read(target.join("foo/a")).unwrap(), b"a from the base");
    assert_eq!(std::fs::write(target.join("new"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    unmount(&target);

    assert_eq!(list(&mut c, &[]).await.unwrap().0, ["committed", "nextCommitted", "view", "view1"]);
}

/// The refusals of containerd's metastore, each with the code containerd's
/// `errdefs` maps back (testsuite: PrepareViewFailingtest, RemoveIntermediate,
/// checkSnapshotterViewReadonly, checkCommitErrors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_containerds_code() {
    let (_server, mut c) = Server::start().await;
    prepare(&mut c, "a", "").await.unwrap();
    assert_eq!(prepare(&mut c, "a", "").await, Err(Code::AlreadyExists), "Prepare twice with one key");
    assert_eq!(view(&mut c, "a", "").await, Err(Code::AlreadyExists), "View with an active key");
    assert_eq!(prepare(&mut c, "", "").await, Err(Code::InvalidArgument), "an empty key");
    assert_eq!(prepare(&mut c, "b", "missing").await, Err(Code::NotFound), "a missing parent");
    assert_eq!(prepare(&mut c, "b", "a").await, Err(Code::InvalidArgument), "an active parent");
    assert_eq!(mounts(&mut c, "missing").await, Err(Code::NotFound));
    assert_eq!(commit(&mut c, "x", "missing", &[]).await, Err(Code::NotFound));
    commit(&mut c, "base", "a", &[]).await.unwrap();
    assert_eq!(mounts(&mut c, "base").await, Err(Code::FailedPrecondition), "Mounts only for active or view");
    assert_eq!(
        commit(&mut c, "again", "base", &[]).await,
        Err(Code::FailedPrecondition),
        "commit a committed"
    );
    view(&mut c, "v", "base").await.unwrap();
    assert_eq!(
        commit(&mut c, "fromview", "v", &[]).await,
        Err(Code::FailedPrecondition),
        "a view never commits"
    );
    prepare(&mut c, "c", "base").await.unwrap();
    assert_eq!(commit(&mut c, "base", "c", &[]).await, Err(Code::AlreadyExists), "commit onto a taken name");
    assert!(stat(&mut c, "c").await.is_ok(), "a refused commit keeps the active snapshot");
    assert_eq!(remove(&mut c, "base").await, Err(Code::FailedPrecondition), "a parent of others");
    assert_eq!(remove(&mut c, "missing").await, Err(Code::NotFound));
    let huge = "x".repeat(5000);
    let req = pb::PrepareSnapshotRequest {
        key: "d".into(),
        labels: labels(&[("big", &huge)]),
        ..Default::default()
    };
    assert_eq!(c.prepare(req).await.unwrap_err().code(), Code::InvalidArgument, "a label over 4 KiB");
    let bad = list(&mut c, &["name=="]).await;
    assert_eq!(bad, Err(Code::InvalidArgument), "a filter that does not parse");

    // Children first, then the parent (containerd's GC order).
    remove(&mut c, "c").await.unwrap();
    remove(&mut c, "v").await.unwrap();
    remove(&mut c, "base").await.unwrap();
    assert_eq!(list(&mut c, &[]).await.unwrap().0, Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(_server.root().join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "Remove takes the directories too: {left:?}");
}

/// Update as containerd's metastore: no paths replace the labels, a
/// `labels.KEY` path sets or deletes one key, other paths are refused;
/// created stays, updated moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_labels_only() {
    let (_server, mut c) = Server::start().await;
    let req = pb::PrepareSnapshotRequest {
        key: "a".into(),
        labels: labels(&[("one", "1"), ("two", "2")]),
        ..Default::default()
    };
    c.prepare(req).await.unwrap();
    let before = stat(&mut c, "a").await.unwrap();
    assert_eq!(before.labels, labels(&[("one", "1"), ("two", "2")]));

    let info = update(&mut c, "a", &[("three", "3")], &[]).await.unwrap();
    assert_eq!(info.labels, labels(&[("three", "3")]), "no paths: the labels are replaced");
    let info = update(&mut c, "a", &[("four", "4"), ("ignored", "x")], &["labels.four"]).await.unwrap();
    assert_eq!(info.labels, labels(&[("three", "3"), ("four", "4")]), "only the named label is set");
    let info = update(&mut c, "a", &[], &["labels.three"]).await.unwrap();
    assert_eq!(info.labels, labels(&[("four", "4")]), "a named label without a value is deleted");
    let info = update(&mut c, "a", &[("five", "5")], &["labels"]).await.unwrap();
    assert_eq!(info.labels, labels(&[("five", "5")]), "the path `labels` replaces them all");
    assert_eq!(update(&mut c, "a", &[], &["parent"]).await, Err(Code::InvalidArgument));
    assert_eq!(update(&mut c, "missing", &[], &[]).await, Err(Code::NotFound));

    let after = stat(&mut c, "a").await.unwrap();
    assert_eq!(after.created_at, before.created_at);
    let ns = |t: &prost_types::Timestamp| t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
    assert!(ns(after.updated_at.as_ref().unwrap()) >= ns(before.updated_at.as_ref().unwrap()));
    assert_eq!((after.kind, after.labels), (Kind::Active as i32, labels(&[("five", "5")])));
}

/// List with containerd's filters (testsuite checkWalk's table, and what
/// containerd 1.6's metadata snapshotter sends to find a remote snapshot),
/// streamed in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_streams_and_honours_filters() {
    let (_server, mut c) = Server::start().await;
    let ref_label = "containerd.io/snapshot.ref";
    let req = |key: &str, parent: &str, l: &[(&str, &str)]| pb::PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
        ..Default::default()
    };
    c.prepare(req("ns/1/extract-a", "", &[(ref_label, "sha256:a")])).await.unwrap();
    commit(&mut c, "ns/2/sha256:a", "ns/1/extract-a", &[(ref_label, "sha256:a"), ("tier", "base")])
        .await
        .unwrap();
    c.prepare(req("ns/3/extract-b", "ns/2/sha256:a", &[(ref_label, "sha256:b")])).await.unwrap();
    commit(&mut c, "ns/4/sha256:b", "ns/3/extract-b", &[(ref_label, "sha256:b"), ("tier", "app")])
        .await
        .unwrap();
    c.prepare(req("ns/5/container one", "ns/4/sha256:b", &[("owner", "ctr")])).await.unwrap();
    view(&mut c, "ns/6/view", "ns/2/sha256:a").await.unwrap();

    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["ns/2/sha256:a", "ns/4/sha256:b", "ns/5/container one", "ns/6/view"]),
        (&["kind==committed"], &["ns/2/sha256:a", "ns/4/sha256:b"]),
        (&["kind==active"], &["ns/5/container one"]),
        (&["kind==view"], &["ns/6/view"]),
        (&["labels.tier"], &["ns/2/sha256:a", "ns/4/sha256:b"]),
        (&["labels.tier==app"], &["ns/4/sha256:b"]),
        (&["labels.tier!=app"], &["ns/2/sha256:a", "ns/5/container one", "ns/6/view"]),
        (&["parent==ns/2/sha256:a"], &["ns/4/sha256:b", "ns/6/view"]),
        (&[r#"name~=/container/"#], &["ns/5/container one"]),
        (&["kind==view", "labels.owner==ctr"], &["ns/5/container one", "ns/6/view"]),
        (&[r#"labels."containerd.io/snapshot.ref"==sha256:b,parent=="ns/2/sha256:a""#], &["ns/4/sha256:b"]),
        (&[r#"labels."containerd.io/snapshot.ref"==sha256:b,parent=="""#], &[]),
        (&[r#"labels."containerd.io/snapshot.ref"==sha256:a,parent=="""#], &["ns/2/sha256:a"]),
    ];
    for (filters, want) in cases {
        assert_eq!(list(&mut c, filters).await.unwrap().0, *want, "{filters:?}");
    }

    for i in 0..250 {
        prepare(&mut c, &format!("many/{i:03}"), "").await.unwrap();
    }
    let (names, responses) = list(&mut c, &["name~=^many/"]).await.unwrap();
    assert_eq!(names.len(), 250);
    assert_eq!(responses, 3, "100 infos per response");
}

/// Usage: an active snapshot measured now (blocks and inodes, a hard link
/// once), a committed one as frozen at commit, a view nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_blocks_and_inodes() {
    let (server, mut c) = Server::start().await;
    let m = prepare(&mut c, "a", "").await.unwrap();
    let upper = PathBuf::from(&m[0].source);
    let usage = |c: &mut SnapshotsClient<Channel>, key: &str| {
        let req = pb::UsageRequest { key: key.into(), ..Default::default() };
        let mut c = c.clone();
        async move { c.usage(req).await.map(|r| r.into_inner()).map_err(|s| s.code()) }
    };
    let empty = usage(&mut c, "a").await.unwrap();
    assert_eq!(empty.inodes, 1, "the root");
    std::fs::write(upper.join("f"), vec![7u8; 1 << 20]).unwrap();
    std::fs::hard_link(upper.join("f"), upper.join("g")).unwrap();
    std::fs::create_dir(upper.join("d")).unwrap();
    let full = usage(&mut c, "a").await.unwrap();
    assert_eq!(full.inodes, 3, "root, f (linked twice), d");
    assert!(full.size >= empty.size + (1 << 20), "{full:?}");
    commit(&mut c, "b", "a", &[]).await.unwrap();
    assert_eq!(usage(&mut c, "b").await.unwrap(), full, "frozen at commit");
    view(&mut c, "v", "b").await.unwrap();
    assert_eq!(usage(&mut c, "v").await.unwrap().size, 0);
    assert_eq!(usage(&mut c, "missing").await, Err(Code::NotFound));
    drop(server);
}

/// Snapshots survive a restart of the service (metadata in the store's
/// family, directories on disk); a directory no snapshot names (a crash
/// between the directory and its record) is removed at open and by Cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_a_restart_and_strays_are_cleaned() {
    let (mut server, mut c) = Server::start().await;
    let m = prepare(&mut c, "a", "").await.unwrap();
    std::fs::write(PathBuf::from(&m[0].source).join("f"), b"data").unwrap();
    commit(&mut c, "base", "a", &[("l", "1")]).await.unwrap();
    let m = prepare(&mut c, "top", "base").await.unwrap();
    let stray = server.root().join("snapshots/999");
    std::fs::create_dir_all(stray.join("fs")).unwrap();

    let mut c = server.restart().await;
    assert!(!stray.exists(), "removed at open");
    assert_eq!(list(&mut c, &[]).await.unwrap().0, ["base", "top"]);
    assert_eq!(stat(&mut c, "base").await.unwrap().labels, labels(&[("l", "1")]));
    assert_eq!(mounts(&mut c, "top").await.unwrap(), m, "the same mounts after the restart");
    // New ids never reuse a live one.
    let m2 = prepare(&mut c, "other", "").await.unwrap();
    assert!(!m.iter().chain(&m2).any(|x| x.source.is_empty()));
    let upper =
        |m: &[Mount]| m[0].options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(str::to_owned);
    assert_ne!(Some(m2[0].source.clone()), upper(&m));

    std::fs::create_dir_all(&stray).unwrap();
    c.cleanup(pb::CleanupRequest { ..Default::default() }).await.unwrap();
    assert!(!stray.exists(), "removed by Cleanup");
    assert!(PathBuf::from(&m2[0].source).exists(), "live snapshots kept");
    server.shutdown().await;
}

/// A new snapshot's root is 0755 whatever the umask (testsuite
/// RootPermission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_layer_root_is_0755() {
    use std::os::unix::fs::PermissionsExt;
    let (_server, mut c) = Server::start().await;
    // SAFETY: umask has no preconditions; restored below.
    let old = unsafe { libc::umask(0o077) };
    let m = prepare(&mut c, "a", "").await;
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let m = m.unwrap();
    let mode = std::fs::metadata(&m[0].source).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

/// The node's side of remote snapshots, for the protocol alone: chains
/// it "has" are directories of files, mounted by a read-only bind (the
/// real node mounts the image lazily through FUSE: tests/containerd.rs).
struct FakeLayers {
    chains: std::collections::BTreeMap<String, (strata_snapshotter::ChainSource, PathBuf)>,
    asked: std::sync::Mutex<Vec<String>>,
    mounted: std::sync::Mutex<Vec<PathBuf>>,
}

impl strata_snapshotter::Layers for FakeLayers {
    fn find_chain(
        &self,
        chain_id: &str,
        _labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<strata_snapshotter::ChainSource>, String> {
        self.asked.lock().unwrap().push(chain_id.to_owned());
        Ok(self.chains.get(chain_id).map(|(s, _)| s.clone()))
    }

    fn mount_chain(&self, source: &strata_snapshotter::ChainSource, mountpoint: &Path) -> Result<(), String> {
        let (_, dir) = self.chains.values().find(|(s, _)| s == source).ok_or("unknown chain")?;
        let m = Mount {
            r#type: "bind".into(),
            source: dir.display().to_string(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        };
        mount_all(&[m], mountpoint);
        self.mounted.lock().unwrap().push(mountpoint.to_owned());
        Ok(())
    }

    fn is_mounted(&self, mountpoint: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(mountpoint.to_str().unwrap()))
    }

    fn unmount_chain(&self, mountpoint: &Path) -> Result<(), String> {
        unmount(mountpoint);
        Ok(())
    }
}

/// containerd's remote-snapshot protocol (metadata/snapshot.go, 1.6): a
/// layer prepared with `containerd.io/snapshot.ref` whose chain Strata has
/// is committed under the target at once and the Prepare answered
/// AlreadyExists; containerd's List filter then finds it; a container on
/// it is an overlay whose only lower is the chain's one read-only mount,
/// mounted again if it died, and unmounted with the last container. A
/// chain Strata lacks takes the normal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_snapshots_answer_already_exists_and_mount_their_chain_once() {
    if !is_root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let chain_dir = dir.path().join("image-files");
    std::fs::create_dir_all(chain_dir.join("etc")).unwrap();
    std::fs::write(chain_dir.join("etc/release"), b"from the chain\n").unwrap();
    let (c1, c2) = (format!("sha256:{}", "1".repeat(64)), format!("sha256:{}", "2".repeat(64)));
    let source = |depth| strata_snapshotter::ChainSource { image: "ab".repeat(32), depth };
    let layers = Arc::new(FakeLayers {
        chains: [(c1.clone(), (source(1), chain_dir.clone())), (c2.clone(), (source(2), chain_dir.clone()))]
            .into(),
        asked: Default::default(),
        mounted: Default::default(),
    });
    let root = dir.path().join("snapshotter");
    let store = Arc::new(Store::open(&dir.path().join("store"), OpenMode::ReadWrite).unwrap());
    let snapshots = Arc::new(Snapshots::open(store, &root).unwrap().with_layers(layers.clone()));
    let socket = dir.path().join("s.sock");
    let listener = strata_snapshotter::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(strata_snapshotter::serve(snapshots, listener, async {
        let _ = stopped.await;
    }));
    let mut c = connect(&socket).await;

    let ref_label = "containerd.io/snapshot.ref";
    let unpack = |key: &str, parent: &str, target: &str| pb::PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        labels: labels(&[(ref_label, target), ("containerd.io/snapshot/cri.layer-digest", "sha256:blob")]),
        ..Default::default()
    };
    let err = c.prepare(unpack(&format!("ns/1/extract-1 {c1}"), "", &c1)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let filter = format!(r#"labels."containerd.io/snapshot.ref"=={c1},parent=="""#);
    let found = list(&mut c, &[&filter]).await.unwrap().0;
    assert_eq!(found, std::slice::from_ref(&c1), "containerd's filter finds the committed chain");
    let info = stat(&mut c, &c1).await.unwrap();
    assert_eq!(info.kind, Kind::Committed as i32);
    assert_eq!(
        info.labels.get("containerd.io/snapshot/cri.layer-digest").map(String::as_str),
        Some("sha256:blob")
    );
    assert_eq!(
        stat(&mut c, &format!("ns/1/extract-1 {c1}")).await,
        Err(Code::NotFound),
        "no active key is left"
    );

    let err = c.prepare(unpack(&format!("ns/2/extract-2 {c2}"), &c1, &c2)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(stat(&mut c, &c2).await.unwrap().parent, c1);
    // Asked again (another namespace, or a retry): the same snapshot.
    let err = c.prepare(unpack(&format!("other/7/extract-9 {c2}"), &c1, &c2)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(list(&mut c, &[]).await.unwrap().0.len(), 2);

    // A chain Strata lacks: the normal path, an active snapshot to unpack into.
    let unknown = format!("sha256:{}", "3".repeat(64));
    let m = c
        .prepare(unpack(&format!("ns/3/extract-3 {unknown}"), &c2, &unknown))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")), "{m:?}");
    assert_eq!(layers.mounted.lock().unwrap().len(), 1, "the layer is applied on the chain's mount");
    remove(&mut c, &format!("ns/3/extract-3 {unknown}")).await.unwrap();
    let extract_mount = layers.mounted.lock().unwrap()[0].clone();
    assert!(!layers.is_mounted_path(&extract_mount), "unmounted with the last snapshot on it");
    assert_eq!(
        *layers.asked.lock().unwrap(),
        [c1.clone(), c2.clone(), unknown.clone()],
        "each chain asked once"
    );

    // Two containers on the chain: one chain mount, the only lower.
    let m = prepare(&mut c, "ns/4/container-a", &c2).await.unwrap();
    prepare(&mut c, "ns/5/container-b", &c2).await.unwrap();
    assert_eq!(layers.mounted.lock().unwrap().len(), 2, "one mount for both");
    let chain_mount = layers.mounted.lock().unwrap()[1].clone();
    let lower = m[0].options.iter().find_map(|o| o.strip_prefix("lowerdir=")).unwrap();
    assert_eq!(Path::new(lower), chain_mount);
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    mount_all(&m, &target);
    assert_eq!(std::fs::read(target.join("etc/release")).unwrap(), b"from the chain\n");
    std::fs::write(target.join("etc/release"), b"changed by the container\n").unwrap();
    unmount(&target);
    assert_eq!(
        std::fs::read(chain_dir.join("etc/release")).unwrap(),
        b"from the chain\n",
        "writes stay in the upper"
    );

    // The chain mount dies: Mounts mounts it again before answering.
    unmount(&chain_mount);
    let again = mounts(&mut c, "ns/4/container-a").await.unwrap();
    assert_eq!(again, m);
    assert_eq!(layers.mounted.lock().unwrap().len(), 3, "mounted again");
    mount_all(&again, &target);
    assert_eq!(std::fs::read(target.join("etc/release")).unwrap(), b"changed by the container\n");
    unmount(&target);

    // The chain mount goes with the last container on it.
    remove(&mut c, "ns/4/container-a").await.unwrap();
    assert!(layers.is_mounted_path(&chain_mount));
    remove(&mut c, "ns/5/container-b").await.unwrap();
    assert!(!layers.is_mounted_path(&chain_mount), "unmounted with the last container");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

impl FakeLayers {
    fn is_mounted_path(&self, path: &Path) -> bool {
        <Self as strata_snapshotter::Layers>::is_mounted(self, path)
    }
}

/// A node's ingest of layers containerd applied, held at a gate: it opens
/// the snapshot's directory, says so, waits, then reads the layer's file
/// through the open directory (as the real ingest walks by descriptors).
struct GatedIngest {
    started: std::sync::Mutex<std::sync::mpsc::Sender<(String, Option<String>)>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    read: std::sync::Mutex<Vec<Result<Vec<u8>, String>>>,
}

impl strata_snapshotter::Layers for GatedIngest {
    fn find_chain(
        &self,
        _: &str,
        _: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<strata_snapshotter::ChainSource>, String> {
        Ok(None)
    }
    fn mount_chain(&self, _: &strata_snapshotter::ChainSource, _: &Path) -> Result<(), String> {
        Err("no chains here".into())
    }
    fn is_mounted(&self, _: &Path) -> bool {
        false
    }
    fn unmount_chain(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn ingest_layer(&self, chain_id: &str, parent: Option<&str>, upper: &Path) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(upper).map_err(|e| e.to_string())?;
        self.started.lock().unwrap().send((chain_id.to_owned(), parent.map(str::to_owned))).unwrap();
        self.go.lock().unwrap().recv().unwrap();
        let read =
            std::fs::read(format!("/proc/self/fd/{}/layer-file", dir.as_raw_fd())).map_err(|e| e.to_string());
        self.read.lock().unwrap().push(read);
        Ok(())
    }
}

/// A layer containerd applied (committed under `NS/SEQ/CHAINID`) is handed
/// to the node's ingest with its ChainID and its parent's; a Remove while
/// the ingest reads it moves the directory aside rather than deleting it
/// under the reader, and the directory goes once the ingest ends. Commits
/// of other names (not a ChainID) are not ingested.
#[test]
fn remove_during_an_ingest_leaves_the_reader_a_whole_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store"), OpenMode::ReadWrite).unwrap());
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let layers = Arc::new(GatedIngest {
        started: std::sync::Mutex::new(started_tx),
        go: std::sync::Mutex::new(go_rx),
        read: std::sync::Mutex::new(Vec::new()),
    });
    let root = dir.path().join("snapshotter");
    let snapshots = Snapshots::open(store, &root).unwrap().with_layers(layers.clone());
    let base = format!("sha256:{}", "a".repeat(64));
    let top = format!("sha256:{}", "b".repeat(64));

    // A commit under another kind of name: no ingest.
    snapshots.prepare("scratch", "", Default::default()).unwrap();
    snapshots.commit("default/1/my-build", "scratch", Default::default()).unwrap();

    let mounts = snapshots.prepare(&format!("default/2/extract-1 {base}"), "", Default::default()).unwrap();
    let fs = PathBuf::from(&mounts[0].source);
    std::fs::write(fs.join("layer-file"), b"base layer").unwrap();
    let base_name = format!("default/3/{base}");
    snapshots.commit(&base_name, &format!("default/2/extract-1 {base}"), Default::default()).unwrap();
    let (chain, parent) = started.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!((chain.as_str(), parent), (base.as_str(), None));

    snapshots.remove(&base_name).unwrap();
    assert!(!fs.exists(), "the snapshot's directory is gone from its place");
    let aside: Vec<PathBuf> =
        std::fs::read_dir(root.join("removed")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(aside.len(), 1, "moved aside while read");
    go.send(()).unwrap();

    // The next layer's ingest starts only after the first ended (one
    // thread, in order): by then the directory moved aside is gone.
    let mounts = snapshots.prepare(&format!("default/4/extract-2 {top}"), "", Default::default()).unwrap();
    std::fs::write(PathBuf::from(&mounts[0].source).join("layer-file"), b"top layer").unwrap();
    snapshots
        .commit(&format!("default/5/{top}"), &format!("default/4/extract-2 {top}"), Default::default())
        .unwrap();
    let (chain, _) = started.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(chain, top);
    assert!(!aside[0].exists(), "the directory moved aside went with its ingest");
    assert_eq!(layers.read.lock().unwrap()[0].as_deref(), Ok(&b"base layer"[..]), "the reader saw it whole");
    go.send(()).unwrap();
}
