//! The boot self-check: every online CPU must receive an SGI from the boot CPU
//! and take its own timer tick, and an LPI sent through the ITS must arrive.
//! Prints one line per CPU, the LPI's, and the verdict.

use crate::arch::aarch64::timer;
use crate::smp::CPUS;
use crate::{gic, irq::ids, println};
use core::sync::atomic::Ordering;
use ferrovisor_shared::boot::BootInfo;

const TIMEOUT_US: u64 = 2_000_000;

/// Returns whether every CPU passed.
pub fn run(info: &BootInfo, lpis: bool) -> bool {
    let count = info.cpu_count as usize;
    let start_sgis: [u64; ferrovisor_shared::boot::MAX_CPUS] =
        core::array::from_fn(|i| CPUS[i].sgis.load(Ordering::Relaxed));
    for (cpu, c) in CPUS.iter().enumerate().take(count) {
        if c.online.load(Ordering::Acquire) {
            gic::send_sgi(ids::SGI_PING, cpu);
        }
    }
    let sgi_ok = |i: usize| CPUS[i].sgis.load(Ordering::Relaxed) > start_sgis[i];
    // The tick each CPU armed when it came up (`per_cpu_init`): with no
    // vCPUs to time-slice it is the only one, and may come before this check
    // starts (docs/run-loop.md §9).
    let tick_ok = |i: usize| CPUS[i].ticks.load(Ordering::Relaxed) > 0;
    let deadline = timer::now() + timer::ticks_from_us(TIMEOUT_US);
    while timer::now() < deadline && !(0..count).all(|i| sgi_ok(i) && tick_ok(i)) {
        // Polls rather than WFI: a wedged GIC must end in FAIL, not a hang.
        core::hint::spin_loop();
    }
    let mut passed = 0;
    for (i, c) in CPUS.iter().enumerate().take(count) {
        let word = |ok: bool| if ok { "ok" } else { "FAILED" };
        let online = c.online.load(Ordering::Acquire);
        if online {
            println!("self-check: cpu{i} sgi {} timer {}", word(sgi_ok(i)), word(tick_ok(i)));
        } else {
            println!("self-check: cpu{i} offline");
        }
        passed += usize::from(online && sgi_ok(i) && tick_ok(i));
    }
    let lpi_ok = !lpis || gic::vlpi::selftest(TIMEOUT_US);
    if lpis {
        println!("self-check: its lpi {}", if lpi_ok { "ok" } else { "FAILED" });
    }
    let verdict = if passed == count && lpi_ok { "PASS" } else { "FAIL" };
    println!("self-check: {verdict} ({passed}/{count} CPUs)");
    passed == count && lpi_ok
}
