//! The end-to-end benches' images, built at bench time from Debian and PyPI
//! packages (benches/images/README.md), and the HelloBench-style workload
//! each runs until it prints [`READY`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::ok;

/// The line every workload prints once it has started for real.
pub const READY: &str = "ready";

#[derive(Clone)]
pub struct BenchImage {
    pub name: &'static str,
    /// Name:tag inside the archive.
    pub reference: String,
    /// A docker-archive (`docker save` format).
    pub archive: PathBuf,
    /// Runs in the image until it prints [`READY`].
    pub command: Vec<String>,
}

/// `strata run` of the image's workload through the node at `data`, timed
/// to `ready`; its reads traced to `trace`, its startup profile recorded
/// with `record`.
pub fn run_until_ready(data: &Path, image: &BenchImage, trace: Option<&Path>, record: bool) -> Duration {
    let started = Instant::now();
    let mut run = super::strata(data);
    run.arg("run");
    if let Some(trace) = trace {
        run.arg("--trace-reads").arg(trace);
    }
    let mut child = run
        .arg(&image.reference)
        .arg("--")
        .args(&image.command)
        .env("STRATA_MOUNT__PROFILE_WINDOW_SECS", if record { "60" } else { "0" })
        .stdout(Stdio::piped())
        .spawn()
        .expect("strata run");
    let ready = super::wait_for_line(child.stdout.take().expect("stdout"), READY, started);
    let status = child.wait().expect("strata run");
    assert!(status.success(), "strata run {} on {} failed: {status}", image.reference, data.display());
    ready
}

/// Where built images are kept between runs.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("STRATA_BENCH_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/strata-bench/images"), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("bench image cache");
    dir
}

/// The image called `name` (python, gcc, busybox), built if not cached.
pub fn image(name: &str) -> BenchImage {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match name {
        "busybox" => busybox(),
        "python" => docker_image("python", strings(&["python3", "-c", "import pandas; print('ready')"])),
        "gcc" => docker_image(
            "gcc",
            strings(&[
                "sh",
                "-c",
                "printf '#include <stdio.h>\\nint main(void) { puts(\"ready\"); return 0; }\\n' > /tmp/hello.c \
                 && gcc -O2 -o /tmp/hello /tmp/hello.c && /tmp/hello",
            ]),
        ),
        other => panic!("no bench image {other:?} (python, gcc, busybox)"),
    }
}

/// Debian's busybox-static as the base layer, applet links above: small,
/// and built without Docker (the smoke runs use it).
fn busybox() -> BenchImage {
    use strata_sample::{debian_package_layer, sample_config, write_image, LayerTar};
    let archive = cache_dir().join("busybox.tar");
    let reference = "strata-bench/busybox:1".to_owned();
    if !archive.exists() {
        let base = debian_package_layer("busybox-static").expect("busybox-static from Debian");
        let mut links = LayerTar::new(Vec::new());
        links.dir("tmp", 0o1777).expect("tar");
        for applet in ["sh", "cat", "echo", "ls", "sleep"] {
            links.symlink(&format!("bin/{applet}"), "busybox").expect("tar");
        }
        // The workload is the image's Cmd, with no Entrypoint before it.
        let mut config = sample_config(&[]);
        if let Some(c) = config["config"].as_object_mut() {
            c.remove("Entrypoint");
            c.insert("Cmd".into(), serde_json::json!(["sh", "-c", "echo ready"]));
        }
        let partial = archive.with_extension("part");
        write_image(
            strata_oci::ArchiveTarget::Tar(partial.clone()),
            strata_oci::ArchiveLayout::DockerLegacy,
            strata_oci::LayerCompression::None,
            std::slice::from_ref(&reference),
            config,
            &[base, links.finish().expect("tar")],
        )
        .expect("busybox image");
        std::fs::rename(&partial, &archive).expect("busybox image");
    }
    BenchImage {
        name: "busybox",
        reference,
        archive,
        command: vec!["sh".into(), "-c".into(), format!("echo {READY}")],
    }
}

const BASE: &str = "strata-bench/debian:bookworm";

fn docker_has(image: &str) -> bool {
    Command::new("docker").args(["image", "inspect", image]).output().is_ok_and(|o| o.status.success())
}

/// The Debian base every Docker-built bench image starts from.
fn ensure_base() {
    if docker_has(BASE) {
        return;
    }
    eprintln!("building {BASE} with mmdebstrap (about half a minute)");
    super::netns::sh(&format!(
        "mmdebstrap --quiet --variant=minbase bookworm - http://deb.debian.org/debian | docker import - {BASE}"
    ));
}

/// `benches/images/NAME` built by Docker and saved, unless the saved
/// archive is of the current build.
fn docker_image(name: &'static str, command: Vec<String>) -> BenchImage {
    ensure_base();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/images").join(name);
    let context = cache_dir().join(format!("{name}-context"));
    std::fs::create_dir_all(&context).expect("build context");
    std::fs::copy(recipe.join("Dockerfile"), context.join("Dockerfile")).expect("Dockerfile");
    if name == "python" {
        let wheels = context.join("wheels");
        if !wheels.exists() {
            eprintln!("downloading numpy and pandas wheels from PyPI");
            ok(Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.11"])
                .args(["--platform", "manylinux2014_x86_64", "--implementation", "cp", "-d"])
                .arg(wheels.with_extension("part"))
                .args(["numpy==1.26.4", "pandas==2.2.3"]));
            std::fs::rename(wheels.with_extension("part"), &wheels).expect("wheels");
        }
    }
    let reference = format!("strata-bench/{name}:1");
    eprintln!("docker build {reference} (cached by Docker after the first time)");
    ok(Command::new("docker")
        .args(["build", "-q", "-t", &reference])
        .arg(&context)
        .env("DOCKER_BUILDKIT", "0"));
    let id = ok(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &reference]));
    let archive = cache_dir().join(format!("{name}.tar"));
    let id_file = archive.with_extension("id");
    if std::fs::read_to_string(&id_file).ok().as_deref() != Some(id.trim()) || !archive.exists() {
        let partial = archive.with_extension("part");
        ok(Command::new("docker").args(["save", "-o"]).arg(&partial).arg(&reference));
        std::fs::rename(&partial, &archive).expect("saved image");
        std::fs::write(&id_file, id.trim()).expect("image id");
    }
    BenchImage { name, reference, archive, command }
}
