//! The build check (`buildcheck` in the host's bootargs): a small VM is
//! built with each step of [`Vm::create_in_steps`] failing in turn, and
//! after each failure the host must have all it had before: its free
//! frames, its heap, the ITS device and vPE IDs, the interrupt state
//! reserved for VMs. A VM that fails half-way
//! through must free everything on every path (docs/README.md, `vm/`),
//! and this is where that is shown on the real allocators.

use super::config::VmSpec;
use super::instance::{BuildSteps, Vm};
use crate::{gic, mm, println};
use alloc::string::String;
use alloc::vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostUsage {
    free_frame_bytes: u64,
    heap_allocated: usize,
    its_ids: (u64, u64),
    interrupt_state: usize,
}

impl HostUsage {
    fn now() -> Self {
        Self {
            free_frame_bytes: mm::frames().lock().free_bytes(),
            heap_allocated: mm::heap_usage().allocated,
            its_ids: gic::vlpi::ids_in_use(),
            interrupt_state: gic::vgic::budget::INTERRUPT_STATE.used(),
        }
    }
}

/// Returns whether every failure freed all it took.
pub fn run(gicv3: bool, its: bool) -> bool {
    let spec = VmSpec {
        name: String::from("build-check"),
        vcpus: 2,
        mem_bytes: 8 << 20,
        // `b .`: never runs.
        kernel: 0x1400_0000u32.to_le_bytes().to_vec(),
        initrd: Some(vec![0; 4096]),
        bootargs: String::from("console=ttyAMA0"),
        pinned: false,
        interrupt_state: None,
    };
    // One whole build first: what is set up once, on first use, stays.
    let warm = Vm::create(0, &spec, None, gicv3, its);
    if let Err(e) = &warm {
        println!("build-check: FAIL: the VM cannot be built at all: {e}");
        return false;
    }
    drop(warm);
    let start = HostUsage::now();
    let mut ok = true;
    let mut step = 0;
    loop {
        let before = HostUsage::now();
        let mut steps = BuildSteps::failing_at(step);
        let built = Vm::create_in_steps(0, &spec, None, gicv3, its, &mut steps);
        // The message moves to the stack so that the heap is measured
        // with nothing of the build left in it.
        let mut text = [0u8; 160];
        let (failed, len) = match built {
            Ok(vm) => {
                drop(vm);
                (false, 0)
            }
            Err(e) => {
                let n = e.len().min(text.len());
                text[..n].copy_from_slice(&e.as_bytes()[..n]);
                (true, n)
            }
        };
        let message = match core::str::from_utf8(&text[..len]) {
            Ok(m) => m,
            Err(e) => core::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or_default(),
        };
        let after = HostUsage::now();
        if after != before {
            println!("build-check: FAIL: step {step} ({message}) left {before:?} as {after:?}");
            ok = false;
        }
        if !failed {
            break;
        }
        if steps.done() != step {
            println!("build-check: FAIL: step {step} was not reached: {message}");
            ok = false;
            break;
        }
        step += 1;
    }
    let end = HostUsage::now();
    if end != start {
        println!("build-check: FAIL: {start:?} became {end:?}");
        ok = false;
    }
    if ok {
        println!("build-check: PASS ({step} steps, each failure freed all it took)");
    }
    ok
}
