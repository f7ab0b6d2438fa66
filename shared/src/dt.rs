//! The board as its flattened device tree describes it: memory, reserved
//! ranges, CPUs, PSCI, the console UART, the GIC, the architected timer and
//! the few other facts el2 and the host need.
//!
//! el2 reads this with no heap (and possibly with the MMU off), so [`Board`]
//! parses the blob once into fixed-capacity tables and never allocates.
//! Any byte string is safe to hand to [`Board::from_slice`]: the structure
//! block is validated token by token with bounds checks before anything else
//! looks at it, every later read is bounds-checked again, and a malformed
//! blob gives a [`DtError`] that names the problem; nothing here panics.
//!
//! (The `fdt` 0.1.5 crate is not used for the walk: it panics on malformed
//! input in many places and on well-formed blobs that contain `FDT_NOP`
//! tokens, which QEMU writes when it removes a node.)
//!
//! Device addresses are translated through every ancestor's `ranges`, so on
//! the Raspberry Pi 4 a UART at bus address `0x7e20_1000` under `/soc` is
//! reported at its CPU physical address `0xfe20_1000`.

use core::fmt;
use core::ops::ControlFlow;

use crate::boot::MAX_CPUS;

/// Memory ranges [`Board::memory`] keeps; more are reported by
/// [`Board::memory_ignored`] and left unused.
pub const MAX_MEMORY_REGIONS: usize = 8;
/// Reserved ranges [`Board::reserved`] keeps (after merging overlapping and
/// adjacent ones); more is an error, since handing out reserved memory is not
/// an option.
pub const MAX_RESERVED: usize = 16;
/// The largest `totalsize` accepted (QEMU's blobs are 1 MiB, padding included).
pub const MAX_TOTALSIZE: usize = 2 << 20;
/// The header's `magic`.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the version-17 header.
pub const HEADER_SIZE: usize = 40;
/// Nodes nested deeper than this are rejected.
pub const MAX_DEPTH: usize = 16;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// Why a device tree was refused. `Display` gives the message users see after
/// `ferrovisor: bad device tree: `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtError {
    /// The header is wrong; the text says which field.
    BadHeader(&'static str),
    /// The buffer is shorter than the header's `totalsize`.
    Truncated,
    /// The structure, strings or reservation block is malformed; the text
    /// says how.
    Parse(&'static str),
    /// No `device_type = "memory"` node with a non-empty `reg`.
    NoMemory,
    /// No `/cpus` child with `device_type = "cpu"`.
    NoCpus,
    /// A node lacks a property it must have.
    MissingProperty { node: &'static str, prop: &'static str },
    /// A property has a value that cannot be used.
    BadProperty { node: &'static str, prop: &'static str, why: &'static str },
    /// More than [`MAX_RESERVED`] distinct reserved ranges.
    TooManyReserved,
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHeader(what) => write!(f, "header: {what}"),
            Self::Truncated => f.write_str("blob is shorter than the totalsize its header gives"),
            Self::Parse(what) => f.write_str(what),
            Self::NoMemory => f.write_str("no memory: no node with device_type = \"memory\" and a non-empty reg"),
            Self::NoCpus => f.write_str("no CPUs: /cpus has no child with device_type = \"cpu\""),
            Self::MissingProperty { node, prop } => write!(f, "{node} has no \"{prop}\" property"),
            Self::BadProperty { node, prop, why } => write!(f, "{node} \"{prop}\": {why}"),
            Self::TooManyReserved => write!(
                f,
                "more than {MAX_RESERVED} separate reserved memory ranges (/memreserve/ and /reserved-memory)"
            ),
        }
    }
}

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemRegion {
    pub base: u64,
    pub size: u64,
}

impl MemRegion {
    pub const EMPTY: Self = Self { base: 0, size: 0 };

    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// The range from `start` up to (not including) `end`; empty if `end <= start`.
    pub const fn from_bounds(start: u64, end: u64) -> Self {
        Self { base: start, size: end.saturating_sub(start) }
    }

    /// One past the last byte, saturating at `u64::MAX`.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// Whether the two ranges share a byte.
    pub const fn overlaps(&self, other: &Self) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

/// Which board the root `compatible` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardKind {
    /// `linux,dummy-virt`.
    QemuVirt,
    /// `raspberrypi,4-model-b` or `brcm,bcm2711`.
    RaspberryPi4,
    Other,
}

/// How a CPU is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    /// `enable-method = "psci"`: PSCI `CPU_ON`.
    Psci,
    /// `enable-method = "spin-table"`: write the entry point to
    /// `release_addr`, then `sev`.
    SpinTable { release_addr: u64 },
    /// No enable-method, an unknown one, or a spin table without
    /// `cpu-release-addr`.
    None,
}

/// One `/cpus/cpu@N` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuDesc {
    /// The `reg` value: `MPIDR_EL1`'s affinity fields.
    pub mpidr: u64,
    pub enable_method: EnableMethod,
}

impl CpuDesc {
    const EMPTY: Self = Self { mpidr: 0, enable_method: EnableMethod::None };
}

/// The PSCI conduit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    Smc,
    Hvc,
}

/// The newest PSCI binding the node's `compatible` claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PsciVersion {
    /// `arm,psci`: function ids come from the node, not the standard ones.
    V0_1,
    /// `arm,psci-0.2`: standard function ids.
    V0_2,
    /// `arm,psci-1.0`.
    V1_0,
}

/// The PSCI node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsciDesc {
    pub method: PsciMethod,
    pub version: PsciVersion,
}

/// The UARTs the console drivers know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// `arm,pl011`.
    Pl011,
    /// `brcm,bcm2835-aux-uart`, the Pi's mini UART.
    MiniUart,
}

/// The console UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartDesc {
    pub kind: UartKind,
    /// CPU physical address of the registers.
    pub base: u64,
    /// Size of the register window (`reg`'s size; 0 if it has none).
    pub size: u64,
}

/// The interrupt controller. Every range is a CPU physical address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicDesc {
    /// `arm,cortex-a15-gic`, `arm,gic-400` or `arm,cortex-a7-gic`.
    V2 {
        gicd: MemRegion,
        gicc: MemRegion,
        /// The virtual interface control registers (absent without the
        /// virtualization extensions).
        gich: Option<MemRegion>,
        /// The virtual CPU interface.
        gicv: Option<MemRegion>,
        /// INTID of the maintenance interrupt (older Pi device trees omit it).
        maintenance_irq: Option<u32>,
    },
    /// `arm,gic-v3`.
    V3 {
        gicd: MemRegion,
        /// The first redistributor region.
        gicr: MemRegion,
        /// `#redistributor-regions` (1 if absent).
        redist_regions: u32,
        /// The first child compatible with `arm,gic-v3-its`.
        its: Option<MemRegion>,
        maintenance_irq: Option<u32>,
    },
}

/// The architected timer's interrupts, as INTIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerDesc {
    pub secure_phys: u32,
    pub nonsecure_phys: u32,
    pub virt: u32,
    pub hyp_phys: u32,
    /// The EL2 virtual timer (a fifth entry, ARMv8.1 VHE), when listed.
    pub hyp_virt: Option<u32>,
    /// `clock-frequency`, for firmware that does not set `CNTFRQ_EL0`.
    pub clock_frequency: Option<u32>,
}

/// The `compatible` string of a VM node under `/chosen`.
pub const DOMAIN_COMPATIBLE: &str = "ferrovisor,domain";

/// Where a guest's kernel or initrd comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleRef<'a> {
    /// `module-path = "..."`: a file in the guest bundle that arrives as the
    /// host's initrd.
    Path(&'a str),
    /// `reg = <address size>`: a range of host memory the boot loader filled
    /// (as Xen's dom0less modules are given).
    Region(MemRegion),
}

/// One VM described under `/chosen`, in the manner of Xen's dom0less
/// bindings:
///
/// ```text
/// chosen {
///     web {                                   // the VM's name, unless given below
///         compatible = "ferrovisor,domain";
///         ferrovisor,name = "web server";     // optional (`name` is read too)
///         ferrovisor,pinned;                  // optional: vCPU i keeps to one CPU
///         ferrovisor,interrupt-state = <8192>; // optional: its share of the host's
///                                             // interrupt state (ITS devices,
///                                             // translations, LPIs), in entries
///         cpus = <2>;                         // vCPUs, one cell
///         memory = <0x0 0x20000>;             // KiB, 1 or 2 cells (here 128 MiB)
///         #address-cells = <2>;               // for the modules' reg (default 2)
///         #size-cells = <2>;                  // (default 1, as the spec says)
///         kernel {
///             compatible = "multiboot,kernel", "multiboot,module";
///             module-path = "web/kernel";     // a file in the guest bundle, or:
///             // reg = <0x0 0x48000000 0x0 0x800000>;   (host memory)
///             bootargs = "console=ttyAMA0";   // the guest's command line
///         };
///         ramdisk {                           // optional
///             compatible = "multiboot,ramdisk", "multiboot,module";
///             module-path = "web/initrd";
///         };
///     };
/// };
/// ```
///
/// Nodes (domains and modules) whose `status` is neither `okay` nor absent
/// are skipped.
///
/// `dtc` refuses a `name` property that differs from the node's name (the
/// old Open Firmware meaning of `name`), so a name that cannot be a node name
/// goes in `ferrovisor,name`; a plain `name` is still read when there is no
/// `ferrovisor,name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainDesc<'a> {
    /// The node's name under `/chosen`.
    pub node: &'a str,
    /// `ferrovisor,name`, else `name`, else the node name.
    pub name: &'a str,
    pub vcpus: u32,
    /// `memory`, in KiB (non-zero; `memory_kib * 1024` fits a `u64`).
    pub memory_kib: u64,
    pub kernel: ModuleRef<'a>,
    pub initrd: Option<ModuleRef<'a>>,
    /// The kernel module's `bootargs`, or "".
    pub bootargs: &'a str,
    /// `ferrovisor,pinned` is present: each vCPU keeps to one CPU.
    pub pinned: bool,
    /// `ferrovisor,interrupt-state`: entries of the host's interrupt state
    /// reserved for it; `None` for the default share.
    pub interrupt_state: Option<u32>,
}

/// What is wrong with a domain node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainProblem {
    /// The name property (`prop`) is not a non-empty UTF-8 string.
    BadName {
        prop: &'static str,
    },
    MissingCpus,
    /// `cpus` is not one 32-bit cell.
    BadCpus,
    ZeroCpus,
    MissingMemory,
    /// `memory` is not one or two cells.
    BadMemory,
    ZeroMemory,
    /// `memory` KiB do not fit in 64 bits as bytes.
    MemoryTooLarge,
    /// No available child compatible with `multiboot,kernel`.
    NoKernel,
    TwoKernels,
    TwoRamdisks,
    /// A module has neither `module-path` nor `reg`.
    NoModuleSource,
    /// A module has both `module-path` and `reg`.
    TwoModuleSources,
    /// `module-path` is empty or not UTF-8.
    BadModulePath,
    /// The domain node's `#address-cells`/`#size-cells` cannot describe a
    /// 64-bit range (each must be 1 or 2).
    BadCells {
        address_cells: u32,
        size_cells: u32,
    },
    /// `reg` is not exactly one (address, size) pair of the given cells.
    BadReg {
        address_cells: u32,
        size_cells: u32,
    },
    /// `reg` has a zero size.
    EmptyRegion,
    /// `reg` runs past the end of the 64-bit address space.
    RegionOverflow,
    /// The kernel's `bootargs` is not a UTF-8 string.
    BadBootargs,
    /// `ferrovisor,interrupt-state` is not one 32-bit cell.
    BadInterruptState,
    /// The node's structure could not be read.
    Malformed,
}

impl fmt::Display for DomainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadName { prop } => write!(f, "\"{prop}\" is not a non-empty UTF-8 string"),
            Self::MissingCpus => f.write_str("no \"cpus\" property (the vCPU count)"),
            Self::BadCpus => f.write_str("\"cpus\" is not one 32-bit cell"),
            Self::ZeroCpus => f.write_str("\"cpus\" is 0"),
            Self::MissingMemory => f.write_str("no \"memory\" property (the size in KiB)"),
            Self::BadMemory => f.write_str("\"memory\" is not one or two cells (the size in KiB)"),
            Self::ZeroMemory => f.write_str("\"memory\" is 0"),
            Self::MemoryTooLarge => f.write_str("\"memory\" is too large (bytes overflow 64 bits)"),
            Self::NoKernel => f.write_str("no kernel: no child compatible with \"multiboot,kernel\""),
            Self::TwoKernels => f.write_str("more than one child compatible with \"multiboot,kernel\""),
            Self::TwoRamdisks => f.write_str("more than one child compatible with \"multiboot,ramdisk\""),
            Self::NoModuleSource => f.write_str("neither \"module-path\" nor \"reg\""),
            Self::TwoModuleSources => f.write_str("both \"module-path\" and \"reg\" (give one)"),
            Self::BadModulePath => f.write_str("\"module-path\" is not a non-empty UTF-8 string"),
            Self::BadCells { address_cells, size_cells } => write!(
                f,
                "#address-cells = {address_cells}, #size-cells = {size_cells}: each must be 1 or 2 for a module's \"reg\""
            ),
            Self::BadReg { address_cells, size_cells } => write!(
                f,
                "\"reg\" is not one (address, size) pair of {address_cells} + {size_cells} cells \
                 (the domain node's #address-cells and #size-cells)"
            ),
            Self::EmptyRegion => f.write_str("\"reg\" has a zero size"),
            Self::RegionOverflow => f.write_str("\"reg\" runs past the end of the address space"),
            Self::BadBootargs => f.write_str("\"bootargs\" is not a UTF-8 string"),
            Self::BadInterruptState => f.write_str("\"ferrovisor,interrupt-state\" is not one 32-bit cell"),
            Self::Malformed => f.write_str("the node's structure cannot be read"),
        }
    }
}

