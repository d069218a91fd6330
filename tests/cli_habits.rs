//! The habits of docker, nerdctl and skopeo users, driven through the
//! binary as they would drive it: pipes that close early, references as
//! docker normalises them, scripts' output forms, settings that are
//! misspelt, archives through pipes, shells' completions and manual pages.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::common::{sample_archive, Strata};

/// Runs `strata args` with stdout a pipe whose reader has already gone.
fn into_closed_pipe(s: &Strata, args: &[&str]) -> std::process::Output {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    s.command().args(args).stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().expect("strata runs")
}

#[test]
fn every_listing_ends_quietly_when_its_reader_goes() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let listings: [&[&str]; 14] = [
        &["images"],
        &["images", "-q"],
        &["--json", "images"],
        &["images", "--format", "{{.Name}}"],
        &["status"],
        &["store", "stats"],
        &["inspect", "sample:1"],
        &["mounts"],
        &["uppers"],
        &["config", "show"],
        &["--help"],
        &["completion", "bash"],
        &["man"],
        &["export", "sample:1", "-o", "-"],
    ];
    for args in listings {
        let out = into_closed_pipe(&s, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // As a C tool: killed by SIGPIPE (141 in a shell), not a panic (101).
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "strata {args:?}: {:?}, stderr: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "strata {args:?}: {stderr}");
    }
}

