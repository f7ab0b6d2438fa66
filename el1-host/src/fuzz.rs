//! The case count of the host's proptests, most of them fuzzing what a
//! guest or a user feeds the host (exits, MMIO, ITS commands, manifests,
//! images): small by default, so that `cargo test` stays fast;
//! `PROPTEST_CASES=N` sets every one of them for a longer campaign.

use proptest::test_runner::Config;

/// `cases` runs, or `PROPTEST_CASES` when it is set.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config { cases, ..Config::default() }
}