/// A domain node that cannot be used. `Display` names the node (as
/// `/chosen/<node>`), the module node if the problem is there, and the
/// problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainError<'a> {
    /// The domain node's name under `/chosen`.
    pub node: &'a str,
    /// The module node's name, when the problem is in a module.
    pub module: Option<&'a str>,
    pub problem: DomainProblem,
}

impl fmt::Display for DomainError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/chosen/")?;
        write_printable(f, self.node)?;
        if let Some(module) = self.module {
            f.write_str("/")?;
            write_printable(f, module)?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Writes `s` with anything but printable ASCII as `?`, so a hostile node
/// name cannot send control sequences to the console.
fn write_printable(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        let c = if c.is_ascii_graphic() || c == ' ' { c } else { '?' };
        fmt::Write::write_char(f, c)?;
    }
    Ok(())
}

/// The iterator [`Board::domains`] returns.
#[derive(Clone)]
pub struct Domains<'a> {
    tree: Tree<'a>,
    children: Children<'a>,
}

impl<'a> Iterator for Domains<'a> {
    type Item = Result<DomainDesc<'a>, DomainError<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.tree;
        let node = self.children.by_ref().find(|&n| {
            tree.is_available(n)
                && tree.prop(n, "compatible").is_some_and(|c| strings(c).any(|s| s == DOMAIN_COMPATIBLE))
        })?;
        Some(domain_desc(tree, node))
    }
}

fn domain_desc<'a>(tree: Tree<'a>, node: Node<'a>) -> Result<DomainDesc<'a>, DomainError<'a>> {
    let err = |problem| DomainError { node: node.name, module: None, problem };
    let name = match ["ferrovisor,name", "name"].into_iter().find_map(|p| Some((p, tree.prop(node, p)?))) {
        None => node.name,
        Some((prop, v)) => str_value(v).filter(|s| !s.is_empty()).ok_or(err(DomainProblem::BadName { prop }))?,
    };
    let cpus = tree.prop(node, "cpus").ok_or(err(DomainProblem::MissingCpus))?;
    let vcpus = match cpus.len() {
        4 => be32(cpus, 0).ok_or(err(DomainProblem::BadCpus))?,
        _ => return Err(err(DomainProblem::BadCpus)),
    };
    if vcpus == 0 {
        return Err(err(DomainProblem::ZeroCpus));
    }
    let memory = tree.prop(node, "memory").ok_or(err(DomainProblem::MissingMemory))?;
    let memory_kib = int_value(memory).ok_or(err(DomainProblem::BadMemory))?;
    if memory_kib == 0 {
        return Err(err(DomainProblem::ZeroMemory));
    }
    if memory_kib.checked_mul(1024).is_none() {
        return Err(err(DomainProblem::MemoryTooLarge));
    }
    let (mut kernel, mut initrd) = (None, None);
    let mut children = Children::of(tree, Some(node));
    for child in children.by_ref() {
        if !tree.is_available(child) {
            continue;
        }
        let compat = tree.prop(child, "compatible").unwrap_or(&[]);
        let (is_kernel, is_ramdisk) = strings(compat)
            .fold((false, false), |(k, r), c| (k || c == "multiboot,kernel", r || c == "multiboot,ramdisk"));
        let slot = match (is_kernel, is_ramdisk) {
            (true, _) if kernel.is_some() => return Err(err(DomainProblem::TwoKernels)),
            (true, _) => &mut kernel,
            (false, true) if initrd.is_some() => return Err(err(DomainProblem::TwoRamdisks)),
            (false, true) => &mut initrd,
            (false, false) => continue,
        };
        let module = module_ref(tree, node, child).map_err(|problem| DomainError {
            node: node.name,
            module: Some(child.name),
            problem,
        })?;
        *slot = Some((child, module));
    }
    if children.broken {
        return Err(err(DomainProblem::Malformed));
    }
    let (kernel_node, kernel) = kernel.ok_or(err(DomainProblem::NoKernel))?;
    let bootargs = match tree.prop(kernel_node, "bootargs") {
        None => "",
        Some(v) => str_value(v).ok_or(DomainError {
            node: node.name,
            module: Some(kernel_node.name),
            problem: DomainProblem::BadBootargs,
        })?,
    };
    let pinned = tree.prop(node, "ferrovisor,pinned").is_some();
    let interrupt_state = match tree.prop(node, "ferrovisor,interrupt-state") {
        None => None,
        Some(v) if v.len() == 4 => Some(be32(v, 0).ok_or(err(DomainProblem::BadInterruptState))?),
        Some(_) => return Err(err(DomainProblem::BadInterruptState)),
    };
    Ok(DomainDesc {
        node: node.name,
        name,
        vcpus,
        memory_kib,
        kernel,
        initrd: initrd.map(|(_, m)| m),
        bootargs,
        pinned,
        interrupt_state,
    })
}

/// A module node's `module-path` or `reg` (in the domain node's cells).
fn module_ref<'a>(tree: Tree<'a>, domain: Node<'a>, module: Node<'a>) -> Result<ModuleRef<'a>, DomainProblem> {
    match (tree.prop(module, "module-path"), tree.prop(module, "reg")) {
        (None, None) => Err(DomainProblem::NoModuleSource),
        (Some(_), Some(_)) => Err(DomainProblem::TwoModuleSources),
        (Some(path), None) => match str_value(path) {
            Some(p) if !p.is_empty() => Ok(ModuleRef::Path(p)),
            _ => Err(DomainProblem::BadModulePath),
        },
        (None, Some(reg)) => {
            let (address_cells, size_cells) = tree.cells(domain);
            if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
                return Err(DomainProblem::BadCells { address_cells, size_cells });
            }
            let bad = DomainProblem::BadReg { address_cells, size_cells };
            if reg.len() != 4 * (address_cells + size_cells) as usize {
                return Err(bad);
            }
            let base = read_cells(reg, 0, address_cells).ok_or(bad)?;
            let size = read_cells(reg, address_cells, size_cells).ok_or(bad)?;
            if size == 0 {
                return Err(DomainProblem::EmptyRegion);
            }
            // `end()` saturates; a region ending exactly at 2^64 is refused too.
            if base.checked_add(size).is_none() {
                return Err(DomainProblem::RegionOverflow);
            }
            Ok(ModuleRef::Region(MemRegion::new(base, size)))
        }
    }
}

/// The child nodes of one node, in order; nothing if the node is `None`.
/// Sets `broken` if the structure could not be read to the node's end.
#[derive(Clone)]
struct Children<'a> {
    tree: Tree<'a>,
    /// Where the next token of the parent's body is; `None` when done.
    off: Option<usize>,
    broken: bool,
}

impl<'a> Children<'a> {
    fn of(tree: Tree<'a>, parent: Option<Node<'a>>) -> Self {
        Self { tree, off: parent.map(|p| p.props), broken: false }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        loop {
            let off = self.off?;
            match self.tree.token(off) {
                Ok((Token::Prop(..), next)) => self.off = Some(next),
                Ok((Token::Begin(name), next)) => {
                    self.off = self.tree.skip_subtree(next);
                    self.broken |= self.off.is_none();
                    return Some(Node { name, props: next });
                }
                Ok((Token::End, _)) => self.off = None,
                Ok((Token::Eof, _)) | Err(_) => {
                    self.off = None;
                    self.broken = true;
                }
            }
        }
    }
}

/// The board description read from a device tree blob.
#[derive(Clone, Copy)]
pub struct Board<'a> {
    blob: &'a [u8],
    boot_cpuid_phys: u32,
    model: &'a str,
    compatible: &'a str,
    kind: BoardKind,
    memory: RegionSet<MAX_MEMORY_REGIONS>,
    memory_ignored: usize,
    reserved: RegionSet<MAX_RESERVED>,
    cpus: [CpuDesc; MAX_CPUS],
    cpu_count: usize,
    cpus_ignored: usize,
    psci: Option<PsciDesc>,
    console: Option<UartDesc>,
    gic: Option<GicDesc>,
    timer: Option<TimerDesc>,
    pmu_intid: Option<u32>,
    bootargs: &'a str,
    initrd: Option<MemRegion>,
    watchdog: Option<u64>,
    tree: Tree<'a>,
    chosen: Option<Node<'a>>,
}

impl<'a> Board<'a> {
    /// Parses the blob at `addr`, reading its header first to learn its size.
    ///
    /// # Safety
    /// `addr` points to a device tree blob: its 40-byte header is readable,
    /// and when the header carries the device tree magic and a `totalsize` of
    /// at most [`MAX_TOTALSIZE`], `totalsize` bytes from `addr` are readable
    /// and stay unchanged for `'a`. `addr` need not be aligned.
    ///
    /// # Errors
    /// As [`Board::from_slice`]; also a zero `addr`.
    pub unsafe fn from_addr(addr: usize) -> Result<Self, DtError> {
        if addr == 0 {
            return Err(DtError::BadHeader("device tree address is 0"));
        }
        // SAFETY: the caller guarantees the header is readable.
        let head = unsafe { core::slice::from_raw_parts(addr as *const u8, HEADER_SIZE) };
        let totalsize = check_magic_and_size(head)?;
        // SAFETY: the magic is right and `totalsize` is within the bound, so the
        // caller guarantees `totalsize` bytes are readable and stable for 'a.
        let blob = unsafe { core::slice::from_raw_parts(addr as *const u8, totalsize) };
        Self::from_slice(blob)
    }

    /// Parses a device tree blob (`bytes` may be longer than its `totalsize`).
    ///
    /// # Errors
    /// A bad header, a truncated or malformed blob, no memory, no CPUs, an
    /// unusable `/cpus` `#address-cells` or `reg`, or more reserved ranges
    /// than the table holds; each named in the error's message.
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, DtError> {
        let header = Header::parse(bytes)?;
        let blob = bytes.get(..header.totalsize).ok_or(DtError::Truncated)?;
        let tree = Tree {
            structs: blob.get(header.structs.clone()).ok_or(DtError::Truncated)?,
            strings: blob.get(header.strings.clone()).ok_or(DtError::Truncated)?,
        };
        tree.validate()?;
        let mut board = Self {
            blob,
            boot_cpuid_phys: header.boot_cpuid_phys,
            model: "unknown board",
            compatible: "",
            kind: BoardKind::Other,
            memory: RegionSet::new(),
            memory_ignored: 0,
            reserved: RegionSet::new(),
            cpus: [CpuDesc::EMPTY; MAX_CPUS],
            cpu_count: 0,
            cpus_ignored: 0,
            psci: None,
            console: None,
            gic: None,
            timer: None,
            pmu_intid: None,
            bootargs: "",
            initrd: None,
            watchdog: None,
            tree,
            chosen: None,
        };
        board.read_memreserve(blob, header.rsvmap)?;
        let mut scan = Scan::default();
        if let Some(err) = tree.walk(|node, anc| board.visit(&tree, &mut scan, node, anc)) {
            return Err(err);
        }
        board.finish(&tree, &scan)?;
        Ok(board)
    }

