//! `udax completions` and `udax man`: shell completion scripts and manual pages, both made
//! from the command-line definition itself, so they name every subcommand and option there is.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::common::{CliResult, Failure, OutResult};
use crate::Cli;

/// The manual section of udax's pages: system administration commands.
const SECTION: &str = "8";

pub const COMPLETIONS_HELP: &str = "\
Examples:
  udax completions bash > /etc/bash_completion.d/udax
  udax completions zsh > /usr/local/share/zsh/site-functions/_udax
  udax completions fish > ~/.config/fish/completions/udax.fish
  source <(udax completions bash)      (this shell only)";

pub const MAN_HELP: &str = "\
Examples:
  udax man | man -l -                       read the top page now
  udax man /usr/local/share/man/man8        install udax.8 and udax-COMMAND.8 there";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write udax.8 and one page per subcommand (udax-mkfs.8, ...) into this directory, made if
    /// missing (default: print udax.8 on stdout)
    pub dir: Option<PathBuf>,
}

pub fn completions(a: &CompletionsArgs) -> CliResult {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "udax", &mut script);
    std::io::stdout().lock().write_all(&script).out()
}

/// The pages: (file name, roff text), the top page first.
fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let subs: Vec<clap::Command> = top.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut out = Vec::with_capacity(subs.len() + 1);
    for cmd in std::iter::once(top).chain(subs) {
        let man = clap_mangen::Man::new(cmd).section(SECTION).source(concat!("udax ", env!("CARGO_PKG_VERSION")));
        let mut text = Vec::new();
        man.render(&mut text)?;
        out.push((man.get_filename(), text));
    }
    Ok(out)
}

pub fn man(a: &ManArgs) -> CliResult {
    const CMD: &str = "man";
    let pages = pages().map_err(|e| Failure::plain(CMD, format!("rendering the pages: {e}")))?;
    let Some(dir) = &a.dir else {
        return std::io::stdout().lock().write_all(&pages[0].1).out();
    };
    std::fs::create_dir_all(dir).map_err(|e| Failure::io(CMD, dir, &e))?;
    for (name, text) in &pages {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Failure::io(CMD, &path, &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_udax_and_each_subcommand() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "udax.8");
        for sub in ["udax-mkfs.8", "udax-fsck.8", "udax-put.8", "udax-man.8", "udax-completions.8"] {
            assert!(names.contains(&sub), "{sub} missing from {names:?}");
        }
        assert!(!names.contains(&"udax-help.8"), "{names:?}");
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.starts_with(".ie") || top.contains(".TH udax 8"), "{top}");
    }
}
