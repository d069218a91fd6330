//! `strata config show`: defaults, then the settings file, then STRATA_*.

use crate::common::Strata;

#[test]
fn settings_come_from_defaults_then_the_file_then_the_environment() {
    let s = Strata::new();
    let shown = s.json(&["config", "show"]);
    assert_eq!(shown["settings"]["zstd_level"], 3);
    let used = |shown: &serde_json::Value| -> Vec<String> {
        shown["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .filter(|s| s["found"] == "used")
            .map(|s| s["place"].as_str().expect("place").to_owned())
            .collect()
    };
    assert_eq!(used(&shown), ["built-in defaults"]);

    std::fs::create_dir_all(s.data_dir()).expect("data dir");
    let file = s.data_dir().join("strata.toml");
    std::fs::write(&file, "zstd_level = 5\nimport_workers = 3\n").expect("write settings");
    let shown = s.json(&["config", "show"]);
    assert_eq!(shown["settings"]["zstd_level"], 5);
    assert_eq!(shown["settings"]["import_workers"], 3);
    assert_eq!(used(&shown), ["built-in defaults".to_owned(), file.to_str().expect("utf-8").to_owned()]);

    let out =
        s.command().args(["--json", "config", "show"]).env("STRATA_ZSTD_LEVEL", "9").output().expect("run");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["settings"]["zstd_level"], 9, "the environment overrides the file");
    assert_eq!(shown["settings"]["import_workers"], 3);

    let other = s.path("other.toml");
    std::fs::write(&other, "[chunking]\nmode = \"fixed\"\nsize = 1048576\n").expect("write");
    let shown = s.json(&["--config", other.to_str().expect("utf-8"), "config", "show"]);
    assert_eq!(shown["settings"]["chunking"]["mode"], "fixed");
    assert_eq!(shown["settings"]["zstd_level"], 3, "--config replaces the data dir's file");

    std::fs::write(&other, "zstd_level = \"high\"\n").expect("write");
    let err = s.fails(&["--config", other.to_str().expect("utf-8"), "config", "show"]);
    assert!(err.contains("settings") || err.contains("zstd_level"), "{err}");
}

#[test]
fn chunking_that_could_cut_chunks_no_peer_frame_carries_is_refused() {
    let s = Strata::new();
    let file = s.path("big-chunks.toml");
    // FastCDC allows 16 MiB chunks; a peer frame carries 4 MiB.
    std::fs::write(&file, "[chunking]\nmode = \"cdc\"\nmin = 1048576\navg = 2097152\nmax = 16777216\n")
        .expect("write");
    let err = s.fails(&["--config", file.to_str().expect("utf-8"), "config", "show"]);
    assert!(err.contains("chunking settings") && err.contains("max <= 4128768"), "{err}");
    std::fs::write(&file, "[chunking]\nmode = \"fixed\"\nsize = 8388608\n").expect("write");
    let err = s.fails(&["--config", file.to_str().expect("utf-8"), "config", "show"]);
    assert!(err.contains("between 1 and 4128768 bytes"), "{err}");
}

#[test]
fn a_congestion_controller_is_cubic_or_bbr_and_nothing_else() {
    let s = Strata::new();
    let file = s.path("congestion.toml");
    std::fs::write(&file, "[node]\ncongestion_control = \"bbr\"\n").expect("write");
    let shown = s.json(&["--config", file.to_str().expect("utf-8"), "config", "show"]);
    assert_eq!(shown["settings"]["node"]["congestion_control"], "bbr", "{shown}");
    std::fs::write(&file, "[node]\ncongestion_control = \"reno\"\n").expect("write");
    let err = s.fails(&["--config", file.to_str().expect("utf-8"), "config", "show"]);
    assert!(err.contains("congestion_control") && err.contains("reno"), "{err}");
}
