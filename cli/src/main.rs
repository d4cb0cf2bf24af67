//! `udax`: the command-line front end of the udax file system.
//!
//! Thin by design: each subcommand parses its arguments, calls `udax::Fs`, prints, and turns
//! errors into messages and exit statuses. No file-system logic lives here.
#![deny(unsafe_code)]

mod admin;
mod bench;
mod common;
mod copy;
#[cfg(feature = "crash-test")]
mod crash;
mod demo;
mod extents;
mod json;
mod manual;
mod mount;
mod names;
mod run;
mod server_log;
mod size;
mod stdio;
mod stress;
mod time;
mod usage;
mod xio;

use bench::BenchArgs;
#[cfg(feature = "crash-test")]
use crash::CrashtestArgs;
use stress::StressArgs;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use common::{parse_mode, CliResult, ErrorReport};
use size::parse_size;

const ABOUT: &str = "udax: a crash-consistent DAX file system for persistent and CXL memory, in user space";

const LONG_ABOUT: &str = "\
udax: a crash-consistent DAX file system for persistent and CXL memory, in user space.

udax keeps a whole file system in one memory-mapped image: a file (ideally on /dev/shm or a
DAX-mounted pmem file system) or a device-dax character device such as /dev/dax0.0. Reads and
writes copy straight between your buffer and the mapped medium; every metadata change is one
journal commit, atomic and durable when the call returns.

Every subcommand that works on an image takes the image path first. The image is locked while
a command runs, so two processes never mount it at once.";

const AFTER_HELP: &str = "\
Getting started:
  udax demo                                  a guided tour on a scratch image
  udax mkfs /dev/shm/pm.img --size 1G        make a 1 GiB file system
  udax put /dev/shm/pm.img ./src /           copy a host tree in (like cp -a)
  udax ls /dev/shm/pm.img / -l               list it
  udax fsck /dev/shm/pm.img                  check every invariant

Exit status: 0 on success, 1 on an error (message on stderr), 2 on bad usage;
fsck as e2fsck: 1 problems mended, 4 problems left, 8 operational error, 16 bad usage.

--json (on every command that reports something) prints one JSON object on stdout; a
failure prints {\"error\": {\"errno\": N, \"message\": \"...\"}} there instead (and its
message on stderr, with the same exit status).";

