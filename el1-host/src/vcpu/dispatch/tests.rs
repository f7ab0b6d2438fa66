//! The exit table against a fake VM: a two-vCPU VM with 256 MiB of RAM at
//! 0x4000_0000 and one device (at 0x0900_0000) on its MMIO bus.

use super::*;
use crate::devices::bus::{MmioBus, MmioDevice};
use crate::vcpu::mmio;
use crate::vcpu::psci::{PsciVm, VcpuPower};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use ferrovisor_shared::esr::SysReg;
use ferrovisor_shared::hypercall::PSCI_VERSION_1_1;
use ferrovisor_shared::vcpu::ExitInfo;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Kick(Kicks),
    KickVcpu(usize),
    End(EndReason),
    Sgi(u64, u8),
    Wait(Option<u64>),
    Spinning,
    DeviceRead(u64, u8),
    DeviceWrite(u64, u8, u64),
}

#[derive(Default)]
struct Host {
    events: RefCell<Vec<Event>>,
}

/// Reads give 0x1234_5678; writes kick vCPU 1.
struct Device;

impl MmioDevice<Host> for Device {
    fn read(&self, host: &Host, _vcpu: usize, offset: u64, size: u8) -> u64 {
        host.events.borrow_mut().push(Event::DeviceRead(offset, size));
        0x1234_5678
    }

    fn write(&self, host: &Host, _vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        host.events.borrow_mut().push(Event::DeviceWrite(offset, size, value));
        Kicks(0b10)
    }
}

struct Fake {
    host: Host,
    bus: MmioBus<Host>,
    stats: VmStats,
    power: [VcpuPower; 2],
    gicv3: bool,
    now: Cell<u64>,
    /// `wait` says [`Flow::Block`] (other vCPUs want CPUs).
    oversubscribed: bool,
    /// What `may_log` was asked about.
    logged: RefCell<Vec<GuestEvent>>,
}

impl Fake {
    fn new() -> Self {
        let mut bus = MmioBus::new();
        bus.register(0x0900_0000, 0x1000, ExitKind::Mmio, Box::new(Device)).unwrap();
        Self {
            host: Host::default(),
            bus,
            stats: VmStats::default(),
            power: [VcpuPower::new_on(), VcpuPower::new_off()],
            gicv3: true,
            now: Cell::new(0),
            oversubscribed: false,
            logged: RefCell::default(),
        }
    }

    fn events(&self) -> Vec<Event> {
        self.host.events.borrow().clone()
    }

    fn push(&self, e: Event) {
        self.host.events.borrow_mut().push(e);
    }
}

impl PsciVm for Fake {
    fn vcpu_count(&self) -> usize {
        2
    }

    fn mpidr(&self, index: usize) -> u64 {
        index as u64
    }

    fn power(&self, index: usize) -> &VcpuPower {
        &self.power[index]
    }

    fn ram_contains(&self, ipa: u64) -> bool {
        (0x4000_0000..0x5000_0000).contains(&ipa)
    }
}

impl ExitVm for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    fn vcpu_index(&self) -> usize {
        0
    }

    fn stats(&self) -> &VmStats {
        &self.stats
    }

    fn psci(&self, function: u32, args: [u64; 3]) -> psci::Outcome {
        psci::handle(self, 0, function, args)
    }

    fn mmio(&self, ctx: &mut VcpuContext) -> Dispatch {
        mmio::dispatch(&self.bus, &self.host, 0, ctx, &self.stats)
    }

    fn gicv3(&self) -> bool {
        self.gicv3
    }

    fn sgi_write(&self, value: u64, group: u8) -> Kicks {
        self.push(Event::Sgi(value, group));
        Kicks(0b1)
    }

    fn kick(&self, kicks: Kicks) {
        self.push(Event::Kick(kicks));
    }

    fn kick_vcpu(&self, index: usize) {
        self.push(Event::KickVcpu(index));
    }

    fn request_end(&self, reason: EndReason) {
        self.push(Event::End(reason));
    }

    fn may_log(&self, event: GuestEvent) -> Option<Suppressed> {
        self.logged.borrow_mut().push(event);
        self.stats.logs.admit(event, self.now.get(), 1000)
    }

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn wait(&self, _ctx: &mut VcpuContext, deadline: Option<u64>) -> Flow {
        self.push(Event::Wait(deadline));
        if self.oversubscribed {
            Flow::Block { deadline: deadline.and_then(NonZeroU64::new) }
        } else {
            Flow::Continue
        }
    }

    fn spinning(&self) {
        self.push(Event::Spinning);
    }
}

