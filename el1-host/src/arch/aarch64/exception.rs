//! The host's exception handling at EL1: IRQs go to the interrupt dispatcher;
//! anything else is a host bug, reported with a full register dump, after
//! which the board powers off with a failure status.

use aarch64_cpu::registers::{Readable, ELR_EL1, ESR_EL1, FAR_EL1, SPSR_EL1};
use ferrovisor_shared::trap::{ExceptionReport, GeneralRegs};

use ferrovisor_shared::trap::EL1_VECTOR_NAMES as VECTOR_NAMES;

const IRQ_CURRENT_EL_SPX: u64 = 5;

#[unsafe(no_mangle)]
extern "C" fn host_trap(kind: u64, regs: &mut GeneralRegs) {
    if kind == IRQ_CURRENT_EL_SPX {
        crate::irq::handle();
        return;
    }
    let report = ExceptionReport {
        kind: VECTOR_NAMES[kind as usize & 15],
        el: "EL1",
        esr: ESR_EL1.get(),
        far: FAR_EL1.get(),
        elr: ELR_EL1.get(),
        spsr: SPSR_EL1.get(),
        regs,
    };
    crate::console::print_forced(format_args!("host: {report}"));
    crate::board::fail("unexpected exception in the host")
}