#[derive(Debug, Parser)]
#[command(name = "udax", version, propagate_version = true, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a udax file system in an image file or device-dax device
    #[command(
        long_about = "Create a udax file system. The image file is created (or resized) to --size\n\
                      and its space reserved on the host file system (fallocate), as a memory\n\
                      device's is: a host with no room fails here, not at a later store. With\n\
                      --sparse the image takes space as it fills; a full host then fails\n\
                      operations with ENOSPC. A device-dax device keeps its own size. An\n\
                      existing udax image is only overwritten with --force.",
        after_help = "Examples:\n  udax mkfs /dev/shm/pm.img --size 1G\n  \
                      udax mkfs big.img --size 1T --sparse\n  \
                      udax mkfs img --size 0x4000000 --block-size 1024 --inodes 100000 --label scratch\n  \
                      udax mkfs /dev/dax0.0 --force\n  \
                      udax mkfs img --size 64M --json | jq .uuid"
    )]
    Mkfs(MkfsArgs),

    /// Check an image's consistency (replays the journal first)
    #[command(
        long_about = "Check every invariant of a udax image: inode and extent decoding, block\n\
                      ownership, free-space counts, link counts, directory structure and\n\
                      connectivity. Every problem is listed, not only the first. Without a repair\n\
                      flag (or with -n) the image is opened read-only: its journal is replayed in\n\
                      memory, as a mount would, and nothing is written.\n\n\
                      -y, -p or --repair mend what mount tolerates: inodes that cannot be decoded\n\
                      are cleared, directory units holding no usable entry zeroed, entries naming\n\
                      free inodes removed, entry types corrected, written blocks past EOF freed,\n\
                      symlinks with no valid target removed, files and directories no directory\n\
                      names linked into /lost+found as #<inode>, and link counts set to what the\n\
                      entries say. Each repair is one journaled transaction, so a crash during\n\
                      repair is safe. Damage mount refuses (a bad superblock or journal, a block\n\
                      owned twice, a directory cycle) is reported, not mended.",
        after_help = "Exit status (as e2fsck):\n  \
                      0   no problems found\n  \
                      1   problems found and all mended\n  \
                      4   problems left uncorrected (always so with -n when there are any)\n  \
                      8   operational error: the image cannot be opened or checked\n  \
                      16  usage error (e.g. -n with -y)\n\n\
                      Examples:\n  udax fsck /dev/shm/pm.img\n  udax fsck -y /dev/shm/pm.img\n  \
                      udax fsck img --json | jq .report.findings"
    )]
    Fsck(FsckArgs),

    /// Show an image's geometry, device mapping, space use and durability
    #[command(after_help = "Examples:\n  udax info /dev/shm/pm.img\n  udax info img --json")]
    Info(InfoArgs),

    /// List a directory (or show one file) inside the image
    #[command(after_help = "Examples:\n  udax ls img\n  udax ls img /etc -la\n  \
                      udax ls img /etc --json | jq '.directories[].entries[].name'")]
    Ls(LsArgs),

    /// Copy a host file or tree into the image, like cp -a
    #[command(
        long_about = "Copy a host file or directory tree into the image, keeping permission bits\n\
                      (setuid/setgid/sticky included), owners, access and modification times,\n\
                      symbolic links (not followed), hard links, FIFOs, device nodes and extended\n\
                      attributes (user., trusted., security.; others are reported and skipped).\n\
                      If PATH is an existing directory the copy goes inside it under the source's\n\
                      name; otherwise PATH becomes the copy. HOST_PATH - reads stdin into the\n\
                      regular file PATH, as cat > PATH would: made with mode 0644 if missing, else\n\
                      replaced.",
        after_help = "Examples:\n  udax put img ./project /             makes /project\n  \
                      udax put img notes.txt /docs/n.txt   copies to that name\n  \
                      tar c src | udax put img - /src.tar  stdin into /src.tar (created or replaced)"
    )]
    Put(PutArgs),

    /// Copy a file or tree out of the image to the host, like cp -a
    #[command(
        long_about = "Copy a file or directory tree from the image to the host, keeping permission\n\
                      bits, access and modification times, symbolic links, hard links and extended\n\
                      attributes (owners too when run as root). If HOST_PATH is an existing directory the copy goes\n\
                      inside it under the source's name; otherwise HOST_PATH becomes the copy.\n\
                      FIFOs, sockets and device nodes are skipped with a warning.\n\
                      HOST_PATH - writes the regular file PATH (a final symbolic link followed) to\n\
                      stdout.",
        after_help = "Examples:\n  udax get img /project ./restore\n  udax get img /docs/n.txt .\n  \
                      udax get img /src.tar - | tar x      the file's bytes to stdout"
    )]
    Get(GetArgs),

    /// Write files' contents to stdout
    #[command(after_help = "Example:\n  udax cat img /docs/n.txt /etc/motd")]
    Cat(CatArgs),

    /// Show a file's attributes, like stat(1)
    #[command(after_help = "Examples:\n  udax stat img /docs/n.txt\n  udax stat img /link -L --json")]
    Stat(StatArgs),

    /// Create directories
    #[command(after_help = "Examples:\n  udax mkdir img /a /b\n  udax mkdir img -p /x/y/z -m 700")]
    Mkdir(MkdirArgs),

    /// Create files, or set their access and modification times to now
    #[command(after_help = "Examples:\n  udax touch img /a /b\n  udax touch img -c /maybe   (never creates)")]
    Touch(TouchArgs),

    /// Change permission bits (octal)
    #[command(after_help = "Examples:\n  udax chmod img 644 /a /b\n  udax chmod img 1777 /tmp")]
    Chmod(ChmodArgs),

    /// Change owner and group (names from this host's /etc/passwd and /etc/group, or numbers)
    #[command(
        after_help = "Examples:\n  udax chown img alice /a\n  udax chown img 1000:100 /a /b\n  udax chown img :staff /a"
    )]
    Chown(ChownArgs),

    /// Space and inodes used and free, as df shows a mounted file system
    #[command(after_help = "Examples:\n  udax df img\n  udax df -h img other.img\n  udax df -i img\n  \
                      udax df img --json | jq '.images[0].bytes_free'")]
    Df(DfArgs),

    /// Space files and directories take, as du counts it (hard links once)
    #[command(after_help = "Examples:\n  udax du img /src\n  udax du -sh img /src /docs\n  \
                      udax du -s img /src --json | jq '.entries[0].allocated_bytes'")]
    Du(DuArgs),

    /// Remove files, or trees with -r
    #[command(after_help = "Examples:\n  udax rm img /docs/n.txt\n  udax rm img -rf /project")]
    Rm(RmArgs),

    /// Rename or move a file or directory (atomically)
    #[command(after_help = "Examples:\n  udax mv img /a.txt /b.txt     rename (replaces /b.txt)\n  \
                            udax mv img /a.txt /docs      move into the directory /docs")]
    Mv(MvArgs),

    /// Make a hard link, or a symbolic link with -s
    #[command(after_help = "Examples:\n  udax ln img /data /data.bak\n  udax ln img -s ../data /docs/link")]
    Ln(LnArgs),

    /// Show a file's extent map (written, unwritten and holes), like xfs_bmap -v
    #[command(
        long_about = "Show where a file's data lives, like xfs_bmap -v: one row per extent, with\n\
                      the holes between extents (and up to EOF) as rows of their own.\n\
                      FILE-OFFSET and BLOCK-RANGE are inclusive ranges of 512-byte units (file\n\
                      offset and device offset), TOTAL the same count, LENGTH the bytes; STATE is\n\
                      written, or unwritten for preallocated blocks that read as zeros.",
        after_help = "Examples:\n  udax extents img /data\n  udax extents img /data --json | jq '.extents[].state'\n\n\
                      --json prints {\"path\", \"size\", \"extents\": [{\"logical\", \"physical\", \"length\",\n\
                      \"state\"}, ...]}, offsets and lengths in bytes; holes are not listed."
    )]
    Extents(ExtentsArgs),

    /// Run xfs_io-style commands on one open file
    #[command(
        long_about = "Open PATH inside the image once and run each -c command on it in order, in\n\
                      the manner of xfs_io. Offsets and lengths take K/M/G suffixes and 0x hex.\n\
                      Without -c, each line of stdin runs as it is read (a prompt on a terminal), as in xfs_io.",
        after_help = xio::AFTER_HELP
    )]
    Io(IoArgs),

    /// A guided tour: make a scratch image, use it, and explain what happens
    #[command(
        long_about = "Make a 64 MiB scratch image (in /dev/shm when it is writable), then walk\n\
                      through what udax does: mkfs, files and directories, direct reads and\n\
                      writes, the flushes and fences behind each commit, sparse files, atomic\n\
                      rename, and surviving an unmount. The image is removed unless --keep.",
        after_help = "Examples:\n  udax demo\n  udax demo --dir /mnt/pmem --keep"
    )]
    Demo(DemoArgs),

    /// Serve an image to every program through FUSE
    #[command(
        long_about = "Mount a udax image on a directory through FUSE (no libfuse needed). Every\n\
                      program can then use it; each write that returns is durable in the image (no\n\
                      writeback caching). Data goes through the kernel's page cache, so the mount is\n\
                      correct but not DAX: the library gives direct access. Without -f the command\n\
                      returns once the mount is ready and a server process keeps it; SIGINT, SIGTERM\n\
                      or `umount DIR` unmount cleanly, with everything durable.\n\n\
                      Options (-o, comma-separated): ro, rw, allow_other (other users may enter),\n\
                      default_permissions (the kernel checks permissions; on by default),\n\
                      no_default_permissions, nonempty (mount over a non-empty directory),\n\
                      suid and dev (honour set-user-ID bits and device nodes on the image; off by\n\
                      default, as nosuid,nodev, since an image may come from anyone),\n\
                      threads=N (request threads, default one per CPU up to 8), poll=US (after\n\
                      each request, poll for the next one for US microseconds before sleeping: less\n\
                      latency per request, a CPU kept busy while requests come), max_read=N,\n\
                      nodirect (publish no file maps for direct clients; read-write mounts publish\n\
                      them in /dev/shm/udax-direct.DEV.INO, open to whoever may open the image),\n\
                      debug (log every request), log=FILE (append the log to FILE).\n\n\
                      The server logs its start, unmount and errors: to standard error with -f, to\n\
                      FILE with log=FILE, else to syslog. A user who is not root mounts through\n\
                      fusermount3 (the fuse3 package) and unmounts with udax umount or fusermount3 -u.",
        after_help = "Examples:\n  udax mount /dev/shm/pm.img /mnt/pm\n  \
                      udax mount img /mnt/pm -o ro,allow_other\n  \
                      udax mount img /mnt/pm -f            (foreground; Ctrl-C unmounts)\n  \
                      udax mount img /mnt/pm -o debug,log=/tmp/pm.log\n  \
                      umount /mnt/pm"
    )]
    Mount(MountArgs),

    /// Unmount a udax mount (as umount(8) would; fusermount3 for a user who is not root)
    #[command(after_help = "Exit status: 0 unmounted, 1 not a udax mount, busy or refused.\n\n\
                      Examples:\n  udax umount /mnt/pm\n  \
                      udax umount -l /mnt/pm      (detach now; finish when no longer busy)")]
    Umount(UmountArgs),

    /// Run a program whose reads of files on udax mounts go straight to the image's memory
    #[command(
        long_about = "Run CMD with the preload library (libudax_preload.so) under it. Its reads of\n\
                      files on udax mounts (read, pread, readv, preadv and their 64-bit and fortified\n\
                      forms) are served straight from the image's memory, as the library serves its\n\
                      own; opens, writes and every other call go through the mount as before, so the\n\
                      kernel's permission checks and the server's journal still apply. Only a process\n\
                      that may open the image itself read-write reads directly; others silently use\n\
                      the mount. Static binaries and raw system calls are not seen.\n\n\
                      UDAX_DIRECT_TRACE=1 prints each call served directly or passed on (stderr);\n\
                      UDAX_PRELOAD_LIB names the library when it is not beside udax.",
        after_help = "Exit status: CMD's; 126 or 127 when it cannot be run.\n\n\
                      Examples:\n  udax run /mnt/pm -- cat /mnt/pm/big.log\n  \
                      UDAX_DIRECT_TRACE=1 udax run /mnt/pm -- python3 load.py"
    )]
    Run(RunArgs),

    /// Explore crash states: recover every image a power cut could leave and judge it
    #[command(long_about = crash::LONG_ABOUT, after_help = crash::AFTER_HELP)]
    #[cfg(feature = "crash-test")]
    Crashtest(CrashtestArgs),

    /// Race threads over one file system's data, space, namespace and mappings, and check it
    #[command(long_about = stress::LONG_ABOUT, after_help = stress::AFTER_HELP)]
    Stress(StressArgs),

    /// Time common operations beside tmpfs and the raw memory floor
    #[command(long_about = bench::LONG_ABOUT, after_help = bench::AFTER_HELP)]
    Bench(BenchArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = manual::COMPLETIONS_HELP)]
    Completions(manual::CompletionsArgs),

    /// Write the manual pages: udax.8 and one page per subcommand (udax-mkfs.8, ...)
    #[command(after_help = manual::MAN_HELP)]
    Man(manual::ManArgs),
}

