//! `strata run` takes docker run's flags: the command after the image,
//! `-e`, `--env-file`, `-w`, `-u`, `--entrypoint`, `-i`, `-t`, `--name`,
//! `--rm`, each with docker's meaning.

use std::io::Write;
use std::process::Stdio;

use crate::common::node::wait_for;
use crate::common::Strata;
use strata_sample::{sample_config, write_image};

const IMAGE: &str = "strata-test/run-flags:1";

fn image(s: &Strata) {
    let layers = crate::common::busybox_with_app_user(&["sh", "echo", "cat", "id", "pwd", "test", "sleep"]);
    let mut config = sample_config(&[]);
    // No entrypoint: the command after the image is the whole command line.
    config["config"]["Entrypoint"] = serde_json::Value::Null;
    config["config"]["Cmd"] = serde_json::json!(["echo", "default"]);
    config["config"]["Env"] = serde_json::json!(["PATH=/bin", "MODE=prod", "KEEP=1"]);
    config["config"]["WorkingDir"] = "/srv".into();
    let path = s.path("run-flags.tar");
    write_image(
        strata_oci::ArchiveTarget::Tar(path.clone()),
        strata_oci::ArchiveLayout::DockerLegacy,
        strata_oci::LayerCompression::Gzip,
        &[IMAGE.to_owned()],
        config,
        &layers,
    )
    .expect("image");
    s.import(&path);
}

#[test]
fn run_takes_docker_run_s_flags() {
    let s = Strata::new();
    image(&s);
    // The image's command, and one after the image without `--`.
    assert_eq!(s.ok(&["run", IMAGE]), "default\n");
    assert_eq!(s.ok(&["run", IMAGE, "echo", "-n", "hi"]), "hi");
    assert_eq!(s.ok(&["run", IMAGE, "--", "echo", "after", "dashes"]), "after dashes\n");

    // -e and --env-file over the image's Env, in docker's order.
    let env_file = s.path("app.env");
    std::fs::write(&env_file, "# settings\nMODE=file\nFROM_FILE=\"quoted\"\n\n").expect("env file");
    let out = s
        .command()
        .args(["run", "-e", "MODE=dev", "-e", "CALLER", "-e", "UNSET_HERE", "--env-file"])
        .arg(&env_file)
        .args([IMAGE, "sh", "-c", "echo $MODE $FROM_FILE $CALLER $KEEP ${UNSET_HERE-unset}"])
        .env("CALLER", "from-shell")
        .env_remove("UNSET_HERE")
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dev \"quoted\" from-shell 1 unset\n");
    std::fs::write(&env_file, "GOOD=1\nBAD NAME=2\n").expect("env file");
    let err = s.fails(&["run", "--env-file", env_file.to_str().expect("utf-8"), IMAGE]);
    assert!(err.contains("line 2") && err.contains("whitespace"), "{err}");

    // -w (made if missing), -u.
    assert_eq!(
        s.ok(&["run", "-w", "/work/deep", "-u", "app", IMAGE, "sh", "-c", "pwd; id -un"]),
        "/work/deep\napp\n"
    );
    assert!(s.fails(&["run", "-w", "relative", IMAGE]).contains("absolute"));

    // --entrypoint replaces the entrypoint and drops the image's Cmd.
    assert_eq!(s.ok(&["run", "--entrypoint", "echo", IMAGE, "a", "b"]), "a b\n");
    assert_eq!(s.ok(&["run", "--entrypoint", "echo", IMAGE]), "\n");

    // stdin: /dev/null unless -i.
    let fed = |args: &[&str]| {
        let mut child =
            s.command().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run");
        child.stdin.take().expect("stdin").write_all(b"typed\n").expect("feed");
        String::from_utf8(child.wait_with_output().expect("run").stdout).expect("utf-8")
    };
    assert_eq!(fed(&["run", IMAGE, "cat"]), "");
    assert_eq!(fed(&["run", "-i", IMAGE, "cat"]), "typed\n");

    // -t: a terminal of its own (its output through the terminal: CRLF).
    assert_eq!(s.ok(&["run", IMAGE, "sh", "-c", "test -t 1 && echo tty || echo no-tty"]), "no-tty\n");
    assert_eq!(s.ok(&["run", "-t", IMAGE, "sh", "-c", "test -t 1 && echo tty || echo no-tty"]), "tty\r\n");
    assert_eq!(s.ok(&["run", "-t", IMAGE, "sh", "-c", "echo $TERM"]), "xterm\r\n", "docker's TERM with -t");

    // What could not be started exits as docker's: 127 not found, 126 not runnable.
    let code = |args: &[&str]| s.run(args).status.code();
    assert_eq!(code(&["run", IMAGE, "no-such-program"]), Some(127));
    assert_eq!(code(&["run", IMAGE, "/etc/passwd"]), Some(126));

    // --rm is what a run does anyway; with --upper it is a contradiction.
    assert_eq!(s.ok(&["run", "--rm", IMAGE]), "default\n");
    assert!(s.fails(&["run", "--rm", "--upper", "/tmp/x", IMAGE]).contains("--upper"));
}

#[test]
fn a_run_name_is_unique_among_live_runs() {
    let s = Strata::new();
    image(&s);
    let mut first = s
        .command()
        .args(["run", "-i", "--name", "web", IMAGE, "sh", "-c", "read line; echo got $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("first run");
    let claimed = s.data_dir().join("run/web/rootfs/etc");
    wait_for("the first run's mount", || claimed.exists());
    let err = s.fails(&["run", "--name", "web", IMAGE]);
    assert!(err.contains("a run named web is live"), "{err}");
    assert!(s.fails(&["run", "--name", "bad/name", IMAGE]).contains("run name"));
    first.stdin.take().expect("stdin").write_all(b"done\n").expect("feed");
    let out = first.wait_with_output().expect("first run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got done\n");
    assert!(!s.data_dir().join("run/web").exists(), "the run's directory goes with it");
    assert_eq!(s.ok(&["run", "--name", "web", IMAGE]), "default\n", "the name is free again");
}
