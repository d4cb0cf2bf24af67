//! Plumbing shared by the subcommands: failures and exit codes, error messages (as text, and as
//! the `--json` error object), stdout writes that survive a closed pipe, progress bars, and the
//! formatting of modes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use udax::mode;
use udax::{Error, Fs};

/// Why a subcommand stopped: the exit status, the message for stderr, and the error `--json`
/// reports.
#[derive(Debug)]
pub struct Failure {
    /// "udax CMD: WHAT: message" for stderr; None when it was printed already, or when there
    /// is nothing to add (the command said it all).
    pub msg: Option<String>,
    pub code: u8,
    /// What `--json` prints as `{"error": …}`; None when there is no error to report: the
    /// command's own output says why it ends so (fsck findings, a closed stdout).
    pub error: Option<ErrorReport>,
}

/// An error as `--json` reports it: the errno a kernel file system would give, and the message
/// stderr shows without its "udax CMD: " prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    pub errno: i32,
    pub message: String,
}

pub type CliResult<T = ()> = Result<T, Failure>;

impl Failure {
    /// "udax CMD: WHAT: message", exit status 1, errno EINVAL until [`Failure::errno`] says
    /// otherwise.
    pub fn new(cmd: &str, what: impl std::fmt::Display, msg: impl std::fmt::Display) -> Failure {
        Failure::plain(cmd, format!("{what}: {msg}"))
    }

    /// "udax CMD: message", exit status 1, errno EINVAL until [`Failure::errno`] says otherwise.
    pub fn plain(cmd: &str, msg: impl std::fmt::Display) -> Failure {
        let message = msg.to_string();
        Failure {
            msg: Some(format!("udax {cmd}: {message}")),
            code: 1,
            error: Some(ErrorReport { errno: libc::EINVAL, message }),
        }
    }

    /// A udax error about `what` (an image path or a path inside the image), with its errno.
    pub fn fs(cmd: &str, what: impl AsRef<Path>, e: &Error) -> Failure {
        Failure::new(cmd, what.as_ref().display(), describe(e)).errno(e.errno())
    }

    /// A host I/O error about `what`: its strerror text and errno.
    pub fn io(cmd: &str, what: impl AsRef<Path>, e: &std::io::Error) -> Failure {
        let (msg, errno) = match e.raw_os_error() {
            Some(n) => (strerror(n), n),
            None => (strip_os_error(&e.to_string()), libc::EIO),
        };
        Failure::new(cmd, what.as_ref().display(), msg).errno(errno)
    }

    /// The status a finished subcommand leaves, having printed nothing more.
    pub fn status(code: u8) -> Failure {
        Failure { msg: None, code, error: None }
    }

    /// The same failure with errno `n` in its error report.
    pub fn errno(mut self, n: i32) -> Failure {
        if let Some(e) = &mut self.error {
            e.errno = n;
        }
        self
    }

    /// The same failure with exit status `code`.
    pub fn code(self, code: u8) -> Failure {
        Failure { code, ..self }
    }

    /// Prints the message on stderr now, keeping the status and the error report (for commands
    /// that go on to their next operand).
    pub fn said(mut self) -> Failure {
        if let Some(m) = self.msg.take() {
            let _ = writeln!(std::io::stderr(), "{m}");
        }
        self
    }

    /// Prints the message on stderr and, with `json`, the error object on stdout; the exit
    /// status.
    pub fn exit(self, json: bool) -> ExitCode {
        let code = self.code;
        let f = self.said();
        if let (true, Some(e)) = (json, &f.error) {
            let _ = writeln!(std::io::stdout(), "{:#}", crate::json::error(e));
        }
        ExitCode::from(code)
    }
}

/// strerror(3) text for an errno, without std's " (os error N)" tail.
/// Whether `dir` is the mount point of a udax mount, also one whose server is gone (its root then
/// fails every call with ENOTCONN, so only its parent is resolved).
pub fn is_udax_mount(dir: &Path) -> bool {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return false };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let Ok(dir) = std::fs::canonicalize(parent).map(|p| p.join(name)) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else { return false };
        right.split(' ').next() == Some("fuse.udax") && left.split(' ').nth(4).map(Path::new) == Some(dir.as_path())
    })
}

pub fn strerror(errno: i32) -> String {
    strip_os_error(&std::io::Error::from_raw_os_error(errno).to_string())
}

