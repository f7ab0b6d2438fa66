//! The test's arguments: `/chosen/bootargs` split on whitespace. As in
//! kvm-unit-tests, a first word without `=` names the sub-test to run
//! (`selftest setup smp=2 mem=256` arrives as `setup smp=2 mem=256`); the
//! other words are `key=value` options or bare flags.

use core::fmt;

#[derive(Clone, Copy, Debug)]
pub struct Args<'a> {
    line: &'a str,
}

/// An option whose value is not a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadNumber<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl fmt::Display for BadNumber<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: not a number (decimal or 0x hex)", self.key, self.value)
    }
}

/// Which sub-tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    All,
    One(&'a str),
}

impl Selection<'_> {
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::One(n) => *n == name,
        }
    }
}

impl<'a> Args<'a> {
    pub const fn new(line: &'a str) -> Self {
        Self { line }
    }

    pub fn words(&self) -> impl Iterator<Item = &'a str> {
        self.line.split_ascii_whitespace()
    }

    /// The first word, when it is not a `key=value` option.
    pub fn subtest(&self) -> Option<&'a str> {
        self.words().next().filter(|w| !w.contains('='))
    }

    /// The value of the last `key=value` word for `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.words().filter_map(|w| w.split_once('=')).filter(|(k, _)| *k == key).map(|(_, v)| v).last()
    }

    /// [`Args::get`] as a number.
    ///
    /// # Errors
    /// The value is there but is not a decimal or `0x` hexadecimal number.
    pub fn number(&self, key: &'a str) -> Result<Option<u64>, BadNumber<'a>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => parse_number(value).map(Some).ok_or(BadNumber { key, value }),
        }
    }

    /// Picks the sub-tests to run out of `known`.
    ///
    /// # Errors
    /// The first word names no sub-test in `known`; the error is that word.
    pub fn select(&self, known: &[&str]) -> Result<Selection<'a>, &'a str> {
        match self.subtest() {
            None => Ok(Selection::All),
            Some(name) if known.contains(&name) => Ok(Selection::One(name)),
            Some(name) => Err(name),
        }
    }
}

/// A decimal or `0x`-prefixed hexadecimal number.
pub fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_plain_word_is_the_subtest() {
        let a = Args::new("  setup smp=2\tmem=256 ");
        assert_eq!(a.subtest(), Some("setup"));
        assert_eq!(a.number("smp"), Ok(Some(2)));
        assert_eq!(a.number("mem"), Ok(Some(256)));
        assert_eq!(a.number("initrd-size"), Ok(None));
        assert_eq!(Args::new("smp=2 setup").subtest(), None, "an option first means no sub-test");
        assert_eq!(Args::new("").subtest(), None);
    }

    #[test]
    fn last_value_wins_and_numbers_are_checked() {
        let a = Args::new("x smp=1 smp=0x10 mem=12k");
        assert_eq!(a.get("smp"), Some("0x10"));
        assert_eq!(a.number("smp"), Ok(Some(16)));
        assert_eq!(a.number("mem"), Err(BadNumber { key: "mem", value: "12k" }));
        assert_eq!(a.get("x"), None, "a bare word has no value");
    }

    #[test]
    fn selection() {
        let known = ["setup", "smp"];
        assert_eq!(Args::new("").select(&known), Ok(Selection::All));
        assert_eq!(Args::new("mem=1").select(&known), Ok(Selection::All));
        assert_eq!(Args::new("smp smp=2").select(&known), Ok(Selection::One("smp")));
        assert_eq!(Args::new("nope smp=2").select(&known), Err("nope"));
        assert!(Selection::One("smp").includes("smp"));
        assert!(!Selection::One("smp").includes("setup"));
        assert!(Selection::All.includes("setup"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("0xff"), Some(255));
        assert_eq!(parse_number("0X10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("18446744073709551616"), None);
    }
}