const PC: u64 = 0x4008_0000;
const VBAR: u64 = 0x4009_0000;
/// From EL1h (SPSel 1): the current-EL synchronous vector (Arm ARM D1.3.1).
const SYNC_VECTOR: u64 = VBAR + 0x200;
const IL: u64 = 1 << 25;

fn context(ec: u64, iss: u64, far: u64) -> VcpuContext {
    let mut ctx = VcpuContext {
        exit: ExitInfo { reason: 1, esr: ec << 26 | IL | iss, far, hpfar: (far >> 12) << 4, acked: 0, kick: 0 },
        ..VcpuContext::default()
    };
    ctx.regs.pc = PC;
    ctx.regs.pstate = 0x3c5; // EL1h, DAIF masked
    ctx.el1.vbar = VBAR;
    ctx
}

fn sync(vm: &Fake, ctx: &mut VcpuContext) -> Flow {
    handle(vm, ctx, ExitReason::Sync)
}

fn assert_undefined(ctx: &VcpuContext) {
    assert_eq!(ctx.regs.pc, SYNC_VECTOR, "taken to the vector");
    assert_eq!(ctx.el1.elr_el1, PC, "at the instruction itself");
    assert_eq!(Esr(ctx.el1.esr_el1).class(), ExceptionClass::Unknown);
}

const EC_WFX: u64 = 0x01;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_SYS64: u64 = 0x18;
const EC_IABT: u64 = 0x20;
const EC_DABT: u64 = 0x24;

#[test]
fn an_hvc_answers_in_x0_and_resumes_after_it() {
    let vm = Fake::new();
    // ELR_EL2 of an HVC already points past it (Arm ARM D1.10.1).
    let mut ctx = context(EC_HVC64, 0, 0);
    ctx.regs.x[0] = u64::from(smccc::psci::PSCI_VERSION);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.x[0], PSCI_VERSION_1_1 as u64);
    assert_eq!(ctx.regs.pc, PC);
    assert_eq!(vm.stats.exits(ExitKind::Hvc), 1);
}

/// `HVC #1` is not an SMCCC call (DEN0028 §2.5): NOT_SUPPORTED, whatever
/// x0 names, and nothing done (KVM answers the same).
#[test]
fn an_hvc_with_an_immediate_is_not_smccc() {
    let vm = Fake::new();
    let mut ctx = context(EC_HVC64, 1, 0);
    ctx.regs.x[0] = u64::from(smccc::psci::PSCI_SYSTEM_OFF);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.x[0] as i64, -1);
    assert!(vm.events().is_empty(), "SYSTEM_OFF was not made");
}

/// A cache maintenance instruction on an address outside RAM (ISS.CM,
/// ISV 0) has nothing to maintain: stepped past, no abort.
#[test]
fn cache_maintenance_outside_ram_is_stepped_past() {
    let vm = Fake::new();
    // DC CIVAC: WnR and CM set, DFSC a level 3 translation fault.
    let mut ctx = context(EC_DABT, 1 << 8 | 1 << 6 | 0x07, 0x0900_0000);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    assert_eq!(ctx.el1.esr_el1, 0, "no exception for the guest");
    assert!(vm.events().is_empty(), "the device at the address was not written");
}

