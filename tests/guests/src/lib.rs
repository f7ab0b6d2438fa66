//! The runtime of Ferrovisor's test guests: small `no_std` programs in the
//! style of kvm-unit-tests, built as raw flat binaries that relocate
//! themselves and run wherever they are loaded.
//!
//! A test binary names its sub-tests with [`guest_main!`]. The runtime reads
//! the device tree (memory, CPUs, PSCI method, console, bootargs, initrd),
//! runs the sub-test the first bootargs word names (or all of them), and
//! ends with `SUMMARY:`, `EXIT: STATUS=N` and PSCI `SYSTEM_OFF`. Tests
//! report with [`report`], [`report_skip`] and [`report_info`]; they start
//! secondary CPUs with [`smp`] and expect exceptions with
//! [`exception::catch`]. Interrupts: the GIC driver [`gic`], the IRQ handler
//! and windows [`irq`], the generic timers [`timer`], the GICv3 ITS and LPIs
//! [`its`]; [`bench`] turns counter readings into micro-benchmark figures.
//!
//! Only the pure logic ([`args`], [`bench`], [`cpus`], [`fuzz`], [`pattern`],
//! [`report`], and [`gic`]'s and [`its`]'s encodings) is built on the development host,
//! where its unit tests run.
#![cfg_attr(not(test), no_std)]

pub mod args;
pub mod bench;
pub mod cpus;
pub mod fuzz;
pub mod gic;
pub mod its;
pub mod pattern;
pub mod report;

#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod exception;
#[cfg(target_os = "none")]
pub mod irq;
#[cfg(target_os = "none")]
pub mod psci;
#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod time;
#[cfg(target_os = "none")]
pub mod timer;

#[cfg(target_os = "none")]
pub use console::{exit, report, report_info, report_skip};
#[cfg(target_os = "none")]
pub use rt::env;

use ferrovisor_shared::dt::Board;

/// What a test runs with.
pub struct Env {
    pub board: Board<'static>,
    pub args: args::Args<'static>,
    /// The device tree's address.
    pub dtb: usize,
    /// The boot CPU's device-tree index.
    pub boot_cpu: usize,
}

/// One sub-test: selected by its name as the first bootargs word.
pub struct SubTest {
    pub name: &'static str,
    pub run: fn(&Env),
}

/// Runs the sub-tests `env.args` selects, each with its name in the report prefix.
#[cfg(target_os = "none")]
pub fn run_subtests(test: &'static str, env: &Env, tests: &[SubTest]) {
    console::set_test(test);
    let mut names = [""; 32];
    for (slot, t) in names.iter_mut().zip(tests) {
        *slot = t.name;
    }
    let names = &names[..tests.len().min(32)];
    // `repeat-ms=T`: the selection again until T ms have passed (a control
    // VM kept busy beside another; the number of rounds depends on time, so
    // not for runs whose verdicts are compared).
    let repeat_us = match env.args.number("repeat-ms") {
        Ok(ms) => ms.unwrap_or(0).saturating_mul(1000),
        Err(e) => {
            report(false, format_args!("bootargs: {e}"));
            0
        }
    };
    let start = time::counter();
    match env.args.select(names) {
        Ok(selection) => loop {
            for t in tests.iter().filter(|t| selection.includes(t.name)) {
                console::set_subtest(t.name);
                (t.run)(env);
                console::set_subtest("");
            }
            if time::us_since(start) >= repeat_us {
                break;
            }
        },
        Err(unknown) => {
            report(false, format_args!("unknown sub-test `{unknown}`"));
            report_info(format_args!("sub-tests: {}", Names(names)));
        }
    }
}

#[cfg(target_os = "none")]
struct Names<'a>(&'a [&'a str]);

#[cfg(target_os = "none")]
impl core::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

/// Declares a test binary: its name (the report prefix) and its sub-tests.
/// The runtime runs the selected ones, then prints the summary and exits.
#[macro_export]
macro_rules! guest_main {
    ($name:literal, $subtests:expr) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn __ferrovisor_guest_main(env: &'static $crate::Env) {
            $crate::run_subtests($name, env, $subtests)
        }
    };
}