#[derive(Debug, Args)]
pub struct MkfsArgs {
    /// Image file or device-dax device
    pub image: PathBuf,
    /// Image size (K/M/G/T suffixes, decimals such as 1.5G, 0x hex); defaults to an existing file's size
    #[arg(short, long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Block size: 1024, 2048 or 4096
    #[arg(short, long, default_value_t = 4096, value_parser = parse_size)]
    pub block_size: u64,
    /// Number of inodes (default: one per 16 KiB)
    #[arg(short = 'N', long, value_parser = parse_size)]
    pub inodes: Option<u64>,
    /// Journal size (default: chosen by image size)
    #[arg(short = 'J', long, value_parser = parse_size)]
    pub journal_size: Option<u64>,
    /// Volume label (at most 31 bytes)
    #[arg(short = 'L', long, default_value = "", hide_default_value = true)]
    pub label: String,
    /// Overwrite an existing udax image
    #[arg(short, long)]
    pub force: bool,
    /// Do not reserve the image's space: it takes host space as it fills
    #[arg(long)]
    pub sparse: bool,
    /// Print the new image as one JSON object (info --json's, with "sparse")
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Mend what is found without asking (e2fsck's -y, and -p "preen"): each repair one
    /// journaled transaction
    #[arg(short = 'r', long, visible_short_aliases = ['p', 'y'], conflicts_with = "no_changes")]
    pub repair: bool,
    /// Only report: open the image read-only and answer no to every repair (the default; as
    /// e2fsck -n)
    #[arg(short = 'n')]
    #[allow(dead_code, reason = "only excludes --repair")]
    pub no_changes: bool,
    /// Force a full check (accepted for e2fsck's users; every check is full)
    #[arg(short = 'f')]
    #[allow(dead_code, reason = "every check is full")]
    pub force: bool,
    /// Print one JSON object: {"clean", "image", "report": {...}} (with --repair also "repairs"
    /// and "after")
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct LsArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Directories or files inside the image
    #[arg(default_value = "/")]
    pub paths: Vec<PathBuf>,
    /// Long listing: mode, links, owner, group, size, mtime (UTC), name
    #[arg(short = 'l')]
    pub long: bool,
    /// Do not hide names starting with a dot, and list . and ..
    #[arg(short = 'a')]
    pub all: bool,
    /// With -l, sizes in powers of 1024 (1.5K, 234M)
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// List directories' contents recursively
    #[arg(short = 'R')]
    pub recursive: bool,
    /// List directories themselves, not their contents
    #[arg(short = 'd')]
    pub directory: bool,
    /// One name per line (what udax ls always prints)
    #[arg(short = '1')]
    pub one: bool,
    /// Print one JSON object: {"files": [...], "directories": [{"path", "entries": [...]}]}, each
    /// entry a name with stat --json's attributes
    #[arg(long)]
    pub json: bool,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Host file or directory to copy in; - reads stdin into the file PATH
    pub host_path: PathBuf,
    /// Destination inside the image
    pub path: PathBuf,
    /// Print each path as it is copied
    #[arg(short, long)]
    pub verbose: bool,
    /// Print one JSON object: what was copied (files, directories, bytes)
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// File or directory inside the image
    pub path: PathBuf,
    /// Destination on the host; - writes the file's contents to stdout
    pub host_path: PathBuf,
    /// Print each path as it is copied
    #[arg(short, long)]
    pub verbose: bool,
    /// Print one JSON object: what was copied (files, directories, bytes)
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    pub path: PathBuf,
    /// Print one JSON object: the attributes, "type", and "target" for a symbolic link
    #[arg(long)]
    pub json: bool,
    /// Follow a final symbolic link
    #[arg(short = 'L', long)]
    pub dereference: bool,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Make parent directories as needed; no error if it exists
    #[arg(short, long)]
    pub parents: bool,
    /// Permission bits, octal (with -p, of every directory it creates)
    #[arg(short, long, default_value = "755", value_parser = parse_mode)]
    pub mode: u32,
}

#[derive(Debug, Args)]
pub struct TouchArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Do not create files that do not exist
    #[arg(short = 'c', long = "no-create")]
    pub no_create: bool,
}

