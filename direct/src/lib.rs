//! udax-direct: direct access to a udax mount's memory for processes that are not linked to the
//! library (DESIGN.md "Direct access"). The mount server keeps the metadata; a client asks it
//! for a file's map once and then copies the file's bytes straight out of the image, checking
//! the file's map generation before and after each copy.
//!
//! As an rlib it is the client for Rust programs and tests ([`Mount`]); as a cdylib it becomes
//! the preload library that `udax run` puts under unmodified programs.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod client;
#[allow(unsafe_code)]
mod sys;

pub use client::{CachedMap, Mount, Served};
