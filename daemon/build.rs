//! Generates the rate-limit scripts: each `lua/rl/NAME.lua` with the shared
//! `lua/rl/preamble.lua` put right after its header comment, written to
//! `$OUT_DIR/rl_NAME.lua`, which the daemon sends. The same text is committed as
//! `lua/rl_NAME.lua` for callers outside the daemon; the test
//! `ratelimit::scripts::tests::generated_scripts_in_lua_are_current` keeps it so.

use std::path::Path;

/// The scripts that start with the preamble.
const WITH_PREAMBLE: [&str; 7] = [
    "fixed_window",
    "sliding_log",
    "sliding_counter",
    "token_bucket",
    "gcra",
    "concurrency",
    "release",
];

fn main() {
    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua/rl");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let preamble_path = lua.join("preamble.lua");
    println!("cargo::rerun-if-changed={}", preamble_path.display());
    let preamble = std::fs::read_to_string(&preamble_path).expect("lua/rl/preamble.lua");
    for name in WITH_PREAMBLE {
        let path = lua.join(format!("{name}.lua"));
        println!("cargo::rerun-if-changed={}", path.display());
        let body = std::fs::read_to_string(&path).expect("a lua/rl script");
        let script = generate(name, &preamble, &body);
        std::fs::write(Path::new(&out).join(format!("rl_{name}.lua")), script)
            .expect("writing to OUT_DIR");
    }
}

/// The header (leading `--` lines) of `body`, a note, the preamble, the rest.
fn generate(name: &str, preamble: &str, body: &str) -> String {
    let header_len: usize = body
        .split_inclusive('\n')
        .take_while(|l| l.starts_with("--"))
        .map(str::len)
        .sum();
    let (header, rest) = body.split_at(header_len);
    format!(
        "{header}--\n-- Generated from lua/rl/{name}.lua and lua/rl/preamble.lua by daemon/build.rs:\n-- edit those, then `SHOAL_WRITE_LUA=1 cargo test -p shoald generated_scripts`.\n\n{preamble}\n-- ---- lua/rl/{name}.lua ----\n{rest}"
    )
}