#[test]
fn a_trapped_smc_is_stepped_past() {
    // A trapped SMC's ELR_EL2 points at the SMC itself (Arm ARM D1.10.1).
    let vm = Fake::new();
    let mut ctx = context(EC_SMC64, 0, 0);
    ctx.regs.x[0] = u64::from(smccc::psci::PSCI_VERSION);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!((ctx.regs.x[0], ctx.regs.pc), (PSCI_VERSION_1_1 as u64, PC + 4));
    assert_eq!(vm.stats.exits(ExitKind::Smc), 1);
}

#[test]
fn cpu_on_kicks_its_target_and_system_off_ends_the_vm() {
    let vm = Fake::new();
    let mut ctx = context(EC_HVC64, 0, 0);
    ctx.regs.x[..4].copy_from_slice(&[u64::from(smccc::psci::PSCI_CPU_ON_64), 1, 0x4010_0000, 7]);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.x[0], 0, "PSCI SUCCESS");
    assert_eq!(vm.events(), [Event::KickVcpu(1)]);

    let mut ctx = context(EC_HVC64, 0, 0);
    ctx.regs.x[0] = u64::from(smccc::psci::PSCI_SYSTEM_OFF);
    assert_eq!(sync(&vm, &mut ctx), Flow::Stop);
    assert_eq!(vm.events().last(), Some(&Event::End(EndReason::SystemOff)));

    let mut ctx = context(EC_HVC64, 0, 0);
    ctx.regs.x[0] = u64::from(smccc::psci::PSCI_CPU_OFF);
    assert_eq!(sync(&vm, &mut ctx), Flow::PowerOff);
}

#[test]
fn a_data_abort_goes_to_the_device_at_its_address() {
    let vm = Fake::new();
    // ldr w3, [0x0900_0010]: ISV, SAS = 2, SRT = 3.
    let mut ctx = context(EC_DABT, 1 << 24 | 2 << 22 | 3 << 16, 0x0900_0010);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!((ctx.regs.x[3], ctx.regs.pc), (0x1234_5678, PC + 4));
    // str x4, [0x0900_0020]: SAS = 3, SRT = 4, WnR: the device's kicks are sent.
    let mut ctx = context(EC_DABT, 1 << 24 | 3 << 22 | 4 << 16 | 1 << 6, 0x0900_0020);
    ctx.regs.x[4] = 0xfeed;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(
        vm.events(),
        [Event::DeviceRead(0x10, 4), Event::DeviceWrite(0x20, 8, 0xfeed), Event::Kick(Kicks(0b10))]
    );
    assert_eq!(vm.stats.exits(ExitKind::Mmio), 2);
}

/// An SGI el2 posted to vCPUs that had left guest mode: the host kicks
/// each (a vCPU waiting in `WFI` looks at its mailbox only when woken) and
/// does nothing else; the guest's instruction is done already.
#[test]
fn a_kick_exit_kicks_the_targets_and_nothing_else() {
    let vm = Fake::new();
    let mut ctx = context(0, 0, 0);
    ctx.exit.kick = 0b1010;
    assert_eq!(handle(&vm, &mut ctx, ExitReason::Kick), Flow::Continue);
    assert_eq!(vm.events(), [Event::KickVcpu(1), Event::KickVcpu(3)]);
    assert_eq!((ctx.regs.pc, ctx.exit.kick), (PC, 0));
    assert_eq!(vm.stats.exits(ExitKind::Gic), 1);
}

#[test]
fn a_data_abort_outside_the_map_is_an_external_abort() {
    let vm = Fake::new();
    let mut ctx = context(EC_DABT, 1 << 24 | 2 << 22 | 3 << 16, 0x0a00_0000);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!((ctx.regs.pc, ctx.el1.elr_el1, ctx.el1.far_el1), (SYNC_VECTOR, PC, 0x0a00_0000));
    assert_eq!(Esr(ctx.el1.esr_el1).class(), ExceptionClass::DataAbortSameEl);
    assert!(vm.events().is_empty(), "no device was asked, nobody kicked");
    assert_eq!(vm.stats.exits(ExitKind::Abort), 1);
}

