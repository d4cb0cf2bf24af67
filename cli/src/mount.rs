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

use crate::common::{close_image, is_udax_mount, open_image, open_image_read_only, CliResult, Failure};
use crate::server_log::{self, Sink};
use crate::MountArgs;

const CMD: &str = "mount";
/// Set in the environment of the background process: it reports on stdout.
const READY_ENV: &str = "UDAX_MOUNT_REPORT";

pub fn run(a: &MountArgs) -> CliResult {
    let mut opts = MountOptions::parse(&a.options).map_err(|e| Failure::plain(CMD, e))?;
    // The image as the mount's source, as mount(8) and df show a block device.
    opts.source = std::fs::canonicalize(&a.image).ok().map(|p| p.to_string_lossy().into_owned());
    let nonempty = a.options.iter().flat_map(|o| o.split(',')).any(|o| o == "nonempty");
    check_mount_point(&a.dir, nonempty)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(Failure::new(CMD, "/dev/fuse", "No such file or directory (is the fuse module loaded?)"));
    }
    if a.foreground {
        let report = std::env::var_os(READY_ENV).is_some();
        return serve(a, &opts, report);
    }
    background(a, &opts)
}

fn check_mount_point(dir: &Path, nonempty: bool) -> CliResult {
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::new(CMD, dir.display(), "mount point does not exist (mkdir it first)"),
        _ => Failure::new(CMD, dir.display(), crate::common::strerror(e.raw_os_error().unwrap_or(libc::EIO))),
    })?;
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
fn background(a: &MountArgs, opts: &MountOptions) -> CliResult {
    let exe = std::env::current_exe().map_err(|e| Failure::plain(CMD, format!("cannot find the udax binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&a.image).arg(&a.dir).arg("-f");
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    // With -o log=FILE the server's standard error goes there too (a panic's message, say).
    let stderr = match &opts.log {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Stdio::from(f),
            Err(e) => return Err(Failure::new(CMD, path.display(), e)),
        },
        None => Stdio::null(),
    };
    let mut child = cmd
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
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
    // The server's message already names the command.
    let msg = msg.strip_prefix("udax mount: ").map(str::to_string).unwrap_or(msg);
    Err(Failure::plain(CMD, msg))
}

/// Mounts and serves in this process until unmounted.
fn serve(a: &MountArgs, opts: &MountOptions, report: bool) -> CliResult {
    // A server started in the background has /dev/null as its standard error: it logs to
    // syslog then.
    let stderr_is_null = std::fs::read_link("/proc/self/fd/2").is_ok_and(|p| p == Path::new("/dev/null"));
    let sink = match &opts.log {
        Some(path) => Sink::file(path).map_err(|e| Failure::new(CMD, path.display(), e))?,
        None if report && stderr_is_null => Sink::syslog(),
        None => Sink::Stderr,
    };
    server_log::init(sink, opts.debug);
    let say = |line: &str| {
        if report {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    // In the background the error goes to the command that started the server, and to the log;
    // in the foreground it is printed once, on the way out.
    let fail = |f: Failure| {
        if let Some(m) = &f.msg {
            if report {
                say(&format!("error: {m}"));
            }
            if report || opts.log.is_some() {
                log::error!("{m}");
            }
        }
        f
    };
    let signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let mut signals = signals.map_err(|e| fail(Failure::plain(CMD, format!("signal handlers: {e}"))))?;
    if opts.direct && !opts.read_only {
        // Before the image's recovery folds the lanes of files a previous server's clients
        // appended to: none of them may store there any more.
        udax_fuse::retire_previous(&a.image).map_err(|e| fail(Failure::new(CMD, a.image.display(), e)))?;
    }
    let open = if opts.read_only { open_image_read_only } else { open_image };
    let fs = open(CMD, &a.image).map_err(fail)?;
    let keep = fs.clone();
    // A full host ends the session: unmounted lazily (files still open there would make a
    // plain unmount fail), the session ends when the last is closed, and the image is synced.
    let dir = a.dir.clone();
    let stop = Box::new(move || {
        let _ = udax_fuse::detach(&dir, true);
    });
    let session = match udax_fuse::session(fs, &a.dir, opts, stop) {
        Ok(s) => s,
        Err(e) => {
            let _ = close_image(CMD, &a.image, keep);
            return Err(fail(Failure::new(CMD, a.dir.display(), e)));
        }
    };
    // Commands that only read get snapshots of the mounted image (`udax_fuse::snapshot`).
    let snapshots = udax_fuse::snapshot::Server::start(keep.clone(), &a.image, &a.dir)
        .inspect_err(|e| log::warn!("no snapshots for read-only commands on the mounted image: {e}"))
        .ok();
    let handle = signals.handle();
    let dir = a.dir.clone();
    // A signal unmounts; on a busy mount it says so and keeps listening, and the next one
    // unmounts if the mount is idle by then, or else detaches it lazily (umount -l): the
    // session then ends when the last file there is closed.
    let waiter = std::thread::spawn(move || {
        let mut asked = false;
        for _ in signals.forever() {
            match udax_fuse::detach(&dir, false) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && asked => {
                    let _ = udax_fuse::detach(&dir, true);
                    log::warn!("{}: still busy; detached lazily, ends when the last user leaves", dir.display());
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    log::warn!(
                        "{}: busy, not unmounted (a process has a file open or its working directory \
                         there); signal again to unmount, lazily if it is still busy",
                        dir.display(),
                    );
                    asked = true;
                }
                Err(e) => log::error!("{}: cannot unmount: {e}", dir.display()),
            }
        }
    });
    say("ready");
    log::info!(
        "{} mounted on {} ({}; Ctrl-C or udax umount to unmount)",
        a.image.display(),
        a.dir.display(),
        if opts.read_only { "read-only" } else { "read-write" }
    );
    let served = match session.run() {
        // The kernel ends a connection this way when the file system goes while the server is
        // reading a request; once unmounted that is the session's normal end.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) && !is_udax_mount(&a.dir) => Ok(()),
        served => served,
    };
    handle.close();
    let _ = waiter.join();
    if served.is_err() {
        // The session failed while mounted: take the mount away with it.
        let _ = udax_fuse::detach(&a.dir, true);
    }
    if let Some(s) = snapshots {
        s.stop();
    }
    let closed = close_image(CMD, &a.image, keep);
    if let Err(e) = &served {
        log::error!("{}: serving failed: {e}", a.dir.display());
    }
    served.map_err(|e| Failure::new(CMD, a.dir.display(), e))?;
    match &closed {
        Ok(()) => log::info!("{} unmounted, {} synced", a.dir.display(), a.image.display()),
        Err(f) => {
            log::error!("{} unmounted; closing the image failed: {}", a.dir.display(), f.msg.as_deref().unwrap_or(""))
        }
    }
    closed
}

/// `udax umount DIR`: unmounts a udax mount, directly as root, else through fusermount3 (or
/// fusermount), which lets a user unmount what they mounted.
pub fn umount(a: &crate::UmountArgs) -> CliResult {
    const CMD: &str = "umount";
    let dir = std::fs::canonicalize(&a.dir).map_err(|e| {
        Failure::new(CMD, a.dir.display(), crate::common::strerror(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| Failure::plain(CMD, format!("/proc/self/mounts: {e}")))?;
    // Fields: source, mount point (spaces as \040), type, ...; the last mount there is the one seen.
    let here = mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 2 && f[1].replace("\\040", " ") == dir.to_string_lossy())
            .then(|| (f[0].to_string(), f[2].to_string()))
    });
    match here {
        None => return Err(Failure::new(CMD, a.dir.display(), "not mounted")),
        Some((source, kind))
            if !(kind.starts_with("fuse")
                && (source == "udax" || crate::admin::holds_udax(Path::new(&source.replace("\\040", " "))))) =>
        {
            return Err(Failure::new(
                CMD,
                a.dir.display(),
                format!("not a udax mount (a {kind} mount of {source}); use umount(8)"),
            ));
        }
        Some(_) => {}
    }
    udax_fuse::detach(&dir, a.lazy).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => "target is busy: a process has a file open or its working directory there \
                                  (udax umount -l detaches it lazily)"
                .to_string(),
            Some(n) => crate::common::strerror(n),
            None => e.to_string(),
        };
        Failure::new(CMD, a.dir.display(), why)
    })
}
