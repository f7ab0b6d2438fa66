//! The operations the `fuzz` guest draws: what each is, how it is drawn
//! from a random stream and what the guest knows of its machine
//! ([`Context`]), and how it is printed (a trace line, a `FAIL` line).
//! Drawing is pure: the guest executes what [`draw`] returns.

use core::fmt;

use ferrovisor_shared::esr::SysReg;
use ferrovisor_shared::its::{self as its, Command};

use super::insn::{self, Atomic, Ext, Index, PairIndex, PairKind, Size};
use super::{excluded_call, excluded_write, write_value, Rng};

pub use ferrovisor_shared::boot::MAX_CPUS;

/// Physical addresses stay below this (a 48-bit PA space).
pub const PA_LIMIT: u64 = 1 << 48;
/// The guest's IPA space under the hypervisor (a 39-bit stage 2).
pub const IPA_SPACE: u64 = 1 << 39;
/// Nothing is ever mapped here (neither RAM nor a device, on QEMU virt either).
pub const KNOWN_OUTSIDE: u64 = 0x20_0000_0000;

/// The registers an operation's generated instruction may name: x0-x17
/// (and 31, XZR, as a data register). x18 and x21-x28 are the trampoline's
/// sentinels, x19/x20/x29/x30 its own.
pub const DATA_REGS: u8 = 18;

/// A part of the guest's physical map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Gicd,
    /// The GICv2 CPU interface (the hardware's virtual CPU interface under a hypervisor).
    Gicc,
    /// The GICv3 redistributors, all of them.
    Gicr,
    Its,
    Uart,
    Virtio,
    Ram,
    /// Nothing the device tree describes.
    Outside,
}

impl Region {
    pub fn name(self) -> &'static str {
        match self {
            Region::Gicd => "GICD",
            Region::Gicc => "GICC",
            Region::Gicr => "GICR",
            Region::Its => "ITS",
            Region::Uart => "UART",
            Region::Virtio => "virtio",
            Region::Ram => "RAM",
            Region::Outside => "outside the map",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub region: Region,
    pub base: u64,
    pub size: u64,
}

const MAX_FRAMES: usize = 8;

/// The guest's physical map: RAM and each device frame.
#[derive(Clone, Copy, Debug)]
pub struct Map {
    frames: [Frame; MAX_FRAMES],
    len: usize,
}

impl Default for Map {
    fn default() -> Self {
        Self::new()
    }
}

impl Map {
    pub const fn new() -> Self {
        Self { frames: [Frame { region: Region::Outside, base: 0, size: 0 }; MAX_FRAMES], len: 0 }
    }

    /// Adds a frame (nothing when `size` is 0 or the map is full).
    pub fn add(&mut self, region: Region, base: u64, size: u64) {
        if size > 0 && self.len < MAX_FRAMES {
            self.frames[self.len] = Frame { region, base, size };
            self.len += 1;
        }
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames[..self.len]
    }

    pub fn frame(&self, region: Region) -> Option<Frame> {
        self.frames().iter().copied().find(|f| f.region == region)
    }

    /// The region `len` bytes at `addr` touch ([`Region::Outside`] if none).
    pub fn region_at(&self, addr: u64, len: u64) -> Region {
        let end = addr.saturating_add(len.max(1));
        self.frames()
            .iter()
            .find(|f| addr < f.base.saturating_add(f.size) && f.base < end)
            .map_or(Region::Outside, |f| f.region)
    }
}

/// What the guest's CPU and GIC have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub gicv3: bool,
    pub its: bool,
    /// FEAT_LSE (`ID_AA64ISAR0_EL1.Atomic` >= 2).
    pub lse: bool,
    /// FEAT_LRCPC (`ID_AA64ISAR1_EL1.LRCPC` >= 1).
    pub lrcpc: bool,
    /// FEAT_WFxT as the guest sees it (`ID_AA64ISAR2_EL1.WFxT` >= 2).
    pub wfxt: bool,
}

/// A read-only register whose value the guest knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub addr: u64,
    pub size: Size,
    pub value: u64,
    pub name: &'static str,
}

pub const MAX_KNOWN: usize = 24;

/// The ITS as the operations use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItsCx {
    pub base: u64,
    /// Each CPU's `RDbase` as the commands take it.
    pub rdbase: [u64; MAX_CPUS],
    /// A 64 KiB scratch area of the guest's own for ITTs and tables.
    pub scratch: u64,
}

/// Where a CPU the PSCI operations start may begin: the guest's secondary
/// entry point, with its device-tree index as the context ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub map: Map,
    pub features: Features,
    pub known: [Option<Known>; MAX_KNOWN],
    pub cpus: usize,
    pub mpidr: [u64; MAX_CPUS],
    pub entry: u64,
    pub its: Option<ItsCx>,
}

impl PartialEq for Map {
    fn eq(&self, other: &Self) -> bool {
        self.frames() == other.frames()
    }
}

impl Eq for Map {}

impl Context {
    pub fn known(&self) -> impl Iterator<Item = &Known> {
        self.known.iter().flatten()
    }

    pub fn ram(&self) -> Frame {
        self.map.frame(Region::Ram).unwrap_or(Frame { region: Region::Ram, base: 0, size: 0 })
    }
}

/// Which CPU draws: the boot CPU draws every kind, a secondary a subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Boot,
    Secondary,
}

/// An SMCCC call by `HVC` or `SMC`: x0 holds the function ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub smc: bool,
    pub imm: u16,
    pub x: [u64; DATA_REGS as usize],
}

impl Call {
    pub fn function(&self) -> u32 {
        self.x[0] as u32
    }
}

/// SMCCC's function ID fields (Arm DEN 0028, "Function Identifier").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionId(pub u32);

impl FunctionId {
    /// Bit 31: a fast call.
    pub fn fast(self) -> bool {
        self.0 & (1 << 31) != 0
    }

    /// Bits 29:24: the owning entity.
    pub fn owner(self) -> u32 {
        (self.0 >> 24) & 0x3f
    }

    /// Bits 15:0.
    pub fn number(self) -> u32 {
        self.0 & 0xffff
    }

    /// Bits 23:16 must be zero in a fast call, except the SVE hint bit 16 (SMCCC 1.3).
    pub fn reserved_clear(self) -> bool {
        self.0 & 0x00fe_0000 == 0
    }

    /// A PSCI function ID (standard secure service, 0x00-0x1f).
    pub fn psci(self) -> bool {
        self.fast() && self.owner() == 4 && self.reserved_clear() && self.0 & 0x1_0000 == 0 && self.number() < 0x20
    }

    /// A function of the Arm Architecture Service.
    pub fn arch(self) -> bool {
        self.fast() && self.owner() == 0 && self.reserved_clear() && self.0 & 0x1_0000 == 0
    }

    /// An owner DEN 0028 reserves (7-47): nothing may implement it, so a
    /// fast call is the Unknown Function Identifier.
    pub fn reserved_owner(self) -> bool {
        self.fast() && (7..=47).contains(&self.owner())
    }
}