/// A guest hammering outside its map gets its abort every time, and the
/// host's log a burst of lines per window; the rest are counted.
#[test]
fn a_flood_of_aborts_logs_a_burst_and_counts_the_rest() {
    let vm = Fake::new();
    vm.now.set(5000);
    for _ in 0..1000 {
        let mut ctx = context(EC_DABT, 1 << 24 | 2 << 22 | 3 << 16, 0x0a00_0000);
        sync(&vm, &mut ctx);
        assert_eq!(Esr(ctx.el1.esr_el1).class(), ExceptionClass::DataAbortSameEl);
    }
    assert_eq!(vm.logged.borrow().len(), 1000);
    assert_eq!(vm.stats.logs.suppressed(GuestEvent::Unmapped), 1000 - u64::from(crate::vm::ratelimit::BURST));
    assert_eq!(vm.stats.exits(ExitKind::Abort), 1000);
}

#[test]
fn an_instruction_fetch_outside_ram_is_an_external_abort() {
    let vm = Fake::new();
    let mut ctx = context(EC_IABT, 0x10, 0x0a00_0000);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!((ctx.regs.pc, ctx.el1.far_el1), (SYNC_VECTOR, 0x0a00_0000));
    assert_eq!(Esr(ctx.el1.esr_el1).class(), ExceptionClass::InstAbortSameEl);
}

/// The ISS of a trapped MSR/MRS (Arm ARM D24.2.40, EC 0x18).
fn sys_reg_iss(reg: SysReg, rt: u64, read: bool) -> u64 {
    u64::from(reg.op0) << 20
        | u64::from(reg.op2) << 17
        | u64::from(reg.op1) << 14
        | u64::from(reg.crn) << 10
        | rt << 5
        | u64::from(reg.crm) << 1
        | u64::from(read)
}

#[test]
fn system_registers_are_emulated_or_undefined() {
    let vm = Fake::new();
    // msr cntp_cval_el0, x5
    let mut ctx = context(EC_SYS64, sys_reg_iss(sysreg::CNTP_CVAL_EL0, 5, false), 0);
    ctx.regs.x[5] = 0xabcd;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!((ctx.timer.cntp_cval, ctx.regs.pc), (0xabcd, PC + 4));
    // mrs x6, cntp_cval_el0
    let mut ctx2 = context(EC_SYS64, sys_reg_iss(sysreg::CNTP_CVAL_EL0, 6, true), 0);
    ctx2.timer = ctx.timer;
    sync(&vm, &mut ctx2);
    assert_eq!(ctx2.regs.x[6], 0xabcd);

    // An IMPLEMENTATION DEFINED register, twice: UNDEFINED both times, a line asked for each.
    let impdef = SysReg::new(3, 0, 15, 0, 0);
    for _ in 0..2 {
        let mut ctx = context(EC_SYS64, sys_reg_iss(impdef, 1, true), 0);
        assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
        assert_undefined(&ctx);
    }
    assert_eq!(*vm.logged.borrow(), [GuestEvent::UnknownSysReg; 2]);
    assert_eq!(vm.stats.exits(ExitKind::SysReg), 4);
}

#[test]
fn sgi_registers_exist_only_with_a_gicv3() {
    let mut vm = Fake::new();
    let mut ctx = context(EC_SYS64, sys_reg_iss(sysreg::ICC_SGI1R_EL1, 2, false), 0);
    ctx.regs.x[2] = 0x1_0003;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    assert_eq!(vm.events(), [Event::Sgi(0x1_0003, 1), Event::Kick(Kicks(0b1))]);

    vm.gicv3 = false;
    let mut ctx = context(EC_SYS64, sys_reg_iss(sysreg::ICC_SGI1R_EL1, 2, false), 0);
    sync(&vm, &mut ctx);
    assert_undefined(&ctx);
    assert_eq!(vm.events().len(), 2, "no SGI from a GICv2 VM");
}

