//! Damaged images never panic, hang or allocate without bound: the input's first byte picks a
//! template image (1 KiB or 4 KiB blocks), the rest decodes into damage to it
//! (`udax::robust::Mutation::decode_list`), and the damaged image goes through mount, fsck, a
//! walk, changes, remount and fsck (`udax::robust::exercise`). An image that mounted clean must
//! still mount clean after the changes.
//!
//! `cargo +nightly fuzz run image -- -timeout=10 -rss_limit_mb=2048`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use udax::robust::{exercise, Mutation, Template};

fn templates() -> &'static [Template; 2] {
    static TEMPLATES: OnceLock<[Template; 2]> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        [Template::build(1024).expect("1 KiB template"), Template::build(4096).expect("4 KiB template")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let template = &templates()[usize::from(pick & 1)];
    let image = template.damaged(&Mutation::decode_list(rest));
    if let Some(violation) = exercise(&image).violation() {
        panic!("{violation}");
    }
});