fn strip_os_error(s: &str) -> String {
    let mut out = s.to_string();
    while let Some(i) = out.find(" (os error ") {
        match out[i..].find(')') {
            Some(j) => out.replace_range(i..i + j + 1, ""),
            None => break,
        }
    }
    out
}

/// A message for a udax error: the kernel's wording for plain errno cases ("File name too
/// long"), udax's own for those that carry detail (corruption, not an image, in use).
pub fn describe(e: &Error) -> String {
    match e {
        Error::NotFound
        | Error::Exists
        | Error::NoSpace
        | Error::NameTooLong
        | Error::NotDir
        | Error::IsDir
        | Error::NotEmpty
        | Error::TooManyLinks
        | Error::Loop
        | Error::FileTooBig => strerror(e.errno()),
        Error::NoInodes => "No space left on device (no free inodes)".into(),
        Error::Busy => "image is in use by another process (it holds the image lock); \
                        close it there first"
            .into(),
        Error::InUse { who, mount: None } => {
            format!("image is in use by {who}, which holds the image lock; close it there first")
        }
        Error::InUse { who, mount: Some(dir) } => format!(
            "image is mounted on {} by {who}; unmount it first (commands that only read work on it meanwhile)",
            dir.display()
        ),
        other => strip_os_error(&other.to_string()),
    }
}

/// A message for a failure to open an image: an OS error is reported as its strerror text
/// alone (the image path is already the prefix).
pub fn describe_open(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(n) => strerror(n),
            None => strip_os_error(&source.to_string()),
        },
        other => describe(other),
    }
}

/// Opens and mounts an image (replaying its journal), with failures worded for `cmd`.
pub fn open_image(cmd: &str, image: &Path) -> CliResult<Fs> {
    Fs::open_image(image).map_err(|e| image_failure(cmd, image, &e))
}

/// Opens and mounts an image read-only: no write access needed (a 0444 file, a read-only
/// mount), nothing written (a journal replay stays in memory), other readers welcome.
pub fn open_image_read_only(cmd: &str, image: &Path) -> CliResult<Fs> {
    Fs::open_image_read_only(image).map_err(|e| image_failure(cmd, image, &e))
}

/// [`open_image_read_only`] for commands that only read; an image a udax mount holds is read
/// from a snapshot the mount takes (`udax_fuse::snapshot`), which is said on standard error,
/// and the mount point comes back with it.
pub fn open_for_reading(cmd: &str, image: &Path) -> CliResult<(Fs, Option<PathBuf>)> {
    let e = match Fs::open_image_read_only(image) {
        Ok(fs) => return Ok((fs, None)),
        Err(e @ (Error::InUse { .. } | Error::Busy)) => e,
        Err(e) => return Err(image_failure(cmd, image, &e)),
    };
    match udax_fuse::snapshot::request(image) {
        None => Err(image_failure(cmd, image, &e)),
        Some(Err(why)) => Err(Failure::new(cmd, image.display(), format!("{}; {why}", describe(&e))).errno(e.errno())),
        Some(Ok((copy, dir))) => {
            eprintln!("udax {cmd}: {} is mounted on {}: reading a snapshot taken now", image.display(), dir.display());
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
            let fs = Fs::open_image_read_only(path).map_err(|e| image_failure(cmd, image, &e))?;
            Ok((fs, Some(dir)))
        }
    }
}

/// Why `image` did not open; a directory given as the image is most likely a path inside the
/// image given first, so the usage is said.
fn image_failure(cmd: &str, image: &Path, e: &Error) -> Failure {
    if image.is_dir() {
        let why = format!("is a directory, not a udax image (the image comes first: udax {cmd} IMAGE PATH...)");
        return Failure::new(cmd, image.display(), why).errno(libc::EISDIR);
    }
    Failure::new(cmd, image.display(), describe_open(e)).errno(e.errno())
}

/// Syncs and lets go of an image (msync for page-cache-backed files).
pub fn close_image(cmd: &str, image: &Path, fs: Fs) -> CliResult {
    fs.unmount().map(drop).map_err(|e| Failure::fs(cmd, image, &e))
}

/// Opens `image`, runs `f` on it, and closes it (syncing) whether or not `f` succeeded; the
/// first failure wins.
pub fn with_image<T>(cmd: &str, image: &Path, f: impl FnOnce(&Fs) -> CliResult<T>) -> CliResult<T> {
    let fs = open_image(cmd, image)?;
    let r = f(&fs);
    let c = close_image(cmd, image, fs);
    r.and_then(|v| c.map(|()| v))
}