/// ISS of a WF* trap (Arm ARM D24.2.40): TI in [1:0], RV bit 2, RN [9:5].
const WFI: u64 = 0b00;
const WFE: u64 = 0b01;
const WFIT: u64 = 0b10;
const RV: u64 = 1 << 2;

#[test]
fn wfi_waits_with_no_deadline() {
    let vm = Fake::new();
    let mut ctx = context(EC_WFX, WFI, 0);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4, "the WFI completes when the vCPU resumes");
    assert_eq!(vm.events(), [Event::Wait(None)]);
    assert_eq!(vm.stats.exits(ExitKind::Wfi), 1);
}

#[test]
fn wfit_waits_until_its_timeout_on_the_virtual_count() {
    let vm = Fake::new();
    vm.now.set(1_000);
    // wfit x3, with x3 = 2_000 on a virtual count 500 behind the physical one.
    let mut ctx = context(EC_WFX, WFIT | RV | 3 << 5, 0);
    ctx.regs.x[3] = 2_000;
    ctx.timer.cntvoff = 500;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    assert_eq!(vm.events(), [Event::Wait(Some(2_500))]);
}

#[test]
fn wfit_past_its_timeout_completes_at_once() {
    let vm = Fake::new();
    vm.now.set(3_000);
    let mut ctx = context(EC_WFX, WFIT | RV | 3 << 5, 0);
    ctx.regs.x[3] = 2_000;
    ctx.timer.cntvoff = 500;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    // XZR: a timeout of 0, long past.
    let mut ctx = context(EC_WFX, WFIT | RV | 31 << 5, 0);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    // No register named (RV = 0): completes, as any wait may early.
    let mut ctx = context(EC_WFX, WFIT | 3 << 5, 0);
    ctx.regs.x[3] = u64::MAX;
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    assert!(vm.events().is_empty(), "never waited");
    assert_eq!(vm.stats.exits(ExitKind::Wfi), 3);
}

#[test]
fn a_timeout_past_the_end_of_the_count_saturates() {
    let vm = Fake::new();
    let mut ctx = context(EC_WFX, WFIT | RV | 7 << 5, 0);
    ctx.regs.x[7] = u64::MAX - 1;
    ctx.timer.cntvoff = 10;
    sync(&vm, &mut ctx);
    assert_eq!(vm.events(), [Event::Wait(Some(u64::MAX))]);
}

#[test]
fn an_oversubscribed_wfit_blocks_with_its_deadline() {
    let mut vm = Fake::new();
    vm.oversubscribed = true;
    let mut ctx = context(EC_WFX, WFIT | RV | 1 << 5, 0);
    ctx.regs.x[1] = 40;
    assert_eq!(sync(&vm, &mut ctx), Flow::Block { deadline: NonZeroU64::new(40) });
    let mut ctx = context(EC_WFX, WFI, 0);
    assert_eq!(sync(&vm, &mut ctx), Flow::Block { deadline: None });
}

#[test]
fn wfe_is_a_hint() {
    let vm = Fake::new();
    let mut ctx = context(EC_WFX, WFE, 0);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC + 4);
    assert_eq!(vm.events(), [Event::Spinning]);
    assert_eq!(vm.stats.exits(ExitKind::Wfe), 1);
}

#[test]
fn an_unhandled_class_is_undefined_for_the_guest() {
    let vm = Fake::new();
    // EC 0x07, an FP/SIMD access trap, which the host never asks for.
    let mut ctx = context(0x07, 0, 0);
    assert_eq!(sync(&vm, &mut ctx), Flow::Continue);
    assert_undefined(&ctx);
    assert_eq!(*vm.logged.borrow(), [GuestEvent::UnknownClass]);
    assert_eq!(vm.stats.exits(ExitKind::Other), 1);
}

