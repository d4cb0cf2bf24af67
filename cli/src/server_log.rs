//! The mount server's log: start, unmount, errors and, with `-o debug`, every request.
//!
//! One sink per server: its standard error in the foreground, a file with `-o log=FILE`, or
//! syslog (/dev/log, facility daemon) for a server in the background; with none of those the
//! log goes nowhere, as a daemon's standard error does. The FUSE layer logs through the same
//! `log` facade.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use udax::Timespec;

use crate::time::rfc3339;

/// Where the lines go.
#[derive(Debug)]
pub enum Sink {
    Stderr,
    File(std::fs::File),
    Syslog(UnixDatagram),
    Nowhere,
}

impl Sink {
    /// Appends to `path`, creating it (mode 0640).
    pub fn file(path: &Path) -> std::io::Result<Sink> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
        Ok(Sink::File(f))
    }

    /// Syslog when this machine has one listening, else nowhere.
    pub fn syslog() -> Sink {
        let sock = UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|()| s));
        sock.map_or(Sink::Nowhere, Sink::Syslog)
    }
}

#[derive(Debug)]
struct Logger {
    sink: Mutex<Sink>,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug | log::Level::Trace => "debug: ",
        };
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // A log that cannot be written is dropped: serving goes on.
        let _ = match &mut *sink {
            Sink::Stderr => writeln!(std::io::stderr(), "udax mount: {level}{}", r.args()),
            Sink::File(f) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let now = Timespec { sec: now.as_secs() as i64, nsec: now.subsec_nanos() };
                writeln!(f, "{} udax mount[{}]: {level}{}", rfc3339(now), std::process::id(), r.args())
            }
            Sink::Syslog(s) => {
                // <facility daemon (3) * 8 + severity>, as syslog(3) sends it.
                let severity = match r.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                let line = format!("<{}>udax[{}]: {level}{}", 24 + severity, std::process::id(), r.args());
                s.send(line.as_bytes()).map(drop)
            }
            Sink::Nowhere => Ok(()),
        };
    }

    fn flush(&self) {}
}

/// Sends the process's log to `sink`: start, unmount and errors, and every request when `debug`.
pub fn init(sink: Sink, debug: bool) {
    let level = if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    // One logger for the life of the process.
    if log::set_logger(Box::leak(Box::new(Logger { sink: Mutex::new(sink), level }))).is_ok() {
        log::set_max_level(level);
    }
}
