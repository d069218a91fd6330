//! Manual pages made from the command line's own definition (clap_mangen):
//! one for `strata` and one per command (`strata-run`, `strata-cert-issue`),
//! embedded in the binary, which prints them (`strata man [COMMAND]`).

use std::path::{Path, PathBuf};

#[allow(dead_code)]
mod cli {
    include!("src/cli.rs");
}

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("man");
    std::fs::create_dir_all(&dir)?;
    let command = <cli::Cli as clap::CommandFactory>::command();
    let mut pages = Vec::new();
    write_pages(&command, "strata", &dir, &mut pages)?;
    let mut list = String::from("/// Manual pages by name (`strata`, `strata-run`, …), troff.\n");
    list.push_str("pub const MAN_PAGES: &[(&str, &str)] = &[\n");
    for (name, path) in &pages {
        list.push_str(&format!("    ({name:?}, include_str!({:?})),\n", path.display().to_string()));
    }
    list.push_str("];\n");
    std::fs::write(out.join("man_pages.rs"), list)
}

/// Writes `command`'s page as `name`.1, then its visible subcommands' as
/// `name`-`sub`.1.
fn write_pages(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    pages: &mut Vec<(String, PathBuf)>,
) -> std::io::Result<()> {
    let mut text = Vec::new();
    // clap takes &'static names without its "string" feature; a build script may leak.
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let named = command.clone().name(leaked).bin_name(name.replace('-', " "));
    clap_mangen::Man::new(named).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)?;
    pages.push((name.to_owned(), path));
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, pages)?;
    }
    Ok(())
}