    /// `/model`, else the first root `compatible` string, else "unknown board".
    pub fn model(&self) -> &'a str {
        self.model
    }

    /// The first root `compatible` string ("" if none).
    pub fn compatible(&self) -> &'a str {
        self.compatible
    }

    pub fn kind(&self) -> BoardKind {
        self.kind
    }

    /// RAM, sorted by address, overlapping and adjacent ranges merged.
    pub fn memory(&self) -> &[MemRegion] {
        self.memory.as_slice()
    }

    /// Memory ranges past [`MAX_MEMORY_REGIONS`] that were left out.
    pub fn memory_ignored(&self) -> usize {
        self.memory_ignored
    }

    /// `/memreserve/` entries and the `reg` of every `/reserved-memory` child
    /// (whether `no-map` or not), sorted, overlapping and adjacent ones merged.
    /// The blob itself, the image and the initrd are not included.
    pub fn reserved(&self) -> &[MemRegion] {
        self.reserved.as_slice()
    }

    /// The CPUs, in device tree order (at most [`MAX_CPUS`]).
    pub fn cpus(&self) -> &[CpuDesc] {
        self.cpus.get(..self.cpu_count).unwrap_or(&[])
    }

    /// CPUs the device tree lists beyond [`MAX_CPUS`].
    pub fn cpus_ignored(&self) -> usize {
        self.cpus_ignored
    }

    /// The header's `boot_cpuid_phys`.
    pub fn boot_cpuid_phys(&self) -> u32 {
        self.boot_cpuid_phys
    }

    pub fn psci(&self) -> Option<PsciDesc> {
        self.psci
    }

    /// The UART `/chosen` `stdout-path` names (through `/aliases` if needed),
    /// else the first PL011, else the first mini UART.
    pub fn console(&self) -> Option<UartDesc> {
        self.console
    }

    pub fn gic(&self) -> Option<GicDesc> {
        self.gic
    }

    pub fn timer(&self) -> Option<TimerDesc> {
        self.timer
    }

    /// The first interrupt of the PMU's node (`arm,armv8-pmuv3` or a
    /// Cortex-A57/A72 PMU), as an INTID.
    pub fn pmu_intid(&self) -> Option<u32> {
        self.pmu_intid
    }

    /// `/chosen` `bootargs`, or "".
    pub fn bootargs(&self) -> &'a str {
        self.bootargs
    }

    /// `/chosen` `linux,initrd-start` to `linux,initrd-end`.
    pub fn initrd(&self) -> Option<MemRegion> {
        self.initrd
    }

    /// The Pi's power-management watchdog (`brcm,bcm2835-pm-wdt` or
    /// `brcm,bcm2835-pm`) register base, which resets the board.
    pub fn watchdog(&self) -> Option<u64> {
        self.watchdog
    }

    /// The blob's size according to its header.
    pub fn totalsize(&self) -> usize {
        self.blob.len()
    }

    /// The blob (`totalsize` bytes).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// The VMs the device tree describes: every available child of `/chosen`
    /// whose `compatible` lists `ferrovisor,domain`, in tree order. A
    /// malformed node gives an error for that node and the iteration goes on
    /// to the next one. See [`DomainDesc`] for the binding.
    pub fn domains(&self) -> Domains<'a> {
        Domains { tree: self.tree, children: Children::of(self.tree, self.chosen) }
    }

    fn read_memreserve(&mut self, blob: &[u8], mut off: usize) -> Result<(), DtError> {
        loop {
            let (Some(base), Some(size)) = (be64(blob, off), be64(blob, off.saturating_add(8))) else {
                return Err(DtError::Parse("memory reservation block has no terminating entry"));
            };
            if base == 0 && size == 0 {
                return Ok(());
            }
            if !self.reserved.insert(MemRegion::new(base, size)) {
                return Err(DtError::TooManyReserved);
            }
            off += 16;
        }
    }

    /// Looks at one node during the single walk of the tree.
    fn visit(
        &mut self,
        tree: &Tree<'a>,
        scan: &mut Scan<'a>,
        node: Node<'a>,
        anc: &[Node<'a>],
    ) -> ControlFlow<DtError> {
        match anc.len() {
            0 => self.visit_root(tree, node),
            1 => match node.name {
                "chosen" => scan.chosen = Some(node),
                "aliases" => scan.aliases = Some(node),
                _ => {}
            },
            _ => {}
        }
        let device_type = tree.prop(node, "device_type").and_then(str_value);
        // A disabled CPU is one that waits to be started, so it counts.
        if anc.len() == 2 && anc[1].name == "cpus" && device_type == Some("cpu") {
            if let Err(e) = self.add_cpu(tree, node, anc[1]) {
                return ControlFlow::Break(e);
            }
        }
        if !tree.is_available(node) {
            return ControlFlow::Continue(());
        }
        if anc.len() == 1 && device_type == Some("memory") {
            for (base, size) in tree.reg(node, anc) {
                if size == 0 {
                    continue;
                }
                if !self.memory.insert(MemRegion::new(base, size)) {
                    self.memory_ignored += 1;
                }
            }
        }
        if anc.len() == 2 && anc[1].name == "reserved-memory" {
            for (base, size) in tree.reg(node, anc) {
                // Without usable `ranges`, reserving the untranslated range
                // is safer than reserving nothing.
                let base = tree.translate(base, anc).unwrap_or(base);
                if !self.reserved.insert(MemRegion::new(base, size)) {
                    return ControlFlow::Break(DtError::TooManyReserved);
                }
            }
        }
        let Some(compat) = tree.prop(node, "compatible") else {
            return ControlFlow::Continue(());
        };
        let has = |names: &[&str]| strings(compat).any(|c| names.contains(&c));
        if self.psci.is_none() && has(&["arm,psci", "arm,psci-0.2", "arm,psci-1.0"]) {
            self.psci = psci_desc(tree, node, compat);
        }
        if scan.gic.is_none() {
            if has(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a7-gic"]) {
                scan.gic = Some((Located::new(node, anc), false));
            } else if has(&["arm,gic-v3"]) {
                scan.gic = Some((Located::new(node, anc), true));
            }
        }
        if scan.its.is_none() && has(&["arm,gic-v3-its"]) {
            if let (Some((gic, _)), Some(parent)) = (&scan.gic, anc.last()) {
                if gic.node.props == parent.props {
                    scan.its = tree.reg_translated(node, anc, 0);
                }
            }
        }
        if scan.timer.is_none() && has(&["arm,armv8-timer", "arm,armv7-timer"]) {
            scan.timer = Some(Located::new(node, anc));
        }
        if scan.pmu.is_none() && has(&["arm,armv8-pmuv3", "arm,cortex-a72-pmu", "arm,cortex-a57-pmu"]) {
            scan.pmu = Some(Located::new(node, anc));
        }
        if scan.pl011.is_none() && has(&["arm,pl011"]) {
            scan.pl011 = uart_desc(tree, node, anc, UartKind::Pl011);
        }
        if scan.mini_uart.is_none() && has(&["brcm,bcm2835-aux-uart"]) {
            scan.mini_uart = uart_desc(tree, node, anc, UartKind::MiniUart);
        }
        if self.watchdog.is_none() && has(&["brcm,bcm2835-pm-wdt", "brcm,bcm2835-pm"]) {
            self.watchdog = tree.reg_translated(node, anc, 0).map(|r| r.base);
        }
        ControlFlow::Continue(())
    }

    fn visit_root(&mut self, tree: &Tree<'a>, root: Node<'a>) {
        let compat = tree.prop(root, "compatible").unwrap_or(&[]);
        self.compatible = strings(compat).next().unwrap_or("");
        self.model = match tree.prop(root, "model").and_then(str_value) {
            Some(model) if !model.is_empty() => model,
            _ if !self.compatible.is_empty() => self.compatible,
            _ => "unknown board",
        };
        for c in strings(compat) {
            match c {
                "linux,dummy-virt" => self.kind = BoardKind::QemuVirt,
                "raspberrypi,4-model-b" | "brcm,bcm2711" => self.kind = BoardKind::RaspberryPi4,
                _ => continue,
            }
            break;
        }
    }

    fn add_cpu(&mut self, tree: &Tree<'a>, node: Node<'a>, cpus: Node<'a>) -> Result<(), DtError> {
        if tree.prop(node, "status").and_then(str_value).is_some_and(|s| s.starts_with("fail")) {
            return Ok(());
        }
        const CPU: &str = "a /cpus/cpu node";
        let cells = tree.u32_prop(cpus, "#address-cells").unwrap_or(2);
        if !(1..=2).contains(&cells) {
            return Err(DtError::BadProperty { node: "/cpus", prop: "#address-cells", why: "must be 1 or 2" });
        }
        let reg = tree.prop(node, "reg").ok_or(DtError::MissingProperty { node: CPU, prop: "reg" })?;
        let mpidr = read_cells(reg, 0, cells).ok_or(DtError::BadProperty {
            node: CPU,
            prop: "reg",
            why: "shorter than /cpus #address-cells",
        })?;
        let enable_method = match tree.prop(node, "enable-method").and_then(str_value) {
            Some("psci") => EnableMethod::Psci,
            Some("spin-table") => match tree.prop(node, "cpu-release-addr").and_then(int_value) {
                Some(release_addr) => EnableMethod::SpinTable { release_addr },
                None => EnableMethod::None,
            },
            _ => EnableMethod::None,
        };
        match self.cpus.get_mut(self.cpu_count) {
            Some(slot) => {
                *slot = CpuDesc { mpidr, enable_method };
                self.cpu_count += 1;
            }
            None => self.cpus_ignored += 1,
        }
        Ok(())
    }

    /// What needs the whole tree seen first: phandles, paths and aliases.
    fn finish(&mut self, tree: &Tree<'a>, scan: &Scan<'a>) -> Result<(), DtError> {
        if self.memory.len == 0 {
            return Err(DtError::NoMemory);
        }
        if self.cpu_count == 0 {
            return Err(DtError::NoCpus);
        }
        self.chosen = scan.chosen;
        if let Some(chosen) = scan.chosen {
            self.bootargs = tree.prop(chosen, "bootargs").and_then(str_value).unwrap_or("");
            let start = tree.prop(chosen, "linux,initrd-start").and_then(int_value);
            let end = tree.prop(chosen, "linux,initrd-end").and_then(int_value);
            if let (Some(start), Some(end)) = (start, end) {
                if end > start {
                    self.initrd = Some(MemRegion::from_bounds(start, end));
                }
            }
            self.console = stdout_uart(tree, chosen, scan.aliases);
        }
        if self.console.is_none() {
            self.console = scan.pl011.or(scan.mini_uart);
        }
        if let Some((gic, v3)) = &scan.gic {
            self.gic = gic_desc(tree, gic, *v3, scan.its);
        }
        if let Some(timer) = &scan.timer {
            self.timer = timer_desc(tree, timer);
        }
        if let Some(pmu) = &scan.pmu {
            self.pmu_intid = tree.interrupts(pmu).next().flatten();
        }
        Ok(())
    }
}

impl fmt::Debug for Board<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Board")
            .field("model", &self.model)
            .field("kind", &self.kind)
            .field("totalsize", &self.totalsize())
            .field("memory", &self.memory())
            .field("memory_ignored", &self.memory_ignored)
            .field("reserved", &self.reserved())
            .field("cpus", &self.cpus())
            .field("cpus_ignored", &self.cpus_ignored)
            .field("psci", &self.psci)
            .field("console", &self.console)
            .field("gic", &self.gic)
            .field("timer", &self.timer)
            .field("bootargs", &self.bootargs)
            .field("initrd", &self.initrd)
            .field("watchdog", &self.watchdog)
            .finish_non_exhaustive()
    }
}

/// What the walk remembers for [`Board::finish`].
#[derive(Default)]
struct Scan<'a> {
    chosen: Option<Node<'a>>,
    aliases: Option<Node<'a>>,
    /// The GIC, and whether it is a GICv3.
    gic: Option<(Located<'a>, bool)>,
    its: Option<MemRegion>,
    timer: Option<Located<'a>>,
    pmu: Option<Located<'a>>,
    pl011: Option<UartDesc>,
    mini_uart: Option<UartDesc>,
}

fn psci_desc(tree: &Tree<'_>, node: Node<'_>, compat: &[u8]) -> Option<PsciDesc> {
    let method = match tree.prop(node, "method").and_then(str_value)? {
        "smc" => PsciMethod::Smc,
        "hvc" => PsciMethod::Hvc,
        _ => return None,
    };
    let version = strings(compat)
        .filter_map(|c| match c {
            "arm,psci-1.0" => Some(PsciVersion::V1_0),
            "arm,psci-0.2" => Some(PsciVersion::V0_2),
            "arm,psci" => Some(PsciVersion::V0_1),
            _ => None,
        })
        .max()?;
    Some(PsciDesc { method, version })
}

fn uart_kind(tree: &Tree<'_>, node: Node<'_>) -> Option<UartKind> {
    strings(tree.prop(node, "compatible")?).find_map(|c| match c {
        "arm,pl011" => Some(UartKind::Pl011),
        "brcm,bcm2835-aux-uart" => Some(UartKind::MiniUart),
        _ => None,
    })
}

fn uart_desc<'a>(tree: &Tree<'a>, node: Node<'a>, anc: &[Node<'a>], kind: UartKind) -> Option<UartDesc> {
    let reg = tree.reg_translated(node, anc, 0)?;
    Some(UartDesc { kind, base: reg.base, size: reg.size })
}

/// The UART `stdout-path` (or `linux,stdout-path`) names, if it is one we drive.
fn stdout_uart<'a>(tree: &Tree<'a>, chosen: Node<'a>, aliases: Option<Node<'a>>) -> Option<UartDesc> {
    let raw =
        tree.prop(chosen, "stdout-path").or_else(|| tree.prop(chosen, "linux,stdout-path")).and_then(str_value)?;
    let path = raw.split(':').next().unwrap_or("");
    let path = if path.starts_with('/') {
        path
    } else {
        let alias = tree.prop(aliases?, path).and_then(str_value)?;
        alias.split(':').next().unwrap_or("")
    };
    let found = tree.find_path(path)?;
    let kind = uart_kind(tree, found.node)?;
    uart_desc(tree, found.node, found.ancestors(), kind)
}