#[derive(Debug, Args)]
pub struct ChmodArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Permission bits, octal (755, 0644, 4755)
    #[arg(value_parser = parse_mode)]
    pub mode: u32,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ChownArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// OWNER, OWNER:GROUP or :GROUP (names or numbers)
    pub owner: String,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct DfArgs {
    /// udax images
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Sizes in powers of 1024 (1.5K, 234M) instead of 1K blocks
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// Inodes instead of space
    #[arg(short = 'i', long)]
    pub inodes: bool,
    /// Print one JSON object: {"images": [{"image", "blocks_total", "bytes_free", ...}]}
    #[arg(long)]
    pub json: bool,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct DuArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Files or directories inside the image
    #[arg(default_value = "/")]
    pub paths: Vec<PathBuf>,
    /// Only a total for each argument
    #[arg(short = 's', long)]
    pub summarize: bool,
    /// Every file, not only directories
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Sizes in powers of 1024 (1.5K, 234M) instead of 1K blocks
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// Print one JSON object: {"image", "entries": [{"path", "allocated_bytes"}]}, the rows du
    /// prints
    #[arg(long)]
    pub json: bool,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Remove directories and their contents
    #[arg(short, short_alias = 'R', long)]
    pub recursive: bool,
    /// Ignore missing paths
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    pub src: PathBuf,
    /// New name, or an existing directory to move into
    pub dst: PathBuf,
}

