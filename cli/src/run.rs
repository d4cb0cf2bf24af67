//! `udax run MOUNT -- CMD`: runs a program with the preload library under it, so that its
//! reads of files on udax mounts are served straight from the image's memory.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::common::{CliResult, Failure};
use crate::RunArgs;

const CMD: &str = "run";
/// The preload library's file name.
pub const LIB: &str = "libudax_preload.so";

/// Where the preload library is: `UDAX_PRELOAD_LIB`, else beside this executable (a cargo
/// build puts it there), else in `../lib/udax/` of an installed tree.
pub fn preload_lib() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("UDAX_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("UDAX_PRELOAD_LIB names {}, which is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("where is this executable? {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let found = [dir.join(LIB), dir.join("../lib/udax").join(LIB)].into_iter().find(|p| p.is_file());
    found.ok_or_else(|| {
        format!(
            "{LIB} is not beside {} (build it with `cargo build -p udax-preload`, the same profile as udax, \
             or set UDAX_PRELOAD_LIB)",
            exe.display()
        )
    })
}

pub fn run(a: &RunArgs) -> CliResult {
    if !crate::common::is_udax_mount(&a.mount) {
        return Err(Failure::new(CMD, a.mount.display(), "not a udax mount (see `udax mount`)").errno(libc::EINVAL));
    }
    let lib = preload_lib().map_err(|m| Failure::plain(CMD, m).errno(libc::ENOENT))?;
    let Some((prog, args)) = a.command.split_first() else {
        return Err(Failure::plain(CMD, "no command to run (udax run MOUNT -- CMD [ARGS…])").errno(libc::EINVAL));
    };
    let mut preload = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    // exec only returns on failure.
    let e = std::process::Command::new(prog).args(args).env("LD_PRELOAD", preload).exec();
    Err(Failure::io(CMD, prog, &e).code(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }))
}