/// A system register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegOp {
    pub reg: SysReg,
    pub write: bool,
    pub rt: u8,
    pub value: u64,
}

impl SysRegOp {
    pub fn word(&self) -> u32 {
        if self.write {
            insn::msr(self.reg, self.rt)
        } else {
            insn::mrs(self.reg, self.rt)
        }
    }
}

/// A load or store form, for printing and for what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `LDR`/`STR` family with an unsigned offset (0 here).
    Plain(Size, Ext),
    Unscaled(Size, Ext, i16),
    Post(Size, Ext, i16),
    Pre(Size, Ext, i16),
    /// `[Xn, Xm]`.
    RegOffset(Size, Ext),
    Pair(PairKind, PairIndex, bool, i8),
    LoadExclusive(Size, bool),
    StoreExclusive(Size, bool),
    LoadAcquire(Size),
    StoreRelease(Size),
    LoadAcquirePc(Size),
    Atomic(Atomic, Size, bool, bool),
    Cas(Size, bool, bool),
}

/// A generated load or store instruction and the registers it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInsn {
    pub form: Form,
    pub rn: u8,
    pub rt: u8,
    /// The second data register of a pair, the status register of a
    /// store-exclusive, the source of an atomic or `CAS`, or the offset
    /// register of a register-offset access.
    pub r2: u8,
}

impl MemInsn {
    pub fn word(&self) -> u32 {
        let (rn, rt, r2) = (self.rn, self.rt, self.r2);
        match self.form {
            Form::Plain(s, e) => insn::ldst_uimm(s, e, 0, rn, rt),
            Form::Unscaled(s, e, imm) => insn::ldst_imm9(s, e, Index::Unscaled, imm, rn, rt),
            Form::Post(s, e, imm) => insn::ldst_imm9(s, e, Index::Post, imm, rn, rt),
            Form::Pre(s, e, imm) => insn::ldst_imm9(s, e, Index::Pre, imm, rn, rt),
            Form::RegOffset(s, e) => insn::ldst_reg(s, e, r2, rn, rt),
            Form::Pair(k, i, load, imm) => insn::ldstp(k, i, load, imm, r2, rn, rt),
            Form::LoadExclusive(s, a) => insn::ldxr(s, a, rn, rt),
            Form::StoreExclusive(s, l) => insn::stxr(s, l, r2, rn, rt),
            Form::LoadAcquire(s) => insn::ldar(s, rn, rt),
            Form::StoreRelease(s) => insn::stlr(s, rn, rt),
            Form::LoadAcquirePc(s) => insn::ldapr(s, rn, rt),
            Form::Atomic(op, s, a, l) => insn::atomic(op, s, a, l, r2, rn, rt),
            Form::Cas(s, a, l) => insn::cas(s, a, l, r2, rn, rt),
        }
    }

    /// The bytes the access covers from its address.
    pub fn bytes(&self) -> u64 {
        match self.form {
            Form::Plain(s, _)
            | Form::Unscaled(s, _, _)
            | Form::Post(s, _, _)
            | Form::Pre(s, _, _)
            | Form::RegOffset(s, _)
            | Form::LoadExclusive(s, _)
            | Form::StoreExclusive(s, _)
            | Form::LoadAcquire(s)
            | Form::StoreRelease(s)
            | Form::LoadAcquirePc(s)
            | Form::Atomic(_, s, _, _)
            | Form::Cas(s, _, _) => s.bytes(),
            Form::Pair(k, _, _, _) => 2 * k.bytes(),
        }
    }

    /// Whether it may write memory.
    pub fn writes(&self) -> bool {
        match self.form {
            Form::Plain(_, e)
            | Form::Unscaled(_, e, _)
            | Form::Post(_, e, _)
            | Form::Pre(_, e, _)
            | Form::RegOffset(_, e) => e == Ext::Store,
            Form::Pair(_, _, load, _) => !load,
            Form::StoreExclusive(..) | Form::StoreRelease(_) | Form::Atomic(..) | Form::Cas(..) => true,
            Form::LoadExclusive(..) | Form::LoadAcquire(_) | Form::LoadAcquirePc(_) => false,
        }
    }

    /// The base register's value for an access at `addr` (`rm` is the
    /// offset register's value).
    pub fn base_for(&self, addr: u64, rm: u64) -> u64 {
        match self.form {
            Form::Unscaled(_, _, imm) | Form::Pre(_, _, imm) => addr.wrapping_sub(imm as i64 as u64),
            Form::Pair(k, PairIndex::Offset | PairIndex::Pre, _, imm) => {
                addr.wrapping_sub((i64::from(imm) * k.bytes() as i64) as u64)
            }
            Form::RegOffset(..) => addr.wrapping_sub(rm),
            _ => addr,
        }
    }

    /// What a completed access adds to the base register.
    pub fn writeback(&self) -> Option<i64> {
        match self.form {
            Form::Post(_, _, imm) | Form::Pre(_, _, imm) => Some(i64::from(imm)),
            Form::Pair(k, PairIndex::Post | PairIndex::Pre, _, imm) => Some(i64::from(imm) * k.bytes() as i64),
            _ => None,
        }
    }

    /// The registers a completed instruction may write, one bit each (bit 31, XZR, never).
    pub fn clobbers(&self) -> u32 {
        let bit = |r: u8| if r < 31 { 1u32 << r } else { 0 };
        let loads = match self.form {
            Form::Plain(_, e)
            | Form::Unscaled(_, e, _)
            | Form::Post(_, e, _)
            | Form::Pre(_, e, _)
            | Form::RegOffset(_, e) => {
                if e == Ext::Store {
                    0
                } else {
                    bit(self.rt)
                }
            }
            Form::Pair(_, _, load, _) => {
                if load {
                    bit(self.rt) | bit(self.r2)
                } else {
                    0
                }
            }
            Form::LoadExclusive(..) | Form::LoadAcquire(_) | Form::LoadAcquirePc(_) | Form::Atomic(..) => bit(self.rt),
            Form::StoreExclusive(..) | Form::Cas(..) => bit(self.r2),
            Form::StoreRelease(_) => 0,
        };
        loads | if self.writeback().is_some() { bit(self.rn) } else { 0 }
    }

    /// The register a completed store-exclusive writes its status to.
    pub fn status_register(&self) -> Option<u8> {
        matches!(self.form, Form::StoreExclusive(..)).then_some(self.r2).filter(|&r| r < 31)
    }
}

fn size_name(s: Size) -> &'static str {
    match s {
        Size::B => "b",
        Size::H => "h",
        Size::W => "w",
        Size::X => "x",
    }
}

fn ext_name(e: Ext) -> &'static str {
    match e {
        Ext::Store => "str",
        Ext::Load => "ldr",
        Ext::SignX => "ldrs->x",
        Ext::SignW => "ldrs->w",
    }
}