#[derive(Debug, Args)]
pub struct LnArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Existing file (hard link) or any text (symbolic link)
    pub target: PathBuf,
    /// New link, or an existing directory to put it in
    pub link: PathBuf,
    /// Make a symbolic link
    #[arg(short, long)]
    pub symbolic: bool,
}

#[derive(Debug, Args)]
pub struct ExtentsArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// Regular file inside the image (a final symbolic link is followed)
    pub path: PathBuf,
    /// Print one JSON object: {"path", "size", "extents": [...]} (bytes; no holes)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IoArgs {
    /// Create PATH (mode 0644) if it does not exist
    #[arg(short = 'f')]
    pub create: bool,
    /// Open read-only
    #[arg(short = 'r')]
    pub read_only: bool,
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// File inside the image
    pub path: PathBuf,
    /// A command to run, e.g. "pwrite -S 0xab 0 64k" (repeatable; see "help")
    #[arg(short = 'c', value_name = "CMD", allow_hyphen_values = true)]
    pub commands: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The udax image (a file or a device-dax device)
    pub image: PathBuf,
    /// An empty directory to mount on
    pub dir: PathBuf,
    /// Stay in the foreground until unmounted
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Mount options, comma-separated (see above)
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the image is mounted
    pub dir: PathBuf,
    /// Lazy: detach the mount now and finish when it is no longer busy (umount -l)
    #[arg(short = 'l', long)]
    pub lazy: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The udax mount whose files the program reads directly
    pub mount: PathBuf,
    /// The program and its arguments (after `--`)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the scratch image (default /dev/shm, else the temp directory)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the image afterwards and print its path
    #[arg(long)]
    pub keep: bool,
}

