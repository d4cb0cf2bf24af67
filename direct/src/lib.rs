//! udax-direct: a direct client of a udax mount (DESIGN.md "Direct access"). The mount server
//! keeps the metadata; a client asks it for a file's map once and then copies the file's bytes
//! straight out of the image, checking the file's map generation before and after each copy.
//!
//! Rust programs and tests use it as it is; the preload library (`udax-preload`,
//! `libudax_preload.so`) puts it under programs that know nothing of it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod client;
#[allow(unsafe_code)]
mod sys;

pub use client::{forked, CachedMap, MapPiece, Mount, Served};
pub use sys::{identity, Identity};
