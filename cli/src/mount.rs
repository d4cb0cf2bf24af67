//! `udax mount`: serves an image through FUSE until it is unmounted.
//!
//! Without `-f` the command starts itself again in the foreground, in its own process group,
//! and returns once that process reports the mount ready (or prints its error). SIGINT, SIGTERM,
//! SIGHUP or `umount DIR` end the session; the image is then checkpointed and synced.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use udax_fuse::MountOptions;

use crate::common::{close_image, open_image, open_image_read_only, CliResult, Failure};
use crate::MountArgs;

const CMD: &str = "mount";
/// Set in the environment of the background process: it reports on stdout.
const READY_ENV: &str = "UDAX_MOUNT_REPORT";

pub fn run(a: &MountArgs) -> CliResult {
    let opts = MountOptions::parse(&a.options).map_err(|e| Failure::plain(CMD, e))?;
    let nonempty = a.options.iter().flat_map(|o| o.split(',')).any(|o| o == "nonempty");
    check_mount_point(&a.dir, nonempty)?;
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Err(Failure::new(CMD, "/dev/fuse", format!("{e} (is the fuse module loaded?)")));
    }
    if a.foreground {
        let report = std::env::var_os(READY_ENV).is_some();
        return serve(a, &opts, report);
    }
    background(a)
}

fn check_mount_point(dir: &Path, nonempty: bool) -> CliResult {
    let meta = std::fs::metadata(dir).map_err(|e| Failure::new(CMD, dir.display(), e))?;
    if !meta.is_dir() {
        return Err(Failure::new(CMD, dir.display(), "not a directory"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| Failure::new(CMD, dir.display(), e))?;
    if !nonempty && entries.next().is_some() {
        return Err(Failure::new(CMD, dir.display(), "mount point is not empty (-o nonempty mounts over it)"));
    }
    Ok(())
}

/// Starts `udax mount -f` in its own process group and waits for its report.
fn background(a: &MountArgs) -> CliResult {
    let exe = std::env::current_exe().map_err(|e| Failure::plain(CMD, format!("cannot find the udax binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&a.image).arg(&a.dir).arg("-f");
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    let mut child = cmd
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::plain(CMD, format!("cannot start the server: {e}")))?;
    let out = child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    if line.trim_end() == "ready" {
        return Ok(());
    }
    let status = child.wait().map_err(|e| Failure::plain(CMD, e))?;
    let msg = line.trim_end().strip_prefix("error: ").unwrap_or(line.trim_end()).to_string();
    let msg = if msg.is_empty() { format!("the server exited ({status}) before the mount was ready") } else { msg };
    Err(Failure { msg: Some(msg), code: 1 })
}

/// Mounts and serves in this process until unmounted.
fn serve(a: &MountArgs, opts: &MountOptions, report: bool) -> CliResult {
    let say = |line: &str| {
        if report {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    let fail = |f: Failure| {
        if let Some(m) = &f.msg {
            say(&format!("error: {m}"));
        }
        f
    };
    let open = if opts.read_only { open_image_read_only } else { open_image };
    let fs = open(CMD, &a.image).map_err(fail)?;
    let keep = fs.clone();
    // A full host ends the session: unmounted lazily (files still open there would make a
    // plain unmount fail), the session ends when the last is closed, and the image is synced.
    let dir = a.dir.clone();
    let stop = Box::new(move || {
        let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
    });
    let mut session = match udax_fuse::session(fs, &a.dir, opts, stop) {
        Ok(s) => s,
        Err(e) => {
            let _ = close_image(CMD, &a.image, keep);
            return Err(fail(Failure::new(CMD, a.dir.display(), e)));
        }
    };
    let mut unmounter = session.unmount_callable();
    let signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let mut signals = signals.map_err(|e| fail(Failure::plain(CMD, format!("signal handlers: {e}"))))?;
    let handle = signals.handle();
    let waiter = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = unmounter.unmount();
        }
    });
    say("ready");
    let served = session.run();
    handle.close();
    let _ = waiter.join();
    let closed = close_image(CMD, &a.image, keep);
    served.map_err(|e| Failure::new(CMD, a.dir.display(), e))?;
    closed
}