fn run(cli: Cli) -> CliResult {
    match cli.cmd {
        Cmd::Mkfs(a) => admin::mkfs(&a),
        Cmd::Fsck(a) => admin::fsck(&a),
        Cmd::Info(a) => admin::info(&a),
        Cmd::Ls(a) => names::ls(&a),
        Cmd::Put(a) => copy::put(&a),
        Cmd::Get(a) => copy::get(&a),
        Cmd::Cat(a) => names::cat(&a),
        Cmd::Stat(a) => names::stat(&a),
        Cmd::Mkdir(a) => names::mkdir(&a),
        Cmd::Rm(a) => names::rm(&a),
        Cmd::Mv(a) => names::mv(&a),
        Cmd::Ln(a) => names::ln(&a),
        Cmd::Extents(a) => extents::run(&a),
        Cmd::Io(a) => xio::run(&a),
        Cmd::Demo(a) => demo::run(&a),
        #[cfg(feature = "crash-test")]
        Cmd::Crashtest(a) => crash::run(&a),
        Cmd::Mount(a) => mount::run(&a),
        Cmd::Umount(a) => mount::umount(&a),
        Cmd::Run(a) => run::run(&a),
        Cmd::Touch(a) => usage::touch(&a),
        Cmd::Chmod(a) => usage::chmod(&a),
        Cmd::Chown(a) => usage::chown(&a),
        Cmd::Df(a) => usage::df(&a),
        Cmd::Du(a) => usage::du(&a),
        Cmd::Stress(a) => stress::run(&a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Completions(a) => manual::completions(&a),
        Cmd::Man(a) => manual::man(&a),
    }
}

impl Cmd {
    /// Whether the command prints JSON (`--json`); its errors then do too.
    fn json(&self) -> bool {
        match self {
            Cmd::Mkfs(MkfsArgs { json, .. })
            | Cmd::Fsck(FsckArgs { json, .. })
            | Cmd::Info(InfoArgs { json, .. })
            | Cmd::Ls(LsArgs { json, .. })
            | Cmd::Put(PutArgs { json, .. })
            | Cmd::Get(GetArgs { json, .. })
            | Cmd::Stat(StatArgs { json, .. })
            | Cmd::Df(DfArgs { json, .. })
            | Cmd::Du(DuArgs { json, .. })
            | Cmd::Extents(ExtentsArgs { json, .. })
            | Cmd::Stress(StressArgs { json, .. })
            | Cmd::Bench(BenchArgs { json, .. }) => *json,
            #[cfg(feature = "crash-test")]
            Cmd::Crashtest(CrashtestArgs { json, .. }) => *json,
            Cmd::Cat(_)
            | Cmd::Mkdir(_)
            | Cmd::Touch(_)
            | Cmd::Chmod(_)
            | Cmd::Chown(_)
            | Cmd::Rm(_)
            | Cmd::Mv(_)
            | Cmd::Ln(_)
            | Cmd::Io(_)
            | Cmd::Demo(_)
            | Cmd::Mount(_)
            | Cmd::Umount(_)
            | Cmd::Run(_)
            | Cmd::Completions(_)
            | Cmd::Man(_) => false,
        }
    }
}

/// A command line clap refuses (or --help, --version): clap's message and status (bad usage of
/// fsck exits 16, as e2fsck's does); with `--json` among the arguments, the error object too.
fn refused(e: clap::Error) -> ExitCode {
    if e.use_stderr() && std::env::args_os().skip(1).any(|a| a == "--json") {
        // clap's message up to its usage lines, on one line.
        let text = e.to_string();
        let said = text.split("\n\n").next().unwrap_or_default();
        let message = said.strip_prefix("error: ").unwrap_or(said).split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(std::io::stdout(), "{:#}", json::error(&ErrorReport { errno: libc::EINVAL, message }));
    }
    let _ = e.print();
    let cmd = std::env::args_os().skip(1).find(|a| !a.to_string_lossy().starts_with('-'));
    match e.exit_code() {
        0 => ExitCode::SUCCESS,
        _ if cmd.is_some_and(|c| c == "fsck") => ExitCode::from(admin::FSCK_USAGE),
        code => ExitCode::from(u8::try_from(code).unwrap_or(2)),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return refused(e),
    };
    let json = cli.cmd.json();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