impl fmt::Display for MemInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.form {
            Form::Plain(s, e) => write!(f, "{}.{}", ext_name(e), size_name(s)),
            Form::Unscaled(s, e, i) => write!(f, "{}.{} unscaled #{i}", ext_name(e), size_name(s)),
            Form::Post(s, e, i) => write!(f, "{}.{} post-index #{i}", ext_name(e), size_name(s)),
            Form::Pre(s, e, i) => write!(f, "{}.{} pre-index #{i}", ext_name(e), size_name(s)),
            Form::RegOffset(s, e) => write!(f, "{}.{} [xn, x{}]", ext_name(e), size_name(s), self.r2),
            Form::Pair(k, i, l, imm) => write!(f, "{} {k:?} {i:?} #{imm}", if l { "ldp" } else { "stp" }),
            Form::LoadExclusive(s, a) => write!(f, "ld{}xr.{}", if a { "a" } else { "" }, size_name(s)),
            Form::StoreExclusive(s, l) => write!(f, "st{}xr.{}", if l { "l" } else { "" }, size_name(s)),
            Form::LoadAcquire(s) => write!(f, "ldar.{}", size_name(s)),
            Form::StoreRelease(s) => write!(f, "stlr.{}", size_name(s)),
            Form::LoadAcquirePc(s) => write!(f, "ldapr.{}", size_name(s)),
            Form::Atomic(op, s, a, l) => {
                write!(f, "{op:?}{}{}.{}", if a { "A" } else { "" }, if l { "L" } else { "" }, size_name(s))
            }
            Form::Cas(s, a, l) => {
                write!(f, "cas{}{}.{}", if a { "a" } else { "" }, if l { "l" } else { "" }, size_name(s))
            }
        }?;
        write!(f, " rt=x{} rn=x{} r2=x{} ({:#010x})", self.rt, self.rn, self.r2, self.word())
    }
}

/// A load or store to a device frame or outside the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOp {
    pub insn: MemInsn,
    pub addr: u64,
    pub region: Region,
    /// What the data registers hold (Rt, then the second register).
    pub data: [u64; 2],
    /// The offset register's value for a register-offset access.
    pub rm: u64,
}

/// A load of a read-only register whose value the guest knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownLoad {
    pub insn: MemInsn,
    pub known: Known,
    pub rm: u64,
}

