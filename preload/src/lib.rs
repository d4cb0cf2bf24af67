//! `libudax_preload.so`: loaded into a program with `LD_PRELOAD` (`udax run MOUNT -- CMD`), it
//! serves the program's reads of files on udax mounts straight from the image's memory, as the
//! library's own calls are served, while the mount server keeps the metadata (DESIGN.md
//! "Direct access"). What it cannot serve directly goes to libc unchanged.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod entry;
mod fds;
mod maps;
#[allow(unsafe_code)]
mod mmap;
mod once;
mod serve;
#[allow(unsafe_code)]
mod sys;
#[allow(unsafe_code)]
mod syscall;