#[test]
fn references_resolve_as_docker_resolves_them_and_misses_say_what_is_close() {
    let s = Strata::new();
    let archive = sample_archive(s.dir.path(), "sample.tar", "sample:1");
    let archive = archive.to_str().expect("utf-8");
    s.ok(&["import", archive, "--name", "registry.local/app:1.4"]);
    s.ok(&["import", archive, "--name", "busybox"]);

    // docker would not take app:1.4 for registry.local/app:1.4: neither does
    // strata, but it says what is close.
    let err = s.fails(&["inspect", "app:1.4"]);
    assert!(
        err.contains("no image named \"app:1.4\"") && err.contains("did you mean registry.local/app:1.4?"),
        "{err}"
    );
    let found = s.json(&["inspect", "registry.local/app:1.4"]);
    let id = found["id"].as_str().expect("id").to_owned();
    // docker.io/library/NAME is NAME; a bare name means :latest.
    assert_eq!(s.json(&["inspect", "docker.io/library/busybox:latest"])["id"], id.as_str());
    assert_eq!(s.json(&["inspect", "busybox"])["id"], id.as_str());
    // Ids and unique prefixes.
    assert_eq!(s.json(&["inspect", &id[..8]])["id"], id.as_str());
    let err = s.fails(&["inspect", "busybx"]);
    assert!(err.contains("did you mean busybox:latest?"), "{err}");

    // docker's names for the same commands.
    assert!(s.ok(&["ps"]).starts_with("MOUNTPOINT"));

    // Scripts: one id per image, and templates.
    assert_eq!(s.ok(&["images", "-q"]), format!("{}\n", &id[..12]));
    let rows = s.ok(&["images", "--format", "{{.Repository}}|{{.Tag}}|{{.ID}}|{{.Layers}}"]);
    assert_eq!(
        rows,
        format!("busybox|latest|{short}|2\nregistry.local/app|1.4|{short}|2\n", short = &id[..12])
    );
    let table = s.ok(&["images", "--format", "table {{.Name}}\\t{{.SizeBytes}}"]);
    assert!(
        table.starts_with("NAME") && table.lines().next().expect("header").contains("SIZE_BYTES"),
        "{table}"
    );
    let err = s.fails(&["images", "--format", "{{.Created}}"]);
    assert!(err.contains("{{.Created}} is not a field") && err.contains("{{.Repository}}"), "{err}");
    // docker's `--format json`: one object a line, keyed by the fields.
    let json = s.ok(&["images", "--format", "json"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().expect("a line")).expect("json");
    assert_eq!((first["Repository"].as_str(), first["Tag"].as_str()), (Some("busybox"), Some("latest")));
    assert!(s.fails(&["--json", "images", "-q"]).contains("exclude each other"));
}

#[test]
fn misspelt_settings_are_errors_that_say_where_they_were_written() {
    let s = Strata::new();
    let file = s.path("strata.toml");
    let file_arg = file.to_str().expect("utf-8");
    std::fs::write(&file, "[node]\nfetch_deadline = 3.0\n").expect("write");
    let err = s.fails(&["--config", file_arg, "config", "show"]);
    assert!(err.contains("fetch_deadline") && err.contains(file_arg), "the key and the file: {err}");
    std::fs::write(&file, "[mount]\nreadahead = 64\n").expect("write");
    let err = s.fails(&["--config", file_arg, "config", "show"]);
    assert!(err.contains("readahead") && err.contains(file_arg), "[mount] is checked too: {err}");
    std::fs::write(&file, "[cache]\nmax_bytes = \"lots\"\n").expect("write");
    let err = s.fails(&["--config", file_arg, "config", "show"]);
    assert!(err.contains("max_bytes"), "a bad value names its key: {err}");

    let out =
        s.command().args(["config", "show"]).env("STRATA_NODE__FETCH_DEADLINE", "3").output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("STRATA_NODE__FETCH_DEADLINE"),
        "the variable named: {err}"
    );
    let out = s.command().args(["config", "show"]).env("STRATA_BENCH_ANYTHING", "1").output().expect("run");
    assert!(out.status.success(), "harness variables are not settings");

    for bad in ["strata=loud", "debugg"] {
        let out = s.command().args(["config", "show"]).env("STRATA_LOG", bad).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("STRATA_LOG"), "{bad}: {err}");
    }

    // A [chunking] key alone takes the rest from its mode's defaults;
    // values out of range are refused.
    std::fs::write(&file, "[chunking]\navg = 32768\n").expect("write");
    let shown = s.json(&["--config", file_arg, "config", "show"]);
    assert_eq!(
        shown["settings"]["chunking"],
        serde_json::json!({"mode": "cdc", "min": 16384, "avg": 32768, "max": 262144})
    );
    std::fs::write(&file, "zstd_level = 99\n").expect("write");
    assert!(s.fails(&["--config", file_arg, "config", "show"]).contains("zstd_level"));
    std::fs::write(&file, "[mount]\nreadahead_kb = 99999\n").expect("write");
    assert!(s.fails(&["--config", file_arg, "config", "show"]).contains("readahead_kb"));

    // Every place looked at, in order.
    let shown = s.json(&["config", "show"]);
    let places: Vec<String> = shown["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|p| format!("{} {}", p["place"].as_str().expect("place"), p["found"].as_str().expect("found")))
        .collect();
    assert_eq!(places[0], "built-in defaults used");
    assert!(places.iter().any(|p| p.contains("strata.toml missing")), "{places:?}");
    assert!(places.iter().any(|p| p.contains("/etc/strata/strata.toml")), "{places:?}");
    assert!(places.last().expect("variables").starts_with("STRATA_* variables"), "{places:?}");
}

#[test]
fn a_data_dir_with_no_store_is_an_error_except_for_what_makes_one() {
    let s = Strata::new();
    for args in
        [&["images"][..], &["status"], &["store", "stats"], &["gc"], &["rm", "x"], &["mounts"], &["uppers"]]
    {
        let err = s.fails(args);
        assert!(err.contains("no store in") && err.contains("--data-dir"), "strata {args:?}: {err}");
    }
    assert!(!s.data_dir().join("store").exists(), "nothing was made");
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    assert_eq!(s.json(&["images"]).as_array().expect("images").len(), 1);
    // --json only where there is something to print.
    let err = s.fails(&["--json", "completion", "bash"]);
    assert!(err.contains("--json"), "{err}");
}