#[test]
fn an_serror_stops_the_vm_and_irqs_just_count() {
    let vm = Fake::new();
    let mut ctx = context(0x2f, 0, 0);
    assert_eq!(handle(&vm, &mut ctx, ExitReason::SError), Flow::Stop);
    match vm.events().as_slice() {
        [Event::End(EndReason::Stopped(why))] => assert!(why.contains("SError"), "{why}"),
        e => panic!("{e:?}"),
    }
    let mut ctx = context(0, 0, 0);
    assert_eq!(handle(&vm, &mut ctx, ExitReason::Irq), Flow::Continue);
    assert_eq!(ctx.regs.pc, PC);
    assert_eq!((vm.stats.exits(ExitKind::SError), vm.stats.exits(ExitKind::Irq)), (1, 1));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    /// Mostly the classes the table handles (WF*, HVC, SMC, MSR/MRS,
    /// instruction and data aborts from a lower EL), any ISS; sometimes any
    /// value at all.
    fn esr() -> impl Strategy<Value = u64> {
        let ec = prop_oneof![
            4 => prop::sample::select(&[EC_WFX, EC_HVC64, EC_SMC64, EC_SYS64, EC_IABT, EC_DABT][..]),
            1 => 0u64..64,
        ];
        prop_oneof![
            8 => (ec, any::<bool>(), 0u64..1 << 25).prop_map(|(ec, il, iss)| ec << 26 | u64::from(il) << 25 | iss),
            1 => any::<u64>(),
        ]
    }

    /// SMCCC function IDs near PSCI's (SMC32 and SMC64), or anything.
    fn function() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..0x20).prop_map(|f| 0x8400_0000 | f),
            (0u64..0x20).prop_map(|f| 0xc400_0000 | f),
            any::<u32>().prop_map(u64::from),
            any::<u64>(),
        ]
    }

    fn reason() -> impl Strategy<Value = ExitReason> {
        prop_oneof![
            8 => Just(ExitReason::Sync),
            1 => Just(ExitReason::Irq),
            1 => Just(ExitReason::Fiq),
            1 => Just(ExitReason::SError),
            1 => Just(ExitReason::Kick),
        ]
    }

    /// Everything an exit reports or a guest controls: the syndrome, FAR,
    /// HPFAR, registers, PSTATE, VBAR_EL1, SCTLR_EL1, the virtual offset and
    /// the time.
    #[derive(Debug, Clone)]
    struct Exit {
        reason: ExitReason,
        esr: u64,
        far: u64,
        hpfar: u64,
        x: [u64; 31],
        pstate: u64,
        vbar: u64,
        sctlr: u64,
        cntvoff: u64,
        now: u64,
    }

    fn exit() -> impl Strategy<Value = Exit> {
        let far = prop_oneof![Just(0x0900_0000u64), 0x0900_0000u64..0x0900_1000, any::<u64>()];
        let pstate = prop_oneof![Just(0x3c5u64), Just(0x3c4), Just(0), Just(0x10), any::<u64>()];
        (
            (reason(), esr(), far, any::<bool>(), any::<u64>()),
            (any::<[u64; 31]>(), function(), pstate, any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |((reason, esr, far, hpfar_of_far, hpfar), (mut x, f, pstate, vbar, sctlr), (cntvoff, now))| {
                    x[0] = f;
                    let hpfar = if hpfar_of_far { (far >> 12) << 4 } else { hpfar };
                    Exit { reason, esr, far, hpfar, x, pstate, vbar, sctlr, cntvoff, now }
                },
            )
    }

    fn total_exits(stats: &VmStats) -> u64 {
        use ExitKind::*;
        [Hvc, Smc, Mmio, Gic, Abort, SysReg, Wfi, Wfe, Irq, SError, Other].map(|k| stats.exits(k)).iter().sum()
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(1024))]

        /// Any exit through the exit table, on a GICv3 or GICv2 VM, with
        /// CPUs to spare or not: no panic; exactly one exit counted; an IRQ
        /// or FIQ changes nothing; a synchronous exit leaves the guest at
        /// its instruction (HVC: ELR_EL2 is past it already), past it, or at
        /// one of its four EL1 vectors (Arm ARM D1.3.1: VBAR_EL1 + 0x000,
        /// 0x200, 0x400 or 0x600) with the instruction in ELR_EL1; the VM
        /// stops only for an SError or a PSCI call.
        #[test]
        fn any_exit_is_handled(e in exit(), gicv3: bool, oversubscribed: bool) {
            let mut vm = Fake::new();
            vm.gicv3 = gicv3;
            vm.oversubscribed = oversubscribed;
            vm.now.set(e.now);
            let mut ctx = VcpuContext {
                exit: ExitInfo { reason: 1, esr: e.esr, far: e.far, hpfar: e.hpfar, acked: 0, kick: 0 },
                ..VcpuContext::default()
            };
            ctx.regs.x = e.x;
            ctx.regs.pc = PC;
            ctx.regs.pstate = e.pstate;
            ctx.el1.vbar = e.vbar;
            ctx.el1.sctlr = e.sctlr;
            ctx.timer.cntvoff = e.cntvoff;
            let before = ctx;
            let flow = handle(&vm, &mut ctx, e.reason);
            prop_assert_eq!(total_exits(&vm.stats), 1);
            let class = Esr(e.esr).class();
            match e.reason {
                ExitReason::Irq | ExitReason::Fiq => {
                    prop_assert_eq!(flow, Flow::Continue);
                    prop_assert_eq!(ctx.regs.x, before.regs.x);
                    prop_assert_eq!((ctx.regs.pc, ctx.regs.pstate), (PC, e.pstate));
                }
                ExitReason::SError => prop_assert_eq!(flow, Flow::Stop),
                ExitReason::Kick => {
                    prop_assert_eq!(flow, Flow::Continue);
                    prop_assert_eq!((ctx.regs.x, ctx.regs.pc), (before.regs.x, PC), "el2 finished the instruction");
                }
                ExitReason::Sync => {
                    let vectors = [0, 0x200, 0x400, 0x600].map(|v| (e.vbar & !0x7ff).wrapping_add(v));
                    let pc = ctx.regs.pc;
                    if vectors.contains(&pc) && pc != PC && pc != PC + 4 {
                        prop_assert_eq!(ctx.el1.elr_el1, PC, "an exception for the instruction itself");
                        prop_assert_eq!(ctx.regs.pstate & 0x1f, 0b00101, "taken to EL1h, AArch64");
                    } else {
                        prop_assert!(pc == PC || pc == PC + 4, "pc {:#x}", pc);
                    }
                    let psci = matches!(class, ExceptionClass::Hvc64 | ExceptionClass::Smc64);
                    match flow {
                        Flow::Continue => {}
                        Flow::Block { .. } => {
                            prop_assert!(oversubscribed && class == ExceptionClass::WfxTrap);
                        }
                        Flow::PowerOff | Flow::Stop | Flow::Reset => prop_assert!(psci, "{:?} from {:?}", flow, class),
                    }
                }
            }
            if let Flow::Stop = flow {
                prop_assert!(matches!(vm.events().last(), Some(Event::End(_))));
            }
            for ev in vm.events() {
                match ev {
                    Event::Kick(k) => prop_assert_eq!(k.0 >> 2, 0, "kicks of vCPUs that exist"),
                    Event::KickVcpu(i) => prop_assert!(i < 2),
                    _ => {}
                }
            }
        }
    }
}