/// [`with_image`] for commands that only read: the image is opened read-only.
pub fn with_image_read_only<T>(cmd: &str, image: &Path, f: impl FnOnce(&Fs) -> CliResult<T>) -> CliResult<T> {
    let (fs, _) = open_for_reading(cmd, image)?;
    let r = f(&fs);
    let c = close_image(cmd, image, fs);
    r.and_then(|v| c.map(|()| v))
}

/// Runs `f` for each item, printing each failure as it happens and going on (like rm or cat
/// with several operands); fails at the end if any did, with the first one's status and error
/// report.
pub fn each<T>(items: &[T], mut f: impl FnMut(&T) -> CliResult) -> CliResult {
    let mut status = Ok(());
    for it in items {
        if let Err(e) = f(it) {
            if e.msg.is_none() {
                return Err(e);
            }
            let e = e.said();
            status = status.and(Err(e));
        }
    }
    status
}

/// Writes to stdout: a closed pipe (`udax ls img | head`) ends the command quietly.
pub trait OutResult<T> {
    fn out(self) -> CliResult<T>;
}

impl<T> OutResult<T> for std::io::Result<T> {
    fn out(self) -> CliResult<T> {
        self.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::status(0)
            } else {
                Failure::io("write", "stdout", &e)
            }
        })
    }
}

/// ls-style mode string: "drwxr-xr-x", "-rwsr-x--T".
pub fn mode_string(m: u32) -> String {
    let t = match m & mode::S_IFMT {
        mode::S_IFDIR => 'd',
        mode::S_IFLNK => 'l',
        mode::S_IFIFO => 'p',
        mode::S_IFSOCK => 's',
        mode::S_IFCHR => 'c',
        mode::S_IFBLK => 'b',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (m & x != 0, m & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(exec(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(exec(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(exec(0o001, 0o1000, 't', 'T'));
    s
}

/// stat(1)'s words for a file type.
pub fn type_name(m: u32, size: u64) -> &'static str {
    match m & mode::S_IFMT {
        mode::S_IFDIR => "directory",
        mode::S_IFLNK => "symbolic link",
        mode::S_IFIFO => "fifo",
        mode::S_IFSOCK => "socket",
        mode::S_IFCHR => "character special file",
        mode::S_IFBLK => "block special file",
        _ if size == 0 => "regular empty file",
        _ => "regular file",
    }
}

/// Short machine-friendly type names for JSON.
pub fn type_key(m: u32) -> &'static str {
    match m & mode::S_IFMT {
        mode::S_IFDIR => "directory",
        mode::S_IFLNK => "symlink",
        mode::S_IFIFO => "fifo",
        mode::S_IFSOCK => "socket",
        mode::S_IFCHR => "char_device",
        mode::S_IFBLK => "block_device",
        _ => "regular",
    }
}

/// Whether stderr is a terminal (progress bars only then).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar on stderr, or nothing when `show` is false.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `bytes`: the counts are bytes (shown as such) rather than items.
    pub fn new(show: bool, total: u64, bytes: bool, what: &str) -> Progress {
        if !show {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total);
        let template = if bytes {
            "{prefix} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}"
        } else {
            "{prefix} [{wide_bar}] {pos}/{len} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    pub fn set(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn message(&self, m: String) {
        if let Some(b) = &self.bar {
            b.set_message(m);
        }
    }

    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// Parses an octal permission argument ("755", "0644", "4755").
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o7777 && !t.is_empty() => Ok(m),
        _ => Err(format!("invalid mode {s:?}: expected octal permission bits such as 755 or 0644")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string(mode::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(mode::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(mode::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(mode::S_IFREG | 0o4644), "-rwSr--r--");
        assert_eq!(mode_string(mode::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(mode::S_IFDIR | 0o1770), "drwxrwx--T");
        assert_eq!(mode_string(mode::S_IFREG | 0o2750), "-rwxr-s---");
        assert_eq!(mode_string(mode::S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(mode::S_IFIFO | 0o600), "prw-------");
    }

    #[test]
    fn errors() {
        assert_eq!(describe(&Error::NameTooLong), "File name too long");
        assert_eq!(strip_os_error("x: No such file (os error 2)"), "x: No such file");
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("888").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("").is_err());
    }
}