#[test]
fn archives_go_through_pipes_and_files_that_are_not_archives_are_described() {
    let (a, b) = (Strata::new(), Strata::new());
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    // strata export -o - | strata import -
    let mut export =
        a.command().args(["export", "sample:1", "-o", "-"]).stdout(Stdio::piped()).spawn().expect("export");
    let pipe = export.stdout.take().expect("stdout");
    let import =
        b.command().args(["--json", "import", "-"]).stdin(Stdio::from(pipe)).output().expect("import");
    assert!(export.wait().expect("export").success());
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let same = |s: &Strata| s.json(&["inspect", "sample:1"])["id"].clone();
    assert_eq!(same(&a), same(&b), "the same image crossed the pipe");
    assert!(
        std::fs::read_dir(b.data_dir().join("tmp")).expect("tmp").next().is_none(),
        "the spooled stdin is gone"
    );

    // Not archives: an error saying what the file looks like, never its bytes.
    let secret = "password=hunter2\n".repeat(50);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("notes.txt", secret.clone().into_bytes(), "text"),
        ("notes.txt.gz", crate::common::gzip(secret.as_bytes()), "gzip"),
        ("notes.txt.zst", crate::common::zstd(secret.as_bytes()), "zstd"),
        ("random.bin", strata_sample::random_bytes(7, 4096), "data"),
    ];
    for (name, bytes, looks) in cases {
        let path = b.path(name);
        std::fs::write(&path, &bytes).expect("write");
        let err = b.fails(&["import", path.to_str().expect("utf-8")]);
        assert!(err.contains(looks), "{name}: {err}");
        assert!(!err.contains("hunter2"), "{name}: the file's contents were printed: {err}");
        // The same through stdin.
        let mut child = b
            .command()
            .args(["import", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("import -");
        child.stdin.take().expect("stdin").write_all(&bytes).expect("feed");
        let out = child.wait_with_output().expect("import -");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(looks) && !err.contains("hunter2"),
            "{name} on stdin: {err}"
        );
    }
}

#[test]
fn completions_manual_pages_and_plurals() {
    let s = Strata::new();
    let bash = s.ok(&["completion", "bash"]);
    assert!(bash.contains("complete") && bash.contains("strata") && bash.contains("uppers"), "bash script");
    for shell in ["zsh", "fish"] {
        assert!(s.ok(&["completion", shell]).contains("strata"), "{shell}");
    }
    let page = s.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH strata"),
        "troff: {}",
        &page[..200.min(page.len())]
    );
    let run = s.ok(&["man", "run"]);
    assert!(run.contains("strata\\-run") && run.contains("\\-\\-env\\-file"), "{run}");
    let err = s.fails(&["man", "nosuch"]);
    assert!(err.contains("no manual page") && err.contains("run"), "{err}");
    // Nested commands, as `strata help` takes them.
    assert!(s.ok(&["man", "store", "stats"]).contains("strata\\-store\\-stats"));

    let one_layer = s.path("one.tar");
    crate::common::archive_of_blobs(
        &one_layer,
        strata_oci::ArchiveLayout::Oci,
        "one:1",
        &[tar_of_one_file()],
    );
    let out = s.ok(&["import", one_layer.to_str().expect("utf-8")]);
    assert!(out.contains("(") && out.contains(", 1 layer)") && out.contains("1 new layer,"), "{out}");
}

/// A layer tar with one small file.
fn tar_of_one_file() -> Vec<u8> {
    let mut tar = strata_sample::LayerTar::new(Vec::new());
    tar.file(b"hello", 0o644, b"hi\n").expect("tar");
    tar.finish().expect("tar")
}

#[test]
fn export_on_a_terminal_draws_its_progress_and_refuses_to_write_the_archive_there() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let on_pty = |args: &str| {
        let line = format!("{} --data-dir {} {args}", env!("CARGO_BIN_EXE_strata"), s.data_dir().display());
        let out = Command::new("script")
            .args(["-qefc", &line, "/dev/null"])
            .env_remove("STRATA_CONFIG")
            .env("STRATA_LOG", "warn")
            .output()
            .expect("script(1)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let out = s.path("out.tar");
    let (ok, transcript) = on_pty(&format!("export sample:1 -o {}", out.display()));
    assert!(ok, "{transcript}");
    assert!(
        transcript.contains("written") && transcript.contains("total"),
        "no progress drawn: {transcript:?}"
    );
    assert!(transcript.contains("exported sample:1") && transcript.contains("2 layers"), "{transcript}");
    let (ok, transcript) = on_pty("export sample:1");
    assert!(!ok && transcript.contains("refusing to write an image archive to a terminal"), "{transcript}");
}