impl KnownLoad {
    /// The value the destination register must hold after the load.
    pub fn expect(&self) -> u64 {
        match self.insn.form {
            Form::Plain(s, e) | Form::Unscaled(s, e, _) | Form::RegOffset(s, e) => e.extend(s, self.known.value),
            _ => Ext::Load.extend(self.known.size, self.known.value),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    SetCtl(u64),
    /// `CVAL` = the counter now + this many microseconds.
    SetCvalRel(i64),
    SetCval(u64),
    SetTval(u32),
    Read,
}

/// The EL1 virtual (`phys` false) or physical timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerOp {
    pub phys: bool,
    pub action: TimerAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WfxOp {
    /// `WFE` with the timer's event stream on (`CNTKCTL_EL1.EVNTI`).
    Wfe { evnti: u8 },
    /// `SEVL; WFE`: returns at once.
    SevlWfe,
    /// `WFI` with the virtual timer due in `after_us` (and, with `sgi`, an
    /// SGI to itself pending first).
    Wfi { after_us: u32, sgi: bool },
    /// `WFIT` with a timeout `timeout_us` ahead (negative: in the past).
    Wfit { timeout_us: i32 },
    /// `WFET` likewise.
    Wfet { timeout_us: i32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// CPU i's MPIDR.
    Cpu(usize),
    /// CPU i's MPIDR with bits outside the affinity fields set.
    CpuWithJunk(usize, u64),
    /// An MPIDR no CPU has.
    Absent(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The guest's secondary entry, with the CPU's index as context ID.
    Job,
    /// An address outside RAM, with a random context ID.
    Outside(u64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciOp {
    /// `CPU_ON`; `junk` goes into the upper halves of an SMC32 call's arguments.
    CpuOn {
        smc64: bool,
        target: Target,
        entry: Entry,
        junk: u64,
    },
    AffinityInfo {
        smc64: bool,
        target: Target,
        level: u64,
    },
    Features(u32),
    Version,
    MigrateInfoType,
}

/// Most commands one flood writes.
pub const FLOOD_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItsOp {
    /// `n` commands ([`flood_commands`] of `stream`) written to the queue
    /// and `GITS_CWRITER` moved past them.
    Flood {
        stream: u64,
        n: usize,
    },
    /// `GITS_BASER<n>` = `value` (with the ITS disabled first if `disable`).
    Baser {
        n: usize,
        value: u64,
        disable: bool,
    },
    Cbaser {
        value: u64,
        disable: bool,
    },
    /// `GITS_CTLR.Enabled`.
    Enable(bool),
    /// An LPI's property byte in the guest's table.
    Property {
        lpi: u32,
        config: u8,
    },
    /// A write of `GITS_TRANSLATER`.
    Translater(u32),
    /// The guest's own queue and tables back (ITS disabled, set, enabled).
    Restore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Call(Call),
    SysReg(SysRegOp),
    Mem(MemOp),
    Known(KnownLoad),
    /// An instruction fetch from an address outside the map.
    Fetch(u64),
    Timer(TimerOp),
    Wfx(WfxOp),
    Psci(PsciOp),
    Its(ItsOp),
}

impl Op {
    /// The operation's kind, for the per-kind counts.
    pub fn kind(&self) -> Kind {
        match self {
            Op::Call(_) => Kind::Call,
            Op::SysReg(_) => Kind::SysReg,
            Op::Mem(m) if m.region == Region::Outside => Kind::Outside,
            Op::Mem(_) => Kind::Mmio,
            Op::Known(_) => Kind::Known,
            Op::Fetch(_) => Kind::Fetch,
            Op::Timer(_) => Kind::Timer,
            Op::Wfx(_) => Kind::Wfx,
            Op::Psci(_) => Kind::Psci,
            Op::Its(_) => Kind::Its,
        }
    }
}

/// Kinds of operation, as the report counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Call = 0,
    SysReg,
    Mmio,
    Outside,
    Known,
    Fetch,
    Timer,
    Wfx,
    Psci,
    Its,
}

pub const KINDS: [Kind; 10] = [
    Kind::Call,
    Kind::SysReg,
    Kind::Mmio,
    Kind::Outside,
    Kind::Known,
    Kind::Fetch,
    Kind::Timer,
    Kind::Wfx,
    Kind::Psci,
    Kind::Its,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Call => "hvc-smc",
            Kind::SysReg => "sysreg",
            Kind::Mmio => "mmio",
            Kind::Outside => "outside-map",
            Kind::Known => "known-registers",
            Kind::Fetch => "fetch-outside",
            Kind::Timer => "timers",
            Kind::Wfx => "wfx",
            Kind::Psci => "psci",
            Kind::Its => "its",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Call(c) => write!(
                f,
                "{} #{:#x} x0={:#x} x1={:#x} x2={:#x} x3={:#x}",
                if c.smc { "smc" } else { "hvc" },
                c.imm,
                c.x[0],
                c.x[1],
                c.x[2],
                c.x[3]
            ),
            Op::SysReg(s) => {
                if s.write {
                    write!(f, "msr {}, x{} = {:#x} ({:#010x})", s.reg, s.rt, s.value, s.word())
                } else {
                    write!(f, "mrs x{}, {} ({:#010x})", s.rt, s.reg, s.word())
                }
            }
            Op::Mem(m) => {
                write!(f, "{} at {:#x} ({}) data {:#x} {:#x}", m.insn, m.addr, m.region.name(), m.data[0], m.data[1])
            }
            Op::Known(k) => {
                write!(f, "{} of {} at {:#x}, expecting {:#x}", k.insn, k.known.name, k.known.addr, k.expect())
            }
            Op::Fetch(a) => write!(f, "instruction fetch from {a:#x}"),
            Op::Timer(t) => write!(f, "{} timer {:?}", if t.phys { "physical" } else { "virtual" }, t.action),
            Op::Wfx(w) => write!(f, "{w:?}"),
            Op::Psci(p) => write!(f, "PSCI {p:?}"),
            Op::Its(ItsOp::Flood { stream, n }) => write!(f, "ITS flood of {n} commands (stream {stream:#x})"),
            Op::Its(i) => write!(f, "ITS {i:?}"),
        }
    }
}

/// Draws one operation for CPU `me` in role `role`.
pub fn draw(rng: &mut Rng, cx: &Context, role: Role, me: usize) -> Op {
    #[derive(Clone, Copy)]
    enum K {
        Call,
        SysReg,
        Mem,
        Known,
        Fetch,
        Timer,
        Wfx,
        Psci,
        Its,
    }
    let kind = match role {
        Role::Boot => rng.weighted(&[
            (14, K::Call),
            (20, K::SysReg),
            (26, K::Mem),
            (5, K::Known),
            (2, K::Fetch),
            (8, K::Timer),
            (6, K::Wfx),
            (7, K::Psci),
            (12, K::Its),
        ]),
        Role::Secondary => rng.weighted(&[
            (20, K::Call),
            (30, K::SysReg),
            (30, K::Mem),
            (5, K::Known),
            (2, K::Fetch),
            (8, K::Timer),
            (5, K::Wfx),
        ]),
    };
    match kind {
        K::Call => Op::Call(draw_call(rng)),
        K::SysReg => Op::SysReg(draw_sysreg(rng)),
        K::Known => match draw_known(rng, cx) {
            Some(k) => Op::Known(k),
            None => Op::Mem(draw_mem(rng, cx)),
        },
        K::Mem => Op::Mem(draw_mem(rng, cx)),
        K::Fetch => Op::Fetch(outside_addr(rng, &cx.map) & !3),
        K::Timer => Op::Timer(draw_timer(rng)),
        K::Wfx => Op::Wfx(draw_wfx(rng, cx, role)),
        K::Psci => Op::Psci(draw_psci(rng, cx, me)),
        K::Its => match cx.its {
            Some(i) => Op::Its(draw_its(rng, cx, &i)),
            None => Op::Mem(draw_mem(rng, cx)),
        },
    }
}

/// A function ID: PSCI's and the Arm Architecture Service's often, every
/// owner and random words too; the excluded ones become `SMCCC_VERSION`.
pub fn draw_function(rng: &mut Rng) -> u32 {
    let conv = if rng.chance(50) { 1 << 30 } else { 0 };
    let f: u32 = match rng.below(10) {
        0..=2 => 0x8400_0000 | conv | rng.below(0x20) as u32,
        3 => {
            let small = rng.below(16) as u32;
            0x8000_0000 | rng.pick(&[0, 1, 2, 0x3fff, 0x7fff, 0x8000, small])
        }
        4 => 0x8000_0000 | conv | ((rng.below(64) as u32) << 24) | rng.below(0x40) as u32,
        5 => 0x8600_0000 | conv | rng.below(0x100) as u32,
        6 => rng.pick(&[0xc300_0099, 0xc600_00ff, 0x4b00_0000, 0x8400_0050, 0xc400_0020, 0x8400_00f0]),
        7 => rng.word() as u32 & 0x7fff_ffff,
        _ => rng.word() as u32,
    };
    if excluded_call(f).is_some() {
        0x8000_0000
    } else {
        f
    }
}

pub fn draw_call(rng: &mut Rng) -> Call {
    let mut x = [0u64; DATA_REGS as usize];
    for v in x.iter_mut() {
        *v = rng.value();
    }
    let f = draw_function(rng);
    // W0 is the function ID; the upper half of X0 is sometimes junk.
    x[0] = if rng.chance(20) { (rng.word() << 32) | u64::from(f) } else { u64::from(f) };
    let imm = if rng.chance(70) { 0 } else { rng.word() as u16 };
    Call { smc: rng.chance(30), imm, x }
}

/// Encodings worth more than their share of a uniform draw: (op1, CRn,
/// CRm, op2), 0xff meaning "any".
const INTERESTING: &[(u8, u8, u8, u8)] = &[
    (0, 0, 0, 0xff),    // MIDR, MPIDR, REVIDR, ...
    (0, 0, 0xff, 0xff), // the ID register space (TID3)
    (1, 0, 0, 0xff),    // CCSIDR, CLIDR, AIDR
    (2, 0, 0, 0),       // CSSELR
    (3, 0, 0, 0xff),    // CTR, DCZID
    (0, 1, 0, 0xff),    // SCTLR and friends (reads; writes excluded)
    (0, 1, 2, 0xff),    // ZCR, SMPRI, SMCR
    (0, 2, 1, 0xff),    // pointer authentication keys
    (0, 2, 2, 0xff),
    (0, 2, 3, 0xff),
    (3, 2, 4, 0xff),    // RNDR, RNDRRS
    (0, 4, 0, 0xff),    // SPSR_EL1, ELR_EL1
    (0, 4, 2, 0xff),    // SPSel, CurrentEL, PAN, UAO
    (3, 4, 2, 0xff),    // NZCV, DAIF, SVCR, DIT, SSBS, TCO
    (3, 4, 4, 0xff),    // FPCR, FPSR, FPMR
    (0, 4, 6, 0),       // ICC_PMR_EL1
    (0, 5, 0xff, 0xff), // AFSR, ESR, the RAS registers (TERR)
    (0, 6, 0, 0),       // FAR
    (0, 7, 4, 0),       // PAR
    (0, 9, 14, 0xff),   // PMINTENSET/CLR, PMMIR
    (3, 9, 12, 0xff),   // the PMU
    (3, 9, 13, 0xff),
    (3, 9, 14, 0xff),
    (3, 14, 0xff, 0xff),    // PMEVCNTR/TYPER and the generic timer
    (0, 10, 4, 0xff),       // LORegions (TLOR)
    (0, 10, 5, 0xff),       // MPAM
    (0, 12, 1, 0xff),       // ISR, DISR
    (0, 12, 8, 0xff),       // ICC group 0
    (0, 12, 9, 0xff),       // ICC_AP1Rn
    (0, 12, 11, 0xff),      // ICC_DIR, RPR, SGI*R
    (0, 12, 12, 0xff),      // ICC group 1, CTLR, SRE, IGRPEN
    (0, 13, 0, 0xff),       // CONTEXTIDR, SCXTNUM
    (3, 13, 0, 0xff),       // TPIDR_EL0, TPIDRRO_EL0, TPIDR2_EL0, SCXTNUM_EL0
    (3, 13, 0xff, 0xff),    // the activity monitors
    (0, 14, 1, 0),          // CNTKCTL_EL1
    (3, 14, 0, 0xff),       // CNTFRQ, CNTPCT, CNTVCT
    (3, 14, 2, 0xff),       // CNTP_*
    (3, 14, 3, 0xff),       // CNTV_*
    (7, 14, 2, 0xff),       // CNTPS_* (Secure only)
    (4, 0xff, 0xff, 0xff),  // EL2 registers from EL1
    (5, 0xff, 0xff, 0xff),  // the EL12/EL02 aliases
    (6, 0xff, 0xff, 0xff),  // EL3
    (0xff, 11, 0xff, 0xff), // IMPLEMENTATION DEFINED (TIDCP)
    (0xff, 15, 0xff, 0xff),
];

pub fn draw_sysreg(rng: &mut Rng) -> SysRegOp {
    let (op1, crn, crm, op2) = if rng.chance(45) { (0xff, 0xff, 0xff, 0xff) } else { rng.pick(INTERESTING) };
    let mut field = |v: u8, max: u64| if v == 0xff { rng.below(max) as u8 } else { v };
    let reg = SysReg::new(3, field(op1, 8), field(crn, 16), field(crm, 16), field(op2, 8));
    let write = rng.chance(45) && excluded_write(reg).is_none();
    let rt = if rng.chance(8) { 31 } else { rng.below(u64::from(DATA_REGS)) as u8 };
    let value = write_value(reg, rng.value());
    SysRegOp { reg, write, rt, value }
}

/// Distinct registers from x0-x17: `n` of them.
fn distinct_regs<const N: usize>(rng: &mut Rng) -> [u8; N] {
    let mut out = [0u8; N];
    let mut used = 0u32;
    for slot in out.iter_mut() {
        loop {
            let r = rng.below(u64::from(DATA_REGS)) as u8;
            if used & (1 << r) == 0 {
                used |= 1 << r;
                *slot = r;
                break;
            }
        }
    }
    out
}

fn draw_size(rng: &mut Rng) -> Size {
    rng.pick(&Size::ALL)
}

fn draw_ext(rng: &mut Rng, size: Size, store_percent: u64) -> Ext {
    if rng.chance(store_percent) {
        return Ext::Store;
    }
    loop {
        let e = rng.pick(&[Ext::Load, Ext::Load, Ext::SignX, Ext::SignW]);
        if e.valid(size) {
            return e;
        }
    }
}

/// A load or store form and its registers, as `features` allow.
pub fn draw_insn(rng: &mut Rng, features: &Features) -> MemInsn {
    let [rn, mut rt, mut r2] = distinct_regs::<3>(rng);
    #[derive(Clone, Copy)]
    enum F {
        Plain,
        Unscaled,
        Post,
        Pre,
        Reg,
        Pair,
        Excl,
        Ordered,
        Atomic,
        Cas,
    }
    let lse = if features.lse { 10 } else { 0 };
    let f = rng.weighted(&[
        (30, F::Plain),
        (6, F::Unscaled),
        (7, F::Post),
        (7, F::Pre),
        (6, F::Reg),
        (12, F::Pair),
        (8, F::Excl),
        (8, F::Ordered),
        (lse, F::Atomic),
        (lse / 3, F::Cas),
    ]);
    let imm9 = |rng: &mut Rng| rng.range(0, 511) as i16 - 256;
    let form = match f {
        F::Plain => {
            let s = draw_size(rng);
            Form::Plain(s, draw_ext(rng, s, 45))
        }
        F::Unscaled => {
            let s = draw_size(rng);
            Form::Unscaled(s, draw_ext(rng, s, 45), imm9(rng))
        }
        F::Post => {
            let s = draw_size(rng);
            Form::Post(s, draw_ext(rng, s, 45), imm9(rng))
        }
        F::Pre => {
            let s = draw_size(rng);
            Form::Pre(s, draw_ext(rng, s, 45), imm9(rng))
        }
        F::Reg => {
            let s = draw_size(rng);
            Form::RegOffset(s, draw_ext(rng, s, 45))
        }
        F::Pair => {
            let load = rng.chance(55);
            let kind = if load && rng.chance(20) { PairKind::Sw } else { rng.pick(&[PairKind::W, PairKind::X]) };
            let index = rng.pick(&[PairIndex::Offset, PairIndex::Offset, PairIndex::Post, PairIndex::Pre]);
            Form::Pair(kind, index, load, rng.range(0, 127) as i8 - 64)
        }
        F::Excl => {
            let s = draw_size(rng);
            if rng.chance(50) {
                Form::LoadExclusive(s, rng.chance(50))
            } else {
                Form::StoreExclusive(s, rng.chance(50))
            }
        }
        F::Ordered => {
            let s = draw_size(rng);
            match rng.below(3) {
                0 => Form::LoadAcquire(s),
                1 => Form::StoreRelease(s),
                _ if features.lrcpc => Form::LoadAcquirePc(s),
                _ => Form::LoadAcquire(s),
            }
        }
        F::Atomic => Form::Atomic(rng.pick(&Atomic::ALL), draw_size(rng), rng.chance(30), rng.chance(30)),
        F::Cas => Form::Cas(draw_size(rng), rng.chance(30), rng.chance(30)),
    };
    // XZR as a data register sometimes; never where the result would be
    // UNPREDICTABLE or the base.
    if rng.chance(10) {
        rt = 31;
    }
    // (An LDP's two destinations must differ.)
    if matches!(form, Form::Pair(..) | Form::Atomic(..) | Form::Cas(..)) && rt != 31 && rng.chance(10) {
        r2 = 31;
    }
    MemInsn { form, rn, rt, r2 }
}

/// An offset into a frame of `size` bytes for an access of `bytes`: the
/// low registers most often, then the first page, anywhere, the last
/// bytes; aligned to the access, but for one in twenty.
fn draw_offset(rng: &mut Rng, size: u64, bytes: u64) -> u64 {
    let span = size.max(bytes);
    let off = match rng.below(20) {
        0..=6 => rng.below(0x100.min(span)),
        7..=12 => rng.below(0x1000.min(span)),
        13..=16 => rng.below(span),
        _ => span - rng.below(0x40.min(span)) - 1,
    };
    let off = if rng.chance(5) { off } else { off & !(bytes - 1) };
    off.min(span - bytes.min(span))
}

/// An address outside every frame of `map`: anywhere in the IPA space,
/// just past or before a frame, beyond the IPA space, low memory.
pub fn outside_addr(rng: &mut Rng, map: &Map) -> u64 {
    for _ in 0..16 {
        let a = match rng.below(6) {
            0 => rng.below(IPA_SPACE),
            1 | 2 => {
                let f = map.frames()[rng.below(map.frames().len() as u64) as usize];
                if rng.chance(50) {
                    f.base.saturating_add(f.size).saturating_add(rng.below(0x2000))
                } else {
                    f.base.saturating_sub(8 + rng.below(0x2000))
                }
            }
            3 => rng.range(IPA_SPACE, PA_LIMIT - 1),
            4 => rng.below(0x0800_0000),
            _ => rng.below(1 << 32),
        } & !7;
        if map.region_at(a, 16) == Region::Outside {
            return a;
        }
    }
    KNOWN_OUTSIDE
}

/// The UART's data register: a store there would print into the guest's
/// own console lines (the harness reads them), so stores skip past it.
const UART_DATA_BYTES: u64 = 4;

pub fn draw_mem(rng: &mut Rng, cx: &Context) -> MemOp {
    let insn = draw_insn(rng, &cx.features);
    let bytes = insn.bytes();
    let weights = [
        (20, Region::Gicd),
        (if cx.features.gicv3 { 0 } else { 10 }, Region::Gicc),
        (if cx.features.gicv3 { 16 } else { 0 }, Region::Gicr),
        (if cx.features.its { 10 } else { 0 }, Region::Its),
        (8, Region::Uart),
        (8, Region::Virtio),
        (18, Region::Outside),
    ];
    let mut region = rng.weighted(&weights);
    let addr = match cx.map.frame(region) {
        Some(f) if region != Region::Outside => {
            let mut addr = f.base + draw_offset(rng, f.size, bytes);
            if region == Region::Uart && insn.writes() && addr < f.base + UART_DATA_BYTES {
                addr = f.base + UART_DATA_BYTES.max(bytes);
            }
            addr
        }
        _ => {
            region = Region::Outside;
            outside_addr(rng, &cx.map)
        }
    };
    MemOp { insn, addr, region, data: [rng.value(), rng.value()], rm: rng.below(0x1000) }
}

/// A load of a known register, in a form with an instruction syndrome (so
/// a hypervisor can emulate it) and at the register's own width.
pub fn draw_known(rng: &mut Rng, cx: &Context) -> Option<KnownLoad> {
    let count = cx.known().count() as u64;
    if count == 0 {
        return None;
    }
    let known = *cx.known().nth(rng.below(count) as usize)?;
    let [rn, mut rt, r2] = distinct_regs::<3>(rng);
    let s = known.size;
    let ext = if s == Size::W && rng.chance(30) { Ext::SignX } else { Ext::Load };
    let form = match rng.below(6) {
        0 | 1 => Form::Plain(s, ext),
        2 => Form::Unscaled(s, ext, rng.range(0, 511) as i16 - 256),
        3 => Form::RegOffset(s, ext),
        4 => Form::LoadAcquire(s),
        _ if cx.features.lrcpc => Form::LoadAcquirePc(s),
        _ => Form::Plain(s, ext),
    };
    if rng.chance(5) {
        rt = 31;
    }
    Some(KnownLoad { insn: MemInsn { form, rn, rt, r2 }, known, rm: rng.below(0x1000) })
}

pub fn draw_timer(rng: &mut Rng) -> TimerOp {
    let phys = rng.chance(35);
    let action = match rng.below(10) {
        0..=2 => TimerAction::SetCtl(if rng.chance(70) { rng.below(8) } else { rng.value() }),
        3..=4 => TimerAction::SetCvalRel(rng.range(0, 20_000) as i64 - 5_000),
        5 => TimerAction::SetCval(rng.value()),
        6..=7 => TimerAction::SetTval(if rng.chance(50) { rng.below(200_000) as u32 } else { rng.word() as u32 }),
        _ => TimerAction::Read,
    };
    TimerOp { phys, action }
}

pub fn draw_wfx(rng: &mut Rng, cx: &Context, role: Role) -> WfxOp {
    let timeout = |rng: &mut Rng| if rng.chance(10) { -(rng.below(1000) as i32) } else { rng.below(500) as i32 };
    let wfxt = if cx.features.wfxt { 20 } else { 0 };
    #[derive(Clone, Copy)]
    enum W {
        Wfe,
        Sevl,
        Wfi,
        Wfit,
        Wfet,
    }
    let w = match role {
        Role::Boot => rng.weighted(&[(20, W::Wfe), (15, W::Sevl), (35, W::Wfi), (20, W::Wfit), (wfxt / 2, W::Wfet)]),
        Role::Secondary => rng.weighted(&[(20, W::Wfe), (15, W::Sevl), (wfxt, W::Wfit), (wfxt / 2, W::Wfet)]),
    };
    match w {
        W::Wfe => WfxOp::Wfe { evnti: rng.range(0, 8) as u8 },
        W::Sevl => WfxOp::SevlWfe,
        W::Wfi => WfxOp::Wfi { after_us: rng.below(500) as u32, sgi: rng.chance(15) },
        W::Wfit => WfxOp::Wfit { timeout_us: timeout(rng) },
        W::Wfet => WfxOp::Wfet { timeout_us: timeout(rng) },
    }
}

/// An MPIDR in the affinity fields that no CPU of `cx` has.
fn absent_mpidr(rng: &mut Rng, cx: &Context) -> u64 {
    for _ in 0..8 {
        let m = match rng.below(3) {
            0 => rng.range(cx.cpus as u64, 0xff),
            1 => rng.word() & ferrovisor_shared::gic::MPIDR_AFFINITY_MASK,
            _ => (rng.below(4) << 8) | (rng.below(4) << 16) | rng.below(0x100),
        };
        if !cx.mpidr[..cx.cpus].contains(&m) {
            return m;
        }
    }
    0xff_00ff_ff00
}

fn draw_target(rng: &mut Rng, cx: &Context) -> Target {
    let cpu = rng.below(cx.cpus as u64) as usize;
    match rng.below(10) {
        0..=5 => Target::Cpu(cpu),
        6 => {
            // Bits 31:24 or 63:40: outside the affinity fields.
            let junk = if rng.chance(50) { 1 << rng.range(24, 31) } else { 1 << rng.range(40, 63) };
            Target::CpuWithJunk(cpu, junk)
        }
        _ => Target::Absent(absent_mpidr(rng, cx)),
    }
}

/// The entry point a `CPU_ON` sees for `entry`: an SMC32 call passes W2,
/// the low half.
pub fn effective_entry(entry: u64, smc64: bool) -> u64 {
    if smc64 {
        entry
    } else {
        entry & 0xffff_ffff
    }
}

/// An entry point outside RAM, as the call sees it: just past RAM, below
/// it, anywhere outside the map. (A 64-bit address whose low half is in RAM
/// would start an SMC32 call's CPU on whatever that RAM holds, so SMC32
/// entries come from the first 4 GiB.)
fn bad_entry(rng: &mut Rng, cx: &Context, smc64: bool) -> u64 {
    let ram = cx.ram();
    for _ in 0..8 {
        let a = match rng.below(3) {
            0 => ram.base + ram.size + rng.below(0x1000) * 4,
            1 => rng.below(ram.base) & !3,
            _ if smc64 => outside_addr(rng, &cx.map),
            _ => rng.below(1 << 32) & !3,
        };
        if cx.map.region_at(effective_entry(a, smc64), 4) != Region::Ram {
            return a;
        }
    }
    ram.base.saturating_sub(4)
}

pub fn draw_psci(rng: &mut Rng, cx: &Context, _me: usize) -> PsciOp {
    match rng.below(10) {
        0..=4 => {
            let target = draw_target(rng, cx);
            let smc64 = rng.chance(60);
            let entry =
                if rng.chance(60) { Entry::Job } else { Entry::Outside(bad_entry(rng, cx, smc64), rng.value()) };
            PsciOp::CpuOn { smc64, target, entry, junk: rng.word() }
        }
        5..=7 => PsciOp::AffinityInfo { smc64: rng.chance(50), target: draw_target(rng, cx), level: rng.below(6) },
        8 => PsciOp::Features(draw_function(rng)),
        _ => {
            if rng.chance(50) {
                PsciOp::Version
            } else {
                PsciOp::MigrateInfoType
            }
        }
    }
}

/// One ITS command: the ones a guest sends (MAPD, MAPC, MAPTI, MAPI, INT,
/// CLEAR, DISCARD, INV, MOVI, INVALL, MOVALL, SYNC) with fields mostly in
/// range, GICv4 ones, unknown opcodes and random words.
pub fn its_command(rng: &mut Rng, cx: &Context, i: &ItsCx) -> [u64; 4] {
    let device = if rng.chance(80) { rng.below(8) as u32 } else { rng.word() as u32 };
    let event = if rng.chance(80) { rng.below(32) as u32 } else { rng.word() as u32 };
    let icid = if rng.chance(80) { rng.below(cx.cpus as u64 + 2) as u16 } else { rng.word() as u16 };
    let lpi = if rng.chance(85) { ferrovisor_shared::gic::LPI_BASE + rng.below(256) as u32 } else { rng.word() as u32 };
    let rd = if rng.chance(80) { i.rdbase[rng.below(cx.cpus as u64) as usize] } else { rng.value() };
    let itt = if rng.chance(70) { i.scratch + rng.below(64) * 0x100 } else { rng.value() };
    let c = match rng.below(20) {
        0..=2 => Command::mapd(device, itt, rng.range(1, 32) as u8, rng.chance(85)),
        3 => Command::mapc(icid, rd, rng.chance(85)),
        4..=5 => Command::mapti(device, event, lpi, icid),
        6 => Command::mapi(device, event, icid),
        7..=8 => Command::int(device, event),
        9 => Command::clear(device, event),
        10 => Command::discard(device, event),
        11 => Command::inv(device, event),
        12 => Command::movi(device, event, icid),
        13 => Command::invall(icid),
        14 => Command::movall(rd, i.rdbase[rng.below(cx.cpus as u64) as usize]),
        15 => Command::sync(rd),
        16 => Command([u64::from(rng.range(0x20, 0x2f) as u8) | (rng.word() << 8), rng.word(), rng.word(), rng.word()]),
        17 => Command([u64::from(rng.word() as u8) | (rng.word() << 8), rng.word(), rng.word(), rng.word()]),
        _ => Command([rng.word(), rng.word(), rng.word(), rng.word()]),
    };
    c.0
}

/// The commands of a flood drawn with `stream`.
pub fn flood_commands<'a>(stream: u64, n: usize, cx: &'a Context, i: &'a ItsCx) -> impl Iterator<Item = [u64; 4]> + 'a {
    let mut rng = Rng::new(stream);
    (0..n.min(FLOOD_MAX)).map(move |_| its_command(&mut rng, cx, i))
}

/// A table address for a `GITS_BASER<n>` or `GITS_CBASER`: the guest's
/// scratch area, the end of RAM (so the table runs past it), outside RAM,
/// unaligned, zero, random.
fn table_pa(rng: &mut Rng, cx: &Context, i: &ItsCx) -> u64 {
    let ram = cx.ram();
    match rng.below(6) {
        0 => i.scratch,
        1 => ram.base + ram.size - rng.range(1, 16) * 0x1000,
        2 => outside_addr(rng, &cx.map),
        3 => i.scratch + rng.below(0x1000),
        4 => 0,
        _ => rng.word() & 0x000f_ffff_ffff_f000,
    }
}

pub fn draw_its(rng: &mut Rng, cx: &Context, i: &ItsCx) -> ItsOp {
    match rng.below(20) {
        0..=10 => ItsOp::Flood { stream: rng.word(), n: rng.range(1, FLOOD_MAX as u64) as usize },
        11..=12 => {
            let pa = table_pa(rng, cx, i);
            // Valid, Indirect, Page_Size and Size random; the address field
            // as the 4 KiB layout has it.
            let value = (rng.word() & 0xc000_0000_0000_03ff) | (pa & 0x0000_ffff_ffff_f000);
            ItsOp::Baser { n: rng.below(8) as usize, value, disable: rng.chance(60) }
        }
        13 => {
            let pa = table_pa(rng, cx, i);
            let value = (rng.word() & (its::CBASER_VALID | its::CBASER_SIZE)) | (pa & its::CBASER_PA);
            ItsOp::Cbaser { value, disable: rng.chance(60) }
        }
        14 => ItsOp::Enable(rng.chance(70)),
        15..=16 => {
            ItsOp::Property { lpi: ferrovisor_shared::gic::LPI_BASE + rng.below(256) as u32, config: rng.word() as u8 }
        }
        17 => ItsOp::Translater(if rng.chance(80) { rng.below(32) as u32 } else { rng.word() as u32 }),
        _ => ItsOp::Restore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(gicv3: bool) -> Context {
        let mut map = Map::new();
        map.add(Region::Ram, 0x4000_0000, 64 << 20);
        map.add(Region::Gicd, 0x0800_0000, 0x1_0000);
        if gicv3 {
            map.add(Region::Its, 0x0808_0000, 0x2_0000);
            map.add(Region::Gicr, 0x080a_0000, 0x4_0000);
        } else {
            map.add(Region::Gicc, 0x0801_0000, 0x2000);
        }
        map.add(Region::Uart, 0x0900_0000, 0x1000);
        map.add(Region::Virtio, 0x0a00_0000, 0x4000);
        let mut known = [None; MAX_KNOWN];
        known[0] = Some(Known { addr: 0x0900_0ff4, size: Size::W, value: 0xf0, name: "UARTPCellID1" });
        Context {
            map,
            features: Features { gicv3, its: gicv3, lse: true, lrcpc: true, wfxt: false },
            known,
            cpus: 2,
            mpidr: [0, 1, 0, 0, 0, 0, 0, 0],
            entry: 0x4008_1000,
            its: gicv3.then_some(ItsCx { base: 0x0808_0000, rdbase: [0, 1, 0, 0, 0, 0, 0, 0], scratch: 0x4010_0000 }),
        }
    }

    #[test]
    fn the_map() {
        let cx = context(true);
        assert_eq!(cx.map.region_at(0x0800_0000, 4), Region::Gicd);
        assert_eq!(cx.map.region_at(0x0800_fffc, 8), Region::Gicd, "overlapping the end");
        assert_eq!(cx.map.region_at(0x0801_0000, 4), Region::Outside);
        assert_eq!(cx.map.region_at(0x07ff_fffc, 8), Region::Gicd, "overlapping the start");
        assert_eq!(cx.map.region_at(0x4400_0000, 8), Region::Outside, "just past RAM");
        assert_eq!(cx.map.region_at(0x43ff_fff8, 8), Region::Ram);
    }

    /// What the guest must never do, over many draws of every seed.
    #[test]
    fn draws_keep_the_rules() {
        for gicv3 in [false, true] {
            let cx = context(gicv3);
            let uart = cx.map.frame(Region::Uart).unwrap();
            for op in 0..20_000u64 {
                let mut rng = Rng::for_op(op % 7, op, op % 3);
                let role = if op % 5 == 0 { Role::Secondary } else { Role::Boot };
                match draw(&mut rng, &cx, role, 0) {
                    Op::Mem(m) => {
                        let region = cx.map.region_at(m.addr, m.insn.bytes());
                        assert_ne!(region, Region::Ram, "{}", Op::Mem(m));
                        if m.region == Region::Outside {
                            assert_eq!(region, Region::Outside, "{}", Op::Mem(m));
                        } else {
                            assert_eq!(region, m.region, "{}", Op::Mem(m));
                        }
                        if m.insn.writes() && m.region == Region::Uart {
                            assert!(m.addr >= uart.base + 4, "a store to the UART's data register: {}", Op::Mem(m));
                        }
                        assert!(m.insn.rn < DATA_REGS, "base x{}", m.insn.rn);
                        assert!(m.insn.rt != m.insn.rn && m.insn.r2 != m.insn.rn);
                        if !gicv3 {
                            assert!(!matches!(m.region, Region::Gicr | Region::Its));
                        }
                    }
                    Op::SysReg(s) => {
                        assert_eq!(s.reg.op0, 3);
                        if s.write {
                            assert!(excluded_write(s.reg).is_none(), "write of an excluded {}", s.reg);
                            if s.reg == super::super::ICC_BPR1_EL1 {
                                assert!(s.value <= 7);
                            }
                        }
                    }
                    Op::Call(c) => assert!(excluded_call(c.function()).is_none(), "{:#x}", c.function()),
                    Op::Fetch(a) => assert_eq!(cx.map.region_at(a, 4), Region::Outside),
                    Op::Psci(PsciOp::CpuOn { entry: Entry::Outside(a, _), smc64, .. }) => {
                        let e = effective_entry(a, smc64);
                        assert_ne!(cx.map.region_at(e, 4), Region::Ram, "CPU_ON into RAM at {e:#x} ({a:#x})")
                    }
                    Op::Psci(PsciOp::CpuOn { target: Target::Absent(m), .. })
                    | Op::Psci(PsciOp::AffinityInfo { target: Target::Absent(m), .. }) => {
                        assert!(!cx.mpidr[..cx.cpus].contains(&m))
                    }
                    Op::Its(_) => assert!(gicv3, "ITS operations without an ITS"),
                    Op::Wfx(WfxOp::Wfi { .. }) => assert_eq!(role, Role::Boot),
                    Op::Wfx(WfxOp::Wfit { .. } | WfxOp::Wfet { .. }) if role == Role::Secondary => {
                        panic!("WFIT on a secondary without FEAT_WFxT")
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn every_kind_is_drawn() {
        let cx = context(true);
        let mut seen = [0u32; KINDS.len()];
        for op in 0..5000 {
            seen[draw(&mut Rng::for_op(1, op, 0), &cx, Role::Boot, 0).kind() as usize] += 1;
        }
        for k in KINDS {
            assert!(seen[k as usize] > 20, "{} drawn {} times", k.name(), seen[k as usize]);
        }
    }

    #[test]
    fn drawing_is_deterministic() {
        let cx = context(true);
        for op in 0..500 {
            let a = draw(&mut Rng::for_op(42, op, 0), &cx, Role::Boot, 0);
            let b = draw(&mut Rng::for_op(42, op, 0), &cx, Role::Boot, 0);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn outside_addresses_are_outside() {
        let cx = context(false);
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let a = outside_addr(&mut rng, &cx.map);
            assert_eq!(cx.map.region_at(a, 16), Region::Outside, "{a:#x}");
            assert!(a < PA_LIMIT && a.is_multiple_of(8));
        }
        assert_eq!(cx.map.region_at(KNOWN_OUTSIDE, 16), Region::Outside);
    }

    #[test]
    fn base_registers_and_writeback() {
        let m = |form| MemInsn { form, rn: 1, rt: 2, r2: 3 };
        let pre = m(Form::Pre(Size::X, Ext::Load, -8));
        assert_eq!(pre.base_for(0x1000, 0), 0x1008);
        assert_eq!(pre.writeback(), Some(-8));
        assert_eq!(pre.clobbers(), 0b110);
        let post = m(Form::Post(Size::W, Ext::Store, 4));
        assert_eq!(post.base_for(0x1000, 0), 0x1000);
        assert_eq!((post.writeback(), post.clobbers(), post.writes()), (Some(4), 0b10, true));
        let pair = m(Form::Pair(PairKind::X, PairIndex::Offset, true, -2));
        assert_eq!(pair.base_for(0x1000, 0), 0x1010);
        assert_eq!((pair.bytes(), pair.writeback(), pair.clobbers()), (16, None, 0b1100));
        let reg = m(Form::RegOffset(Size::H, Ext::SignX));
        assert_eq!(reg.base_for(0x1000, 0x10), 0xff0);
        let stxr = m(Form::StoreExclusive(Size::W, false));
        assert_eq!((stxr.clobbers(), stxr.status_register()), (0b1000, Some(3)));
        let stadd = MemInsn { form: Form::Atomic(Atomic::Add, Size::X, false, false), rn: 1, rt: 31, r2: 3 };
        assert_eq!(stadd.clobbers(), 0, "ST<op> writes no register");
        let k = KnownLoad {
            insn: MemInsn { form: Form::Plain(Size::W, Ext::SignX), rn: 1, rt: 2, r2: 3 },
            known: Known { addr: 0, size: Size::W, value: 0x8000_00b1, name: "x" },
            rm: 0,
        };
        assert_eq!(k.expect(), 0xffff_ffff_8000_00b1);
    }

    #[test]
    fn function_ids() {
        assert!(FunctionId(0x8400_0003).psci() && FunctionId(0xc400_0003).psci());
        assert!(!FunctionId(0x8400_0050).psci(), "TRNG is another standard service");
        assert!(FunctionId(0x8000_0001).arch());
        assert!(FunctionId(0x8700_0000).reserved_owner() && FunctionId(0xef00_0001).reserved_owner());
        assert!(!FunctionId(0x0700_0000).reserved_owner(), "a yielding call");
        assert!(!FunctionId(0x8600_0000).reserved_owner(), "vendor hypervisor service");
    }
}