fn gic_desc(tree: &Tree<'_>, gic: &Located<'_>, v3: bool, its: Option<MemRegion>) -> Option<GicDesc> {
    let (node, anc) = (gic.node, gic.ancestors());
    let reg = |i| tree.reg_translated(node, anc, i);
    let maintenance_irq = tree.interrupts(gic).next().flatten();
    if v3 {
        Some(GicDesc::V3 {
            gicd: reg(0)?,
            gicr: reg(1)?,
            redist_regions: tree.u32_prop(node, "#redistributor-regions").unwrap_or(1),
            its,
            maintenance_irq,
        })
    } else {
        Some(GicDesc::V2 { gicd: reg(0)?, gicc: reg(1)?, gich: reg(2), gicv: reg(3), maintenance_irq })
    }
}

fn timer_desc(tree: &Tree<'_>, timer: &Located<'_>) -> Option<TimerDesc> {
    let mut irqs = tree.interrupts(timer);
    Some(TimerDesc {
        secure_phys: irqs.next()??,
        nonsecure_phys: irqs.next()??,
        virt: irqs.next()??,
        hyp_phys: irqs.next()??,
        hyp_virt: irqs.next().flatten(),
        clock_frequency: tree.u32_prop(timer.node, "clock-frequency"),
    })
}

/// A GIC interrupt specifier's first two cells as an INTID.
fn gic_intid(kind: u32, number: u32) -> Option<u32> {
    match kind {
        0 if number < 988 => Some(32 + number),
        1 if number < 16 => Some(16 + number),
        _ => None,
    }
}

/// The header fields the parser uses, checked against each other.
struct Header {
    totalsize: usize,
    structs: core::ops::Range<usize>,
    strings: core::ops::Range<usize>,
    rsvmap: usize,
    boot_cpuid_phys: u32,
}

/// Checks the magic and the `totalsize` bounds; returns `totalsize`.
fn check_magic_and_size(bytes: &[u8]) -> Result<usize, DtError> {
    let word = |i: usize| be32(bytes, 4 * i).ok_or(DtError::BadHeader("blob is shorter than the 40-byte header"));
    if word(0)? != FDT_MAGIC {
        return Err(DtError::BadHeader("bad magic (expected 0xd00dfeed): not a device tree"));
    }
    let totalsize = word(1)? as usize;
    if totalsize > MAX_TOTALSIZE {
        return Err(DtError::BadHeader("totalsize is larger than 2 MiB"));
    }
    if totalsize < HEADER_SIZE {
        return Err(DtError::BadHeader("totalsize is smaller than the header"));
    }
    Ok(totalsize)
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Self, DtError> {
        let totalsize = check_magic_and_size(bytes)?;
        let word = |i: usize| be32(bytes, 4 * i).ok_or(DtError::BadHeader("blob is shorter than the 40-byte header"));
        let (off_struct, off_strings, off_rsvmap) = (word(2)?, word(3)?, word(4)?);
        let (version, last_comp, boot_cpuid_phys) = (word(5)?, word(6)?, word(7)?);
        let size_strings = word(8)?;
        if version < 16 {
            return Err(DtError::BadHeader("version is older than 16"));
        }
        if last_comp > 17 {
            return Err(DtError::BadHeader("last_comp_version is newer than 17"));
        }
        if bytes.len() < totalsize {
            return Err(DtError::Truncated);
        }
        // Version 16 headers have no size_dt_struct: the block may run to the end.
        let size_struct = if version >= 17 { word(9)? } else { (totalsize as u32).saturating_sub(off_struct) };
        // Blocks may not overlap the header (36 bytes in version 16).
        let min_off = if version >= 17 { HEADER_SIZE } else { 36 };
        let range = |off: u32, size: u32, what: &'static str| {
            let (off, size) = (off as usize, size as usize);
            match off.checked_add(size) {
                Some(end) if off >= min_off && end <= totalsize => Ok(off..end),
                _ => Err(DtError::BadHeader(what)),
            }
        };
        let structs = range(off_struct, size_struct, "structure block lies outside totalsize")?;
        let strings = range(off_strings, size_strings, "strings block lies outside totalsize")?;
        let rsv = range(off_rsvmap, 0, "memory reservation block lies outside totalsize")?;
        Ok(Self { totalsize, structs, strings, rsvmap: rsv.start, boot_cpuid_phys })
    }
}

/// A fixed-capacity set of ranges, sorted by base, with overlapping and
/// adjacent ranges merged.
#[derive(Clone, Copy, Debug)]
struct RegionSet<const N: usize> {
    regions: [MemRegion; N],
    len: usize,
}

impl<const N: usize> RegionSet<N> {
    const fn new() -> Self {
        Self { regions: [MemRegion::EMPTY; N], len: 0 }
    }

    fn as_slice(&self) -> &[MemRegion] {
        self.regions.get(..self.len).unwrap_or(&[])
    }

    /// Adds `r`, merging it with every range it overlaps or touches. Returns
    /// false (and changes nothing) if the set is full.
    fn insert(&mut self, r: MemRegion) -> bool {
        if r.is_empty() {
            return true;
        }
        let (mut start, mut end) = (r.base, r.end());
        // The ranges that overlap or touch r are contiguous in sorted order.
        let first = self.as_slice().iter().position(|x| x.end() >= start).unwrap_or(self.len);
        let mut last = first;
        while let Some(x) = self.as_slice().get(last) {
            if x.base > end {
                break;
            }
            start = start.min(x.base);
            end = end.max(x.end());
            last += 1;
        }
        let merged = MemRegion::from_bounds(start, end);
        if first == last {
            if self.len == N {
                return false;
            }
            self.regions.copy_within(first..self.len, first + 1);
            self.len += 1;
        } else {
            self.regions.copy_within(last..self.len, first + 1);
            self.len -= last - first - 1;
        }
        self.regions[first] = merged;
        true
    }
}

/// A node: its name and the offset of its first property in the structure
/// block.
#[derive(Clone, Copy, Debug)]
struct Node<'a> {
    name: &'a str,
    props: usize,
}

impl Node<'_> {
    const EMPTY: Self = Node { name: "", props: 0 };
}

/// A node with its ancestors (root first), kept after the walk has moved on.
#[derive(Clone, Copy)]
struct Located<'a> {
    node: Node<'a>,
    anc: [Node<'a>; MAX_DEPTH],
    depth: usize,
}

impl<'a> Located<'a> {
    fn new(node: Node<'a>, ancestors: &[Node<'a>]) -> Self {
        let mut anc = [Node::EMPTY; MAX_DEPTH];
        let depth = ancestors.len().min(MAX_DEPTH);
        anc[..depth].copy_from_slice(&ancestors[..depth]);
        Self { node, anc, depth }
    }

    fn ancestors(&self) -> &[Node<'a>] {
        self.anc.get(..self.depth).unwrap_or(&[])
    }
}

enum Token<'a> {
    Begin(&'a str),
    End,
    Prop(&'a str, &'a [u8]),
    Eof,
}

/// The structure and strings blocks. Every read is bounds-checked; the walk
/// gives up quietly on anything [`Tree::validate`] would have refused.
#[derive(Clone, Copy)]
struct Tree<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Tree<'a> {
    /// The token at `off` (after any `FDT_NOP`s) and the offset past it.
    fn token(&self, mut off: usize) -> Result<(Token<'a>, usize), DtError> {
        loop {
            let tag = be32(self.structs, off).ok_or(DtError::Parse("structure block ends before its FDT_END token"))?;
            match tag {
                FDT_NOP => off += 4,
                FDT_BEGIN_NODE => {
                    let rest = self.structs.get(off + 4..).unwrap_or(&[]);
                    let name = cstr(rest).ok_or(DtError::Parse("a node name runs past the structure block"))?;
                    let name = core::str::from_utf8(name).map_err(|_| DtError::Parse("a node name is not UTF-8"))?;
                    return Ok((Token::Begin(name), align4(off + 4 + name.len() + 1)));
                }
                FDT_END_NODE => return Ok((Token::End, off + 4)),
                FDT_PROP => {
                    let (Some(len), Some(name_off)) = (be32(self.structs, off + 4), be32(self.structs, off + 8)) else {
                        return Err(DtError::Parse("a property header runs past the structure block"));
                    };
                    let start = off + 12;
                    let value = start
                        .checked_add(len as usize)
                        .and_then(|end| self.structs.get(start..end))
                        .ok_or(DtError::Parse("a property value runs past the structure block"))?;
                    let name = self
                        .strings
                        .get(name_off as usize..)
                        .and_then(cstr)
                        .ok_or(DtError::Parse("a property name lies outside the strings block"))?;
                    let name =
                        core::str::from_utf8(name).map_err(|_| DtError::Parse("a property name is not UTF-8"))?;
                    return Ok((Token::Prop(name, value), align4(start + value.len())));
                }
                FDT_END => return Ok((Token::Eof, off + 4)),
                _ => return Err(DtError::Parse("unknown token in the structure block")),
            }
        }
    }

    /// Checks the whole structure block: one root node, balanced nesting no
    /// deeper than [`MAX_DEPTH`], properties only inside nodes, every name
    /// readable, then `FDT_END`.
    fn validate(&self) -> Result<(), DtError> {
        let (first, mut off) = self.token(0)?;
        if !matches!(first, Token::Begin(_)) {
            return Err(DtError::Parse("structure block does not start with the root node"));
        }
        let mut depth = 1usize;
        loop {
            let (tok, next) = self.token(off)?;
            off = next;
            match tok {
                Token::Begin(_) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(DtError::Parse("nodes are nested more than 16 deep"));
                    }
                }
                Token::Prop(..) => {}
                Token::End => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Token::Eof => return Err(DtError::Parse("structure block ends inside a node")),
            }
        }
        match self.token(off)? {
            (Token::Eof, _) => Ok(()),
            _ => Err(DtError::Parse("structure block has more after the root node")),
        }
    }

    /// Calls `visit` on every node, depth first, with its ancestors (root
    /// first); stops at the first `Break`.
    fn walk<B>(&self, mut visit: impl FnMut(Node<'a>, &[Node<'a>]) -> ControlFlow<B>) -> Option<B> {
        let mut stack = [Node::EMPTY; MAX_DEPTH];
        let mut depth = 0;
        let mut off = 0;
        loop {
            let (tok, next) = self.token(off).ok()?;
            off = next;
            match tok {
                Token::Begin(name) => {
                    let node = Node { name, props: next };
                    if let ControlFlow::Break(b) = visit(node, stack.get(..depth)?) {
                        return Some(b);
                    }
                    *stack.get_mut(depth)? = node;
                    depth += 1;
                }
                Token::End => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return None;
                    }
                }
                Token::Prop(..) => {}
                Token::Eof => return None,
            }
        }
    }

    /// The offset past the end of the node whose properties start at `off`
    /// (just after its `FDT_BEGIN_NODE`); `None` if the structure ends first.
    fn skip_subtree(&self, mut off: usize) -> Option<usize> {
        let mut depth = 1usize;
        loop {
            let (tok, next) = self.token(off).ok()?;
            off = next;
            match tok {
                Token::Begin(_) => depth += 1,
                Token::End => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(off);
                    }
                }
                Token::Prop(..) => {}
                Token::Eof => return None,
            }
        }
    }

    fn props(&self, node: Node<'a>) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        let mut off = node.props;
        core::iter::from_fn(move || match self.token(off) {
            Ok((Token::Prop(name, value), next)) => {
                off = next;
                Some((name, value))
            }
            _ => None,
        })
    }

    fn prop(&self, node: Node<'a>, name: &str) -> Option<&'a [u8]> {
        self.props(node).find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn u32_prop(&self, node: Node<'a>, name: &str) -> Option<u32> {
        be32(self.prop(node, name)?, 0)
    }

    fn is_available(&self, node: Node<'a>) -> bool {
        match self.prop(node, "status").and_then(str_value) {
            None => true,
            Some(s) => s == "okay" || s == "ok",
        }
    }

    /// `#address-cells` and `#size-cells` for `node`'s children.
    fn cells(&self, node: Node<'a>) -> (u32, u32) {
        (self.u32_prop(node, "#address-cells").unwrap_or(2), self.u32_prop(node, "#size-cells").unwrap_or(1))
    }

    /// `node`'s `reg` entries as (address, size) in its parent's address
    /// space. Nothing if the cell counts are not ones a 64-bit CPU can use.
    fn reg(&self, node: Node<'a>, anc: &[Node<'a>]) -> impl Iterator<Item = (u64, u64)> + 'a {
        let (ac, sc) = anc.last().map_or((2, 1), |parent| self.cells(*parent));
        let usable = (1..=2).contains(&ac) && sc <= 2;
        let (value, stride) = match usable {
            true => (self.prop(node, "reg").unwrap_or(&[]), 4 * (ac + sc) as usize),
            false => (&[][..], 4),
        };
        value.chunks_exact(stride).filter_map(move |e| Some((read_cells(e, 0, ac)?, read_cells(e, ac, sc)?)))
    }

    /// The `index`th `reg` entry, translated to a CPU physical address.
    fn reg_translated(&self, node: Node<'a>, anc: &[Node<'a>], index: usize) -> Option<MemRegion> {
        let (base, size) = self.reg(node, anc).nth(index)?;
        Some(MemRegion::new(self.translate(base, anc)?, size))
    }

    /// Translates an address in the space of `anc`'s last node's children up
    /// through every ancestor's `ranges`. `None` if a bus has no `ranges` or
    /// none of its ranges covers the address.
    fn translate(&self, mut addr: u64, anc: &[Node<'a>]) -> Option<u64> {
        for i in (1..anc.len()).rev() {
            let (bus, parent) = (anc[i], anc[i - 1]);
            let ranges = self.prop(bus, "ranges")?;
            if ranges.is_empty() {
                continue;
            }
            let (ca, cs) = self.cells(bus);
            let pa = self.cells(parent).0;
            if !(1..=2).contains(&ca) || !(1..=2).contains(&pa) || cs > 2 {
                return None;
            }
            let stride = 4 * (ca + pa + cs) as usize;
            addr = ranges.chunks_exact(stride).find_map(|e| {
                let child = read_cells(e, 0, ca)?;
                let parent_addr = read_cells(e, ca, pa)?;
                let size = read_cells(e, ca + pa, cs)?;
                let offset = addr.checked_sub(child)?;
                (offset < size).then(|| parent_addr.wrapping_add(offset))
            })?;
        }
        Some(addr)
    }

    /// The node whose `phandle` (or `linux,phandle`) is `phandle`.
    fn find_phandle(&self, phandle: u32) -> Option<Node<'a>> {
        self.walk(|node, _| {
            let ph = self.u32_prop(node, "phandle").or_else(|| self.u32_prop(node, "linux,phandle"));
            if ph == Some(phandle) {
                ControlFlow::Break(node)
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    /// The node at an absolute `path`; a component without `@` matches a
    /// node name up to its `@`.
    fn find_path(&self, path: &str) -> Option<Located<'a>> {
        let path = path.strip_prefix('/')?.trim_end_matches('/');
        let want = if path.is_empty() { 0 } else { path.split('/').count() };
        self.walk(|node, anc| {
            if anc.len() != want {
                return ControlFlow::Continue(());
            }
            let names = anc.iter().skip(1).map(|n| n.name).chain(core::iter::once(node.name));
            let matched = want == 0 || path.split('/').zip(names).all(|(c, n)| name_matches(c, n));
            if matched {
                ControlFlow::Break(Located::new(node, anc))
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    /// `#interrupt-cells` of the node's interrupt parent (3 if not found).
    fn interrupt_cells(&self, at: &Located<'a>) -> u32 {
        let phandle = core::iter::once(at.node)
            .chain(at.ancestors().iter().rev().copied())
            .find_map(|n| self.u32_prop(n, "interrupt-parent"));
        let parent = match phandle {
            Some(ph) => self.find_phandle(ph),
            None => at.ancestors().last().copied(),
        };
        parent.and_then(|p| self.u32_prop(p, "#interrupt-cells")).unwrap_or(3)
    }

    /// The node's `interrupts` as GIC INTIDs (`None` for an entry that is
    /// not an SPI or PPI specifier).
    fn interrupts(&self, at: &Located<'a>) -> impl Iterator<Item = Option<u32>> + 'a {
        let cells = self.interrupt_cells(at);
        let (value, stride) = match (2..=4).contains(&cells) {
            true => (self.prop(at.node, "interrupts").unwrap_or(&[]), 4 * cells as usize),
            false => (&[][..], 4),
        };
        value.chunks_exact(stride).map(|e| gic_intid(be32(e, 0)?, be32(e, 4)?))
    }
}

fn name_matches(component: &str, name: &str) -> bool {
    component == name || (!component.contains('@') && name.split('@').next() == Some(component))
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

fn be32(bytes: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn be64(bytes: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// `n` (0, 1 or 2) cells starting at cell `at`, as one number.
fn read_cells(bytes: &[u8], at: u32, n: u32) -> Option<u64> {
    let off = 4 * at as usize;
    match n {
        0 => Some(0),
        1 => be32(bytes, off).map(u64::from),
        2 => be64(bytes, off),
        _ => None,
    }
}

/// A 32- or 64-bit integer property.
fn int_value(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => be32(value, 0).map(u64::from),
        8 => be64(value, 0),
        _ => None,
    }
}

/// The bytes before the first NUL, if there is one.
fn cstr(bytes: &[u8]) -> Option<&[u8]> {
    bytes.get(..bytes.iter().position(|&b| b == 0)?)
}

/// A string property: the text up to the first NUL (or the end).
fn str_value(value: &[u8]) -> Option<&str> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    core::str::from_utf8(value.get(..end)?).ok()
}

/// The strings of a string-list property (invalid UTF-8 ones skipped).
fn strings(value: &[u8]) -> impl Iterator<Item = &str> {
    value.split(|&b| b == 0).filter(|s| !s.is_empty()).filter_map(|s| core::str::from_utf8(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    const VIRT_GICV2: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv2.dtb");
    const VIRT_GICV3: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv3.dtb");

    fn node(w: &mut FdtWriter, name: &str, body: impl FnOnce(&mut FdtWriter)) {
        let n = w.begin_node(name).unwrap();
        body(w);
        w.end_node(n).unwrap();
    }

    fn strs(w: &mut FdtWriter, name: &str, list: &[&str]) {
        w.property_string_list(name, list.iter().map(|s| s.to_string()).collect()).unwrap();
    }

    fn cells(w: &mut FdtWriter, name: &str, c: &[u32]) {
        w.property_array_u32(name, c).unwrap();
    }

    /// Shaped like `qemu-system-aarch64 -M virt,gic-version=N -smp 4 -m 1G`.
    fn virt_dtb(gic_v3: bool, extra_chosen: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            cells(w, "interrupt-parent", &[0x8001]);
            w.property_string("model", "linux,dummy-virt").unwrap();
            cells(w, "#size-cells", &[2]);
            cells(w, "#address-cells", &[2]);
            w.property_string("compatible", "linux,dummy-virt").unwrap();
            node(w, "psci", |w| {
                w.property_string("method", "smc").unwrap();
                strs(w, "compatible", &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]);
            });
            node(w, "memory@40000000", |w| {
                w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000]).unwrap();
                w.property_string("device_type", "memory").unwrap();
            });
            node(w, "pl011@9000000", |w| {
                cells(w, "interrupts", &[0, 1, 4]);
                w.property_array_u64("reg", &[0x900_0000, 0x1000]).unwrap();
                strs(w, "compatible", &["arm,pl011", "arm,primecell"]);
            });
            node(w, "intc@8000000", |w| {
                w.property_phandle(0x8001).unwrap();
                cells(w, "interrupts", &[1, 9, 4]);
                if gic_v3 {
                    w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000]).unwrap();
                    cells(w, "#redistributor-regions", &[1]);
                    w.property_string("compatible", "arm,gic-v3").unwrap();
                } else {
                    let reg = [0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000, 0x803_0000, 0x1_0000, 0x804_0000, 0x1_0000];
                    w.property_array_u64("reg", &reg).unwrap();
                    w.property_string("compatible", "arm,cortex-a15-gic").unwrap();
                }
                w.property_null("ranges").unwrap();
                cells(w, "#size-cells", &[2]);
                cells(w, "#address-cells", &[2]);
                w.property_null("interrupt-controller").unwrap();
                cells(w, "#interrupt-cells", &[3]);
                if gic_v3 {
                    node(w, "its@8080000", |w| {
                        w.property_array_u64("reg", &[0x808_0000, 0x2_0000]).unwrap();
                        w.property_null("msi-controller").unwrap();
                        w.property_string("compatible", "arm,gic-v3-its").unwrap();
                    });
                }
            });
            node(w, "cpus", |w| {
                cells(w, "#size-cells", &[0]);
                cells(w, "#address-cells", &[1]);
                node(w, "cpu-map", |w| {
                    node(w, "socket0", |_| {});
                });
                for i in 0..4u32 {
                    node(w, &format!("cpu@{i}"), |w| {
                        cells(w, "reg", &[i]);
                        w.property_string("enable-method", "psci").unwrap();
                        w.property_string("compatible", "arm,cortex-a57").unwrap();
                        w.property_string("device_type", "cpu").unwrap();
                    });
                }
            });
            node(w, "timer", |w| {
                cells(w, "interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);
                w.property_null("always-on").unwrap();
                strs(w, "compatible", &["arm,armv8-timer", "arm,armv7-timer"]);
            });
            node(w, "chosen", |w| {
                w.property_string("stdout-path", "/pl011@9000000").unwrap();
                extra_chosen(w);
            });
        });
        w.finish().unwrap()
    }

    /// Shaped like the Raspberry Pi 4's tree as the firmware hands it over.
    fn pi4_dtb() -> Vec<u8> {
        let mut w = FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0, 0x1000).unwrap()]).unwrap();
        node(&mut w, "", |w| {
            strs(w, "compatible", &["raspberrypi,4-model-b", "brcm,bcm2711"]);
            w.property_string("model", "Raspberry Pi 4 Model B Rev 1.4").unwrap();
            cells(w, "interrupt-parent", &[1]);
            cells(w, "#address-cells", &[2]);
            cells(w, "#size-cells", &[1]);
            node(w, "aliases", |w| {
                w.property_string("serial0", "/soc/serial@7e215040").unwrap();
                w.property_string("serial1", "/soc/serial@7e201000").unwrap();
            });
            node(w, "chosen", |w| {
                w.property_string("stdout-path", "serial0:115200n8").unwrap();
                w.property_string("bootargs", "coherent_pool=1M 8250.nr_uarts=1").unwrap();
            });
            node(w, "reserved-memory", |w| {
                cells(w, "#address-cells", &[2]);
                cells(w, "#size-cells", &[1]);
                w.property_null("ranges").unwrap();
                node(w, "linux,cma", |w| {
                    w.property_string("compatible", "shared-dma-pool").unwrap();
                    cells(w, "size", &[0x400_0000]);
                    w.property_null("reusable").unwrap();
                });
                node(w, "nvram@0", |w| {
                    cells(w, "reg", &[0, 0x3e00_0000, 0x40_0000]);
                    w.property_null("no-map").unwrap();
                });
            });
            node(w, "soc", |w| {
                w.property_string("compatible", "simple-bus").unwrap();
                cells(w, "#address-cells", &[1]);
                cells(w, "#size-cells", &[1]);
                #[rustfmt::skip]
                cells(w, "ranges", &[
                    0x7e00_0000, 0, 0xfe00_0000, 0x180_0000,
                    0x7c00_0000, 0, 0xfc00_0000, 0x200_0000,
                    0x4000_0000, 0, 0xff80_0000, 0x80_0000,
                ]);
                node(w, "watchdog@7e100000", |w| {
                    strs(w, "compatible", &["brcm,bcm2835-pm", "brcm,bcm2835-pm-wdt"]);
                    cells(w, "reg", &[0x7e10_0000, 0x114, 0x7e00_a000, 0x24]);
                });
                node(w, "serial@7e201000", |w| {
                    strs(w, "compatible", &["arm,pl011", "arm,primecell"]);
                    cells(w, "reg", &[0x7e20_1000, 0x200]);
                });
                node(w, "serial@7e215040", |w| {
                    w.property_string("compatible", "brcm,bcm2835-aux-uart").unwrap();
                    cells(w, "reg", &[0x7e21_5040, 0x40]);
                });
                node(w, "interrupt-controller@40041000", |w| {
                    w.property_null("interrupt-controller").unwrap();
                    cells(w, "#interrupt-cells", &[3]);
                    w.property_string("compatible", "arm,gic-400").unwrap();
                    #[rustfmt::skip]
                    cells(w, "reg", &[
                        0x4004_1000, 0x1000, 0x4004_2000, 0x2000,
                        0x4004_4000, 0x2000, 0x4004_6000, 0x2000,
                    ]);
                    cells(w, "interrupts", &[1, 9, 0xf04]);
                    w.property_phandle(1).unwrap();
                });
            });
            node(w, "cpus", |w| {
                cells(w, "#address-cells", &[1]);
                cells(w, "#size-cells", &[0]);
                for i in 0..4u32 {
                    node(w, &format!("cpu@{i}"), |w| {
                        w.property_string("device_type", "cpu").unwrap();
                        w.property_string("compatible", "arm,cortex-a72").unwrap();
                        cells(w, "reg", &[i]);
                        w.property_string("enable-method", "spin-table").unwrap();
                        cells(w, "cpu-release-addr", &[0, 0xd8 + 8 * i]);
                    });
                }
            });
            node(w, "timer", |w| {
                w.property_string("compatible", "arm,armv8-timer").unwrap();
                cells(w, "interrupts", &[1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08]);
            });
            node(w, "memory@0", |w| {
                w.property_string("device_type", "memory").unwrap();
                cells(w, "reg", &[1, 0, 0x8000_0000, 0, 0x4000_0000, 0xbc00_0000, 0, 0, 0x3b40_0000]);
            });
        });
        w.finish().unwrap()
    }

    fn assert_virt_common(b: &Board<'_>) {
        assert_eq!(b.kind(), BoardKind::QemuVirt);
        assert_eq!(b.model(), "linux,dummy-virt");
        assert_eq!(b.memory(), [MemRegion::new(0x4000_0000, 0x4000_0000)]);
        assert_eq!(b.cpus().len(), 4);
        for (i, cpu) in b.cpus().iter().enumerate() {
            assert_eq!(*cpu, CpuDesc { mpidr: i as u64, enable_method: EnableMethod::Psci });
        }
        assert_eq!(b.cpus_ignored(), 0);
        assert_eq!(b.psci(), Some(PsciDesc { method: PsciMethod::Smc, version: PsciVersion::V1_0 }));
        assert_eq!(b.console(), Some(UartDesc { kind: UartKind::Pl011, base: 0x900_0000, size: 0x1000 }));
        let t = b.timer().unwrap();
        assert_eq!((t.secure_phys, t.nonsecure_phys, t.virt, t.hyp_phys), (29, 30, 27, 26));
        assert_eq!(b.watchdog(), None);
    }

    fn r(base: u64, size: u64) -> MemRegion {
        MemRegion::new(base, size)
    }

    #[test]
    fn built_virt_gicv2() {
        let dtb = virt_dtb(false, |_| {});
        let b = Board::from_slice(&dtb).unwrap();
        assert_virt_common(&b);
        assert_eq!(b.totalsize(), dtb.len());
        assert_eq!(
            b.gic(),
            Some(GicDesc::V2 {
                gicd: r(0x800_0000, 0x1_0000),
                gicc: r(0x801_0000, 0x1_0000),
                gich: Some(r(0x803_0000, 0x1_0000)),
                gicv: Some(r(0x804_0000, 0x1_0000)),
                maintenance_irq: Some(25),
            })
        );
        assert_eq!(b.bootargs(), "");
        assert_eq!(b.initrd(), None);
        assert!(b.reserved().is_empty());
    }

    #[test]
    fn built_virt_gicv3_with_its() {
        let dtb = virt_dtb(true, |w| {
            w.property_string("bootargs", "console=ttyAMA0 -- a b").unwrap();
            cells(w, "linux,initrd-start", &[0x4800_0000]);
            w.property_u64("linux,initrd-end", 0x4810_0000).unwrap();
        });
        let b = Board::from_slice(&dtb).unwrap();
        assert_virt_common(&b);
        assert_eq!(
            b.gic(),
            Some(GicDesc::V3 {
                gicd: r(0x800_0000, 0x1_0000),
                gicr: r(0x80a_0000, 0xf6_0000),
                redist_regions: 1,
                its: Some(r(0x808_0000, 0x2_0000)),
                maintenance_irq: Some(25),
            })
        );
        assert_eq!(b.bootargs(), "console=ttyAMA0 -- a b");
        assert_eq!(b.initrd(), Some(r(0x4800_0000, 0x10_0000)));
    }

    #[test]
    fn built_pi4_translates_through_soc_ranges() {
        let dtb = pi4_dtb();
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.kind(), BoardKind::RaspberryPi4);
        assert_eq!(b.model(), "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(b.compatible(), "raspberrypi,4-model-b");
        assert_eq!(b.memory(), [r(0, 0x3b40_0000), r(0x4000_0000, 0xbc00_0000), r(0x1_0000_0000, 0x8000_0000)]);
        assert_eq!(b.reserved(), [r(0, 0x1000), r(0x3e00_0000, 0x40_0000)]);
        assert_eq!(b.cpus().len(), 4);
        for (i, cpu) in b.cpus().iter().enumerate() {
            let release_addr = 0xd8 + 8 * i as u64;
            assert_eq!(*cpu, CpuDesc { mpidr: i as u64, enable_method: EnableMethod::SpinTable { release_addr } });
        }
        assert_eq!(b.psci(), None);
        assert_eq!(b.console(), Some(UartDesc { kind: UartKind::MiniUart, base: 0xfe21_5040, size: 0x40 }));
        assert_eq!(
            b.gic(),
            Some(GicDesc::V2 {
                gicd: r(0xff84_1000, 0x1000),
                gicc: r(0xff84_2000, 0x2000),
                gich: Some(r(0xff84_4000, 0x2000)),
                gicv: Some(r(0xff84_6000, 0x2000)),
                maintenance_irq: Some(25),
            })
        );
        let t = b.timer().unwrap();
        assert_eq!((t.secure_phys, t.nonsecure_phys, t.virt, t.hyp_phys, t.hyp_virt), (29, 30, 27, 26, None));
        assert_eq!(b.watchdog(), Some(0xfe10_0000));
        assert_eq!(b.bootargs(), "coherent_pool=1M 8250.nr_uarts=1");
    }

    #[test]
    fn console_falls_back_to_the_first_pl011() {
        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "memory", |w| {
                w.property_string("device_type", "memory").unwrap();
                cells(w, "reg", &[0, 0x8000_0000, 0x1000_0000]);
            });
            node(w, "cpus", |w| {
                cells(w, "#address-cells", &[2]);
                node(w, "cpu@100", |w| {
                    w.property_string("device_type", "cpu").unwrap();
                    cells(w, "reg", &[0, 0x100]);
                });
            });
            node(w, "uart@1000", |w| {
                w.property_string("compatible", "brcm,bcm2835-aux-uart").unwrap();
                cells(w, "reg", &[0, 0x1000, 0x40]);
            });
            node(w, "uart@2000", |w| {
                w.property_string("compatible", "arm,pl011").unwrap();
                cells(w, "reg", &[0, 0x2000, 0x1000]);
            });
        });
        let dtb = w.finish().unwrap();
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.console().map(|c| (c.kind, c.base)), Some((UartKind::Pl011, 0x2000)));
        assert_eq!(b.model(), "unknown board");
        assert_eq!(b.kind(), BoardKind::Other);
        assert_eq!(b.cpus(), [CpuDesc { mpidr: 0x100, enable_method: EnableMethod::None }]);
        assert_eq!((b.gic(), b.timer(), b.psci()), (None, None, None));
    }

    #[test]
    fn translates_through_nested_buses() {
        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "bus@0", |w| {
                cells(w, "#address-cells", &[1]);
                cells(w, "#size-cells", &[1]);
                cells(w, "ranges", &[0x1000_0000, 0x0, 0x8000_0000, 0x1000_0000]);
                node(w, "sub@10000000", |w| {
                    cells(w, "#address-cells", &[2]);
                    cells(w, "#size-cells", &[1]);
                    cells(w, "ranges", &[0x7, 0x0, 0x1020_0000, 0x1000]);
                    node(w, "dev@7,10", |w| cells(w, "reg", &[0x7, 0x10, 0x10]));
                    node(w, "outside@8,0", |w| cells(w, "reg", &[0x8, 0x0, 0x10]));
                });
                node(w, "noranges", |w| {
                    cells(w, "#address-cells", &[1]);
                    node(w, "dev@5", |w| cells(w, "reg", &[0x5, 0x10]));
                });
            });
        });
        let dtb = w.finish().unwrap();
        let header = Header::parse(&dtb).unwrap();
        let tree = Tree { structs: &dtb[header.structs.clone()], strings: &dtb[header.strings.clone()] };
        tree.validate().unwrap();
        let at = |path| {
            let l = tree.find_path(path).unwrap();
            tree.reg_translated(l.node, l.ancestors(), 0)
        };
        assert_eq!(at("/bus@0/sub@10000000/dev@7,10"), Some(r(0x8020_0010, 0x10)));
        assert_eq!(at("/bus/sub/dev"), Some(r(0x8020_0010, 0x10)));
        assert_eq!(at("/bus@0/sub@10000000/outside@8,0"), None);
        assert_eq!(at("/bus@0/noranges/dev@5"), None);
        assert!(tree.find_path("/bus@0/nothing").is_none());
        assert!(tree.find_path("/").is_some());
    }

    #[test]
    fn real_qemu_virt_gicv2() {
        let b = Board::from_slice(VIRT_GICV2).unwrap();
        assert_virt_common(&b);
        let t = b.timer().unwrap();
        assert_eq!(t.hyp_virt, Some(28));
        assert_eq!(b.pmu_intid(), Some(23), "arm,armv8-pmuv3 on PPI 7");
        assert_eq!(
            b.gic(),
            Some(GicDesc::V2 {
                gicd: r(0x800_0000, 0x1_0000),
                gicc: r(0x801_0000, 0x1_0000),
                gich: Some(r(0x803_0000, 0x1_0000)),
                gicv: Some(r(0x804_0000, 0x1_0000)),
                maintenance_irq: Some(25),
            })
        );
    }

    #[test]
    fn real_qemu_virt_gicv3() {
        let b = Board::from_slice(VIRT_GICV3).unwrap();
        assert_virt_common(&b);
        let Some(GicDesc::V3 { gicd, gicr, redist_regions, its, maintenance_irq }) = b.gic() else {
            panic!("not a GICv3: {:?}", b.gic());
        };
        assert_eq!(gicd.base, 0x800_0000);
        assert_eq!(gicr.base, 0x80a_0000);
        assert_eq!(redist_regions, 1);
        assert_eq!(its.map(|i| i.base), Some(0x808_0000));
        assert_eq!(maintenance_irq, Some(25));
        assert_eq!(b.pmu_intid(), Some(23), "arm,armv8-pmuv3 on PPI 7");
    }

    /// The Raspberry Pi 4 tree from Debian's kernel package: committed as a
    /// fixture, or where `scripts/fetch-pi-dtb` caches it, or at
    /// `$FERROVISOR_PI4_DTB`.
    fn real_pi4_dtb() -> Option<Vec<u8>> {
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .ok()
            .map(|c| c.join("ferrovisor/debian-kernel/bcm2711-rpi-4-b.dtb"));
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bcm2711-rpi-4-b.dtb");
        let explicit = std::env::var_os("FERROVISOR_PI4_DTB").map(std::path::PathBuf::from);
        [explicit, Some(fixture.into()), cache].into_iter().flatten().find_map(|path| std::fs::read(path).ok())
    }

    /// The real Pi 4 tree with its memory filled in, read once.
    fn patched_real_pi4() -> Option<Vec<u8>> {
        static DTB: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
        DTB.get_or_init(|| {
            let mut dtb = real_pi4_dtb()?;
            set_pi4_memory(&mut dtb, 0x3b40_0000);
            Some(dtb)
        })
        .clone()
    }

    /// Fills in `/memory@0` `reg` as the Pi firmware does (the packaged tree
    /// has a zero size there).
    fn set_pi4_memory(dtb: &mut [u8], size: u32) {
        let header = Header::parse(dtb).unwrap();
        let tree = Tree { structs: &dtb[header.structs.clone()], strings: &dtb[header.strings.clone()] };
        let memory = tree.find_path("/memory@0").unwrap();
        let reg = tree.prop(memory.node, "reg").unwrap();
        assert_eq!(reg.len(), 12);
        let at = reg.as_ptr() as usize - dtb.as_ptr() as usize;
        set_be32(dtb, at + 8, size);
    }

    #[test]
    fn real_raspberry_pi_4() {
        let Some(mut dtb) = real_pi4_dtb() else {
            eprintln!("SKIP: no bcm2711-rpi-4-b.dtb (run scripts/fetch-pi-dtb)");
            return;
        };
        assert_eq!(Board::from_slice(&dtb).unwrap_err(), DtError::NoMemory);
        set_pi4_memory(&mut dtb, 0x3b40_0000);
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.kind(), BoardKind::RaspberryPi4);
        assert_eq!(b.model(), "Raspberry Pi 4 Model B");
        assert_eq!(b.memory(), [r(0, 0x3b40_0000)]);
        assert_eq!(b.reserved(), [r(0, 0x1000)]);
        assert_eq!(b.cpus().len(), 4);
        for (i, cpu) in b.cpus().iter().enumerate() {
            let release_addr = 0xd8 + 8 * i as u64;
            assert_eq!(*cpu, CpuDesc { mpidr: i as u64, enable_method: EnableMethod::SpinTable { release_addr } });
        }
        assert_eq!(b.psci(), None);
        assert_eq!(b.console(), Some(UartDesc { kind: UartKind::MiniUart, base: 0xfe21_5040, size: 0x40 }));
        let Some(GicDesc::V2 { gicd, gicc, gich, gicv, maintenance_irq }) = b.gic() else {
            panic!("not a GICv2: {:?}", b.gic());
        };
        assert_eq!(gicd.base, 0xff84_1000);
        assert_eq!(gicc.base, 0xff84_2000);
        assert_eq!(gich.map(|g| g.base), Some(0xff84_4000));
        assert_eq!(gicv.map(|g| g.base), Some(0xff84_6000));
        assert_eq!(maintenance_irq, Some(25));
        let t = b.timer().unwrap();
        assert_eq!((t.secure_phys, t.nonsecure_phys, t.virt, t.hyp_phys), (29, 30, 27, 26));
        // The Cortex-A72 PMU's interrupts are SPIs 16-19, one per CPU.
        assert_eq!(b.pmu_intid(), Some(48));
        assert_eq!(b.watchdog(), Some(0xfe10_0000));
        assert_eq!(b.bootargs(), "");

        // The PL011 the aliases call serial0, through the same /soc ranges.
        let header = Header::parse(&dtb).unwrap();
        let tree = Tree { structs: &dtb[header.structs.clone()], strings: &dtb[header.strings.clone()] };
        let pl011 = tree.find_path("/soc/serial@7e201000").unwrap();
        let reg = tree.reg_translated(pl011.node, pl011.ancestors(), 0);
        assert_eq!(reg.map(|r| r.base), Some(0xfe20_1000));

        for off in (0..dtb.len() - 3).step_by(4) {
            for v in [0, 4, 0xffff_ffff] {
                let mut bad = dtb.clone();
                set_be32(&mut bad, off, v);
                exercise(&bad);
            }
        }
    }

    #[test]
    fn from_addr_reads_the_header_first() {
        let dtb = virt_dtb(false, |_| {});
        let mut padded = dtb.clone();
        padded.extend_from_slice(&[0xff; 64]);
        // SAFETY: `padded` is a readable blob for as long as `b` lives.
        let b = unsafe { Board::from_addr(padded.as_ptr() as usize) }.unwrap();
        assert_eq!(b.totalsize(), dtb.len());
        assert_eq!(b.as_bytes(), &dtb[..]);
        // SAFETY: address 0 is refused before anything is read.
        assert_eq!(unsafe { Board::from_addr(0) }.unwrap_err(), DtError::BadHeader("device tree address is 0"));
        let junk = [0u8; HEADER_SIZE];
        // SAFETY: the header is readable and its magic is wrong, so nothing more is read.
        assert!(matches!(unsafe { Board::from_addr(junk.as_ptr() as usize) }, Err(DtError::BadHeader(_))));
    }

    fn set_be32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn errors_name_the_problem() {
        let dtb = virt_dtb(false, |_| {});
        let msg = |bytes: &[u8]| Board::from_slice(bytes).unwrap_err().to_string();
        assert!(msg(&dtb[..20]).contains("shorter than the 40-byte header"));
        assert!(msg(&[0u8; 64]).contains("bad magic"));
        assert!(msg(&dtb[..dtb.len() - 1]).contains("shorter than the totalsize"));
        let mut big = dtb.clone();
        set_be32(&mut big, 4, 3 << 20);
        assert!(msg(&big).contains("larger than 2 MiB"));
        let mut old = dtb.clone();
        set_be32(&mut old, 20, 15);
        assert!(msg(&old).contains("version is older than 16"));
        let mut outside = dtb.clone();
        set_be32(&mut outside, 36, 0x10_0000);
        assert!(msg(&outside).contains("structure block lies outside totalsize"));

        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "cpus", |w| {
                node(w, "cpu@0", |w| {
                    w.property_string("device_type", "cpu").unwrap();
                    w.property_u64("reg", 0).unwrap();
                });
            });
        });
        let no_memory = w.finish().unwrap();
        assert_eq!(Board::from_slice(&no_memory).unwrap_err(), DtError::NoMemory);
        assert!(msg(&no_memory).contains("device_type = \"memory\""));

        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "memory@0", |w| {
                w.property_string("device_type", "memory").unwrap();
                cells(w, "reg", &[0, 0, 0x1000]);
            });
            node(w, "cpus", |w| {
                cells(w, "#address-cells", &[1]);
                node(w, "cpu@0", |w| w.property_string("device_type", "cpu").unwrap());
            });
        });
        let no_reg = w.finish().unwrap();
        assert_eq!(msg(&no_reg), "a /cpus/cpu node has no \"reg\" property");

        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "memory@0", |w| {
                w.property_string("device_type", "memory").unwrap();
                cells(w, "reg", &[0, 0, 0x1000]);
            });
        });
        assert_eq!(Board::from_slice(&w.finish().unwrap()).unwrap_err(), DtError::NoCpus);
    }

    #[test]
    fn too_many_cpus_are_counted_not_kept() {
        let mut w = FdtWriter::new().unwrap();
        node(&mut w, "", |w| {
            node(w, "memory@0", |w| {
                w.property_string("device_type", "memory").unwrap();
                cells(w, "reg", &[0, 0, 0x1000]);
            });
            node(w, "cpus", |w| {
                cells(w, "#address-cells", &[1]);
                for i in 0..(MAX_CPUS as u32 + 3) {
                    node(w, &format!("cpu@{i}"), |w| {
                        w.property_string("device_type", "cpu").unwrap();
                        cells(w, "reg", &[i]);
                        w.property_string("status", "disabled").unwrap();
                    });
                }
            });
        });
        let dtb = w.finish().unwrap();
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.cpus().len(), MAX_CPUS);
        assert_eq!(b.cpus_ignored(), 3);
    }

    #[test]
    fn memory_and_reserved_are_sorted_and_merged() {
        let reserve: Vec<_> = (0..20u64).map(|i| FdtReserveEntry::new(0x1000 * i, 0x1000).unwrap()).collect();
        let mut w = FdtWriter::new_with_mem_reserv(&reserve).unwrap();
        node(&mut w, "", |w| {
            cells(w, "#size-cells", &[2]);
            for (name, base) in [("memory@90000000", 0x9000_0000u64), ("memory@80000000", 0x8000_0000)] {
                node(w, name, |w| {
                    w.property_string("device_type", "memory").unwrap();
                    w.property_array_u64("reg", &[base, 0x1000_0000, base + 0x2000_0000, 0]).unwrap();
                });
            }
            node(w, "memory@a0000000", |w| {
                w.property_string("device_type", "memory").unwrap();
                w.property_string("status", "disabled").unwrap();
                w.property_array_u64("reg", &[0xa000_0000, 0x1000]).unwrap();
            });
            node(w, "cpus", |w| {
                cells(w, "#address-cells", &[1]);
                node(w, "cpu@0", |w| {
                    w.property_string("device_type", "cpu").unwrap();
                    cells(w, "reg", &[0]);
                });
            });
        });
        let dtb = w.finish().unwrap();
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.memory(), [r(0x8000_0000, 0x2000_0000)]);
        assert_eq!(b.reserved(), [r(0, 0x14000)]);
    }

    #[test]
    fn region_set_merges_and_fills_up() {
        let mut s = RegionSet::<3>::new();
        assert!(s.insert(r(0x100, 0x10)));
        assert!(s.insert(r(0x300, 0x10)));
        assert!(s.insert(r(0x200, 0x10)));
        assert_eq!(s.as_slice(), [r(0x100, 0x10), r(0x200, 0x10), r(0x300, 0x10)]);
        assert!(!s.insert(r(0x400, 0x10)), "full");
        assert!(s.insert(r(0x108, 0x100)), "merges the first two");
        assert_eq!(s.as_slice(), [r(0x100, 0x110), r(0x300, 0x10)]);
        assert!(s.insert(r(0, 0x1000)), "swallows everything");
        assert_eq!(s.as_slice(), [r(0, 0x1000)]);
        assert!(s.insert(r(u64::MAX - 4, 100)));
        assert_eq!(s.as_slice()[1].end(), u64::MAX);
    }

    /// Turns the node whose BEGIN_NODE token carries `name` into FDT_NOPs, as
    /// libfdt's `fdt_nop_node` (and QEMU) do.
    fn nop_node(dtb: &mut [u8], name: &str) {
        let header = Header::parse(dtb).unwrap();
        let mut pattern = FDT_BEGIN_NODE.to_be_bytes().to_vec();
        pattern.extend_from_slice(name.as_bytes());
        pattern.push(0);
        let start = dtb.windows(pattern.len()).position(|w| w == pattern).unwrap();
        let tree = Tree { structs: &dtb[header.structs.clone()], strings: &dtb[header.strings.clone()] };
        let (mut off, mut depth) = (start - header.structs.start, 0);
        loop {
            let (tok, next) = tree.token(off).unwrap();
            off = next;
            match tok {
                Token::Begin(_) => depth += 1,
                Token::End if depth == 1 => break,
                Token::End => depth -= 1,
                _ => {}
            }
        }
        let end = header.structs.start + off;
        for word in dtb[start..end].chunks_exact_mut(4) {
            word.copy_from_slice(&FDT_NOP.to_be_bytes());
        }
    }

    #[test]
    fn nop_tokens_are_skipped() {
        let mut dtb = virt_dtb(true, |_| {});
        nop_node(&mut dtb, "psci");
        nop_node(&mut dtb, "cpu-map");
        nop_node(&mut dtb, "its@8080000");
        let b = Board::from_slice(&dtb).unwrap();
        assert_eq!(b.psci(), None);
        assert_eq!(b.cpus().len(), 4);
        assert!(matches!(b.gic(), Some(GicDesc::V3 { its: None, .. })));
        assert_eq!(b.console().map(|c| c.base), Some(0x900_0000));
    }

    /// A domain node under `/chosen` with `cpus` and `memory` (KiB).
    fn domain(w: &mut FdtWriter, name: &str, cpus: u32, kib: u64, body: impl FnOnce(&mut FdtWriter)) {
        node(w, name, |w| {
            w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
            cells(w, "cpus", &[cpus]);
            w.property_u64("memory", kib).unwrap();
            body(w);
        });
    }

    fn module(w: &mut FdtWriter, name: &str, kind: &str, body: impl FnOnce(&mut FdtWriter)) {
        node(w, name, |w| {
            strs(w, "compatible", &[kind, "multiboot,module"]);
            body(w);
        });
    }

    /// One VM from bundle files, one from host memory (2+2 cells), and
    /// nodes that are not VMs.
    fn two_domains(w: &mut FdtWriter) {
        domain(w, "alpha", 2, 128 * 1024, |w| {
            module(w, "kernel", "multiboot,kernel", |w| {
                w.property_string("module-path", "alpha/kernel").unwrap();
                w.property_string("bootargs", "console=ttyAMA0 quiet").unwrap();
            });
            module(w, "ramdisk", "multiboot,ramdisk", |w| {
                w.property_string("module-path", "./alpha/initrd").unwrap();
            });
            module(w, "other", "multiboot,device-tree", |w| cells(w, "reg", &[1]));
        });
        node(w, "disabled-vm", |w| {
            w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
            w.property_string("status", "disabled").unwrap();
        });
        node(w, "module@0", |w| {
            strs(w, "compatible", &["multiboot,kernel", "multiboot,module"]);
            cells(w, "reg", &[0, 0x4800_0000, 0, 0x1000]);
        });
        domain(w, "vm@1", 1, 1024, |w| {
            w.property_string("name", "beta").unwrap();
            w.property_null("ferrovisor,pinned").unwrap();
            cells(w, "ferrovisor,interrupt-state", &[1000]);
            cells(w, "#address-cells", &[2]);
            cells(w, "#size-cells", &[2]);
            module(w, "module@48000000", "multiboot,kernel", |w| {
                cells(w, "reg", &[0, 0x4800_0000, 0, 0x20_0000]);
            });
            module(w, "module@49000000", "multiboot,ramdisk", |w| {
                w.property_string("status", "disabled").unwrap();
                cells(w, "reg", &[0, 0x4900_0000, 0, 0x1000]);
            });
        });
    }

    fn some_bad_domains(w: &mut FdtWriter) {
        two_domains(w);
        domain(w, "zero", 0, 1024, |_| {});
        domain(w, "nokernel", 1, 1024, |w| {
            module(w, "ramdisk", "multiboot,ramdisk", |w| w.property_string("module-path", "r").unwrap());
        });
        domain(w, "cells", 1, 1024, |w| {
            cells(w, "#address-cells", &[1]);
            cells(w, "#size-cells", &[1]);
            module(w, "kernel", "multiboot,kernel", |w| cells(w, "reg", &[0x4800_0000, 0x1000]));
        });
    }

    fn domains_of(dtb: &[u8]) -> Vec<Result<DomainDesc<'_>, DomainError<'_>>> {
        Board::from_slice(dtb).unwrap().domains().collect()
    }

    #[test]
    fn domains_from_chosen() {
        let dtb = virt_dtb(true, two_domains);
        let d = domains_of(&dtb);
        assert_eq!(
            d,
            [
                Ok(DomainDesc {
                    node: "alpha",
                    name: "alpha",
                    vcpus: 2,
                    memory_kib: 128 * 1024,
                    kernel: ModuleRef::Path("alpha/kernel"),
                    initrd: Some(ModuleRef::Path("./alpha/initrd")),
                    bootargs: "console=ttyAMA0 quiet",
                    pinned: false,
                    interrupt_state: None,
                }),
                Ok(DomainDesc {
                    node: "vm@1",
                    name: "beta",
                    vcpus: 1,
                    memory_kib: 1024,
                    kernel: ModuleRef::Region(r(0x4800_0000, 0x20_0000)),
                    initrd: None,
                    bootargs: "",
                    pinned: true,
                    interrupt_state: Some(1000),
                }),
            ]
        );
        // The rest of the board is read as before.
        assert_virt_common(&Board::from_slice(&dtb).unwrap());
        // Trees without domains.
        assert_eq!(Board::from_slice(&virt_dtb(false, |_| {})).unwrap().domains().count(), 0);
        assert_eq!(Board::from_slice(VIRT_GICV3).unwrap().domains().count(), 0);
        assert_eq!(Board::from_slice(&pi4_dtb()).unwrap().domains().count(), 0);
    }

    #[test]
    fn domains_with_one_cell_memory_and_default_cells() {
        let dtb = virt_dtb(true, |w| {
            node(w, "small", |w| {
                strs(w, "compatible", &["vendor,thing", DOMAIN_COMPATIBLE]);
                w.property_string("name", "ignored").unwrap();
                w.property_string("ferrovisor,name", "small one").unwrap();
                cells(w, "cpus", &[8]);
                cells(w, "memory", &[0x1_0000]);
                // No #address-cells/#size-cells: 2 and 1, as the spec says.
                module(w, "k", "multiboot,kernel", |w| cells(w, "reg", &[0x1, 0x4000_0000, 0x10]));
            });
        });
        let d = domains_of(&dtb);
        assert_eq!(d.len(), 1);
        let d = d[0].unwrap();
        assert_eq!((d.node, d.name, d.vcpus, d.memory_kib), ("small", "small one", 8, 0x1_0000));
        assert_eq!(d.kernel, ModuleRef::Region(r(0x1_4000_0000, 0x10)));
    }

    /// The error for a tree with `two_domains` plus one domain node built by
    /// `body`: the good domains must still come through, in order.
    fn one_bad(name: &str, cpus: u32, kib: u64, body: impl FnOnce(&mut FdtWriter)) -> String {
        let dtb = virt_dtb(true, |w| {
            domain(w, "first", 1, 1024, |w| {
                module(w, "kernel", "multiboot,kernel", |w| w.property_string("module-path", "k").unwrap());
            });
            domain(w, name, cpus, kib, body);
            two_domains(w);
        });
        let d = domains_of(&dtb);
        assert_eq!(d.len(), 4, "{d:?}");
        assert_eq!(d[0].map(|d| d.name), Ok("first"));
        assert_eq!(d[2].map(|d| d.name), Ok("alpha"));
        assert_eq!(d[3].map(|d| d.name), Ok("beta"));
        let e = d[1].unwrap_err();
        assert_eq!(e.node, name);
        e.to_string()
    }

    fn path_kernel(w: &mut FdtWriter) {
        module(w, "kernel", "multiboot,kernel", |w| w.property_string("module-path", "k").unwrap());
    }

    #[test]
    fn bad_domains_are_named_and_skipped() {
        let reg = |c: &'static [u32]| {
            move |w: &mut FdtWriter| module(w, "kernel", "multiboot,kernel", |w| cells(w, "reg", c))
        };
        assert_eq!(one_bad("z", 0, 1024, path_kernel), "/chosen/z: \"cpus\" is 0");
        assert_eq!(
            one_bad("i", 1, 1024, |w| {
                cells(w, "ferrovisor,interrupt-state", &[0, 1]);
                path_kernel(w);
            }),
            "/chosen/i: \"ferrovisor,interrupt-state\" is not one 32-bit cell"
        );
        assert_eq!(one_bad("m", 1, 0, path_kernel), "/chosen/m: \"memory\" is 0");
        assert_eq!(
            one_bad("m", 1, u64::MAX / 1000, path_kernel),
            "/chosen/m: \"memory\" is too large (bytes overflow 64 bits)"
        );
        assert_eq!(one_bad("n", 1, 64, |_| {}), "/chosen/n: no kernel: no child compatible with \"multiboot,kernel\"");
        let msg = one_bad("k2", 1, 64, |w| {
            path_kernel(w);
            module(w, "kernel2", "multiboot,kernel", |w| w.property_string("module-path", "k").unwrap());
        });
        assert_eq!(msg, "/chosen/k2: more than one child compatible with \"multiboot,kernel\"");
        let msg = one_bad("r2", 1, 64, |w| {
            path_kernel(w);
            module(w, "r1", "multiboot,ramdisk", |w| w.property_string("module-path", "r").unwrap());
            module(w, "r2", "multiboot,ramdisk", |w| w.property_string("module-path", "r").unwrap());
        });
        assert!(msg.contains("more than one child compatible with \"multiboot,ramdisk\""), "{msg}");
        let msg = one_bad("src", 1, 64, |w| module(w, "kernel", "multiboot,kernel", |_| {}));
        assert_eq!(msg, "/chosen/src/kernel: neither \"module-path\" nor \"reg\"");
        let msg = one_bad("both", 1, 64, |w| {
            module(w, "kernel", "multiboot,kernel", |w| {
                w.property_string("module-path", "k").unwrap();
                cells(w, "reg", &[0, 1, 1]);
            })
        });
        assert_eq!(msg, "/chosen/both/kernel: both \"module-path\" and \"reg\" (give one)");
        let msg = one_bad("p", 1, 64, |w| {
            module(w, "ramdisk", "multiboot,ramdisk", |w| w.property_string("module-path", "").unwrap());
            path_kernel(w);
        });
        assert_eq!(msg, "/chosen/p/ramdisk: \"module-path\" is not a non-empty UTF-8 string");
        // The default cells are 2 + 1: a 2 + 2 reg does not fit them.
        let msg = one_bad("r", 1, 64, reg(&[0, 0x4800_0000, 0, 0x1000]));
        assert!(msg.starts_with("/chosen/r/kernel: \"reg\" is not one (address, size) pair of 2 + 1 cells"), "{msg}");
        assert_eq!(one_bad("e", 1, 64, reg(&[0, 0x4800_0000, 0])), "/chosen/e/kernel: \"reg\" has a zero size");
        assert!(one_bad("o", 1, 64, reg(&[0xffff_ffff, 0xffff_f000, 0x1000]))
            .ends_with("runs past the end of the address space"));
        let msg = one_bad("c", 1, 64, |w| {
            cells(w, "#size-cells", &[0]);
            reg(&[0, 1])(w);
        });
        assert!(msg.contains("#address-cells = 2, #size-cells = 0: each must be 1 or 2"), "{msg}");
        let dtb = virt_dtb(true, |w| {
            node(w, "nocpus", |w| {
                w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
                w.property_u64("memory", 64).unwrap();
                path_kernel(w);
            });
            node(w, "badcpus", |w| {
                w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
                w.property_u64("cpus", 1).unwrap();
                w.property_u64("memory", 64).unwrap();
                path_kernel(w);
            });
            node(w, "nomem", |w| {
                w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
                cells(w, "cpus", &[1]);
                path_kernel(w);
            });
            node(w, "badmem", |w| {
                w.property_string("compatible", DOMAIN_COMPATIBLE).unwrap();
                cells(w, "cpus", &[1]);
                cells(w, "memory", &[0, 0, 64]);
                path_kernel(w);
            });
            domain(w, "badname-ESC-BEL", 1, 64, |w| {
                w.property_null("name").unwrap();
                path_kernel(w);
            });
            domain(w, "badname2", 1, 64, |w| {
                w.property("ferrovisor,name", &[0xc0, 0]).unwrap();
                w.property_string("name", "fine").unwrap();
                path_kernel(w);
            });
            domain(w, "args", 1, 64, |w| {
                module(w, "kernel", "multiboot,kernel", |w| {
                    w.property_string("module-path", "k").unwrap();
                    w.property("bootargs", &[0xff, 0xfe, 0]).unwrap();
                });
            });
        });
        // vm-fdt refuses control characters in node names; put some in.
        let mut dtb = dtb;
        let at = dtb.windows(7).position(|w| w == b"ESC-BEL").unwrap();
        dtb[at..at + 7].copy_from_slice(b"\x1b[2J\x07!!");
        let msgs: Vec<String> = domains_of(&dtb).into_iter().map(|d| d.unwrap_err().to_string()).collect();
        assert_eq!(
            msgs,
            [
                "/chosen/nocpus: no \"cpus\" property (the vCPU count)",
                "/chosen/badcpus: \"cpus\" is not one 32-bit cell",
                "/chosen/nomem: no \"memory\" property (the size in KiB)",
                "/chosen/badmem: \"memory\" is not one or two cells (the size in KiB)",
                "/chosen/badname-?[2J?!!: \"name\" is not a non-empty UTF-8 string",
                "/chosen/badname2: \"ferrovisor,name\" is not a non-empty UTF-8 string",
                "/chosen/args/kernel: \"bootargs\" is not a UTF-8 string",
            ]
        );
    }

    #[test]
    fn every_word_of_a_domain_tree_can_be_broken() {
        let dtb = virt_dtb(true, some_bad_domains);
        let good = domains_of(&dtb);
        let names: Vec<_> = good.iter().map(|d| d.map(|d| d.name).map_err(|e| e.node)).collect();
        assert_eq!(names, [Ok("alpha"), Ok("beta"), Err("zero"), Err("nokernel"), Ok("cells")]);
        assert_eq!(good[4].unwrap().kernel, ModuleRef::Region(r(0x4800_0000, 0x1000)));
        for off in (0..dtb.len() - 3).step_by(4) {
            for v in [0, 1, 2, 3, 4, 9, 0xffff_ffff] {
                let mut bad = dtb.clone();
                set_be32(&mut bad, off, v);
                exercise(&bad);
            }
        }
    }

    /// Calls every accessor, so a malformed blob that parses is also read.
    fn exercise(bytes: &[u8]) {
        if let Ok(b) = Board::from_slice(bytes) {
            let _ = (b.model(), b.compatible(), b.kind(), b.memory(), b.reserved(), b.cpus());
            let _ = (b.cpus_ignored(), b.psci(), b.console(), b.gic(), b.timer(), b.bootargs());
            let _ = (b.initrd(), b.watchdog(), b.totalsize(), b.memory_ignored(), b.boot_cpuid_phys());
            assert!(!b.memory().is_empty() && !b.cpus().is_empty());
            let mut count = 0;
            for d in b.domains() {
                count += 1;
                assert!(count <= bytes.len() / 8, "more domains than the blob can hold nodes");
                match d {
                    Ok(d) => {
                        assert!(d.vcpus > 0 && d.memory_kib > 0 && d.memory_kib.checked_mul(1024).is_some());
                        assert!(!d.name.is_empty());
                        for m in core::iter::once(d.kernel).chain(d.initrd) {
                            match m {
                                ModuleRef::Path(p) => assert!(!p.is_empty()),
                                ModuleRef::Region(r) => assert!(r.size > 0 && r.base.checked_add(r.size).is_some()),
                            }
                        }
                    }
                    Err(e) => assert!(e.to_string().starts_with("/chosen/")),
                }
            }
        } else if let Err(e) = Board::from_slice(bytes) {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn every_word_of_real_blobs_can_be_broken() {
        const NASTY: [u32; 9] = [0, 1, 2, 3, 4, 9, 0x7fff_ffff, 0xffff_fffc, 0xffff_ffff];
        for dtb in [VIRT_GICV2, VIRT_GICV3] {
            for off in (0..dtb.len() - 3).step_by(4) {
                for v in NASTY {
                    let mut bad = dtb.to_vec();
                    set_be32(&mut bad, off, v);
                    exercise(&bad);
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_refused_cleanly() {
        let dtb = pi4_dtb();
        for len in 0..dtb.len() {
            exercise(&dtb[..len]);
            let mut short = dtb[..len].to_vec();
            if len >= 8 {
                set_be32(&mut short, 4, len as u32);
            }
            exercise(&short);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2000))]

        #[test]
        fn mutated_blobs_never_panic(
            which in 0..7usize,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut dtb = match which {
                0 => VIRT_GICV2.to_vec(),
                1 => VIRT_GICV3.to_vec(),
                2 => pi4_dtb(),
                3 => patched_real_pi4().unwrap_or_else(pi4_dtb),
                4 => virt_dtb(true, |w| cells(w, "linux,initrd-start", &[1])),
                5 => virt_dtb(true, two_domains),
                _ => virt_dtb(true, some_bad_domains),
            };
            for (at, byte) in edits {
                let i = at.index(dtb.len());
                dtb[i] = byte;
            }
            if let Some(cut) = cut {
                dtb.truncate(cut.index(dtb.len()));
            }
            exercise(&dtb);
        }

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), fields in any::<[u32; 9]>()) {
            exercise(&body);
            // A plausible header over random contents, to get past the magic.
            let mut blob = FDT_MAGIC.to_be_bytes().to_vec();
            blob.extend_from_slice(&((HEADER_SIZE + body.len()) as u32).to_be_bytes());
            for (i, f) in fields.iter().enumerate().skip(1) {
                let limit = (HEADER_SIZE + body.len()) as u32 + 8;
                let v = if i == 4 { 16 + f % 2 } else if i == 5 { f % 18 } else { f % limit };
                blob.extend_from_slice(&v.to_be_bytes());
            }
            blob.extend_from_slice(&body);
            exercise(&blob);
        }
    }
}
