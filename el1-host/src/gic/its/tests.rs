//! The physical ITS driver against a fake ITS (registers plus a command consumer reading the real queue
//! memory) and a fake redistributor.

use std::alloc::{alloc, dealloc, Layout};
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

// ---- Fake table memory --------------------------------------------------------------------------

const PATTERN: u8 = 0xa5;

/// A bump allocator over one real, 64 KiB aligned buffer (so addresses are usable as pointers, VA ==
/// "PA"); bytes never handed out keep `PATTERN`.
struct Arena {
    base: *mut u8,
    size: usize,
    next: usize,
    allocs: Vec<(u64, usize)>,
}

impl Arena {
    fn new(size: usize) -> Arena {
        let layout = Layout::from_size_align(size, 0x1_0000).unwrap();
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc(layout) };
        assert!(!base.is_null());
        // SAFETY: `base` is valid for `size` bytes.
        unsafe { core::ptr::write_bytes(base, PATTERN, size) };
        Arena { base, size, next: 0, allocs: Vec::new() }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `base` is valid for `size` bytes for as long as `self` lives.
        unsafe { core::slice::from_raw_parts(self.base, self.size) }
    }

    fn contains(&self, pa: u64, len: usize) -> bool {
        let start = self.base as u64;
        pa >= start && pa + len as u64 <= start + self.size as u64
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, Layout::from_size_align(self.size, 0x1_0000).unwrap()) };
    }
}

// SAFETY: hands out disjoint, zeroed, aligned parts of a buffer that lives as long as the arena (the
// tests keep the arena alive while the driver uses the memory); VA == the address returned.
unsafe impl TableMemory for Arena {
    fn alloc_zeroed(&mut self, bytes: usize, align: usize) -> Option<u64> {
        let start = self.next.next_multiple_of(align);
        let end = start.checked_add(bytes)?;
        if end > self.size {
            return None;
        }
        // SAFETY: `start..end` lies inside the buffer.
        unsafe { core::ptr::write_bytes(self.base.add(start), 0, bytes) };
        self.next = end;
        let pa = self.base as u64 + start as u64;
        self.allocs.push((pa, bytes));
        Some(pa)
    }
}

// ---- Fake ITS -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Consumes everything on each GITS_CWRITER write.
    Consume,
    /// Consumes one command per GITS_CREADR read.
    Slow,
    /// Never consumes.
    Never,
    /// Consumes this many commands in total, then stalls.
    StallAfter(usize),
}

struct FakeIts {
    typer: u64,
    ctlr: u32,
    baser: [u64; 8],
    /// Bits of each GITS_BASER<n> that ignore writes.
    baser_ro: [u64; 8],
    /// Shareability reads as 0 everywhere (a non-coherent ITS).
    non_shareable: bool,
    /// GITS_CTLR.Quiescent never comes back.
    never_quiescent: bool,
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    mode: Mode,
    consumed: Vec<Command>,
    /// Values GITS_CREADR returns instead of the real one, in turn (then the real one).
    creadr_script: Vec<u64>,
    cleaned: Vec<(u64, usize)>,
    barriers: usize,
}

/// QEMU 10.0's ITS as `hw/intc/arm_gicv3_its.c` and `gicv3_internal.h` set it up: Physical, ITT entries
/// of 12 bytes, 16 EventID and DeviceID bits, CIL with 16 ICID bits, HCC 0, PTA 0; with GICv4 also
/// Virtual and VMOVP. GITS_BASER0 devices, BASER1 collections, BASER2 vPEs (GICv4), all 8-byte entries
/// and 64 KiB pages at reset; only Type and Entry_Size are read-only.
fn qemu_typer(v4: bool) -> u64 {
    let v = if v4 { TYPER_VIRTUAL | TYPER_VMOVP } else { 0 };
    TYPER_PHYSICAL | (12 - 1) << 4 | 15 << 8 | 15 << 13 | TYPER_CIL | 15 << 32 | v
}

const fn baser_reset(kind: u64, entry_size: u64) -> u64 {
    kind << 56 | (entry_size - 1) << 48 | 2 << 8
}

impl FakeIts {
    fn qemu(v4: bool) -> FakeIts {
        let mut baser = [0; 8];
        baser[0] = baser_reset(1, 8);
        baser[1] = baser_reset(4, 8);
        if v4 {
            baser[2] = baser_reset(2, 8);
        }
        FakeIts {
            typer: qemu_typer(v4),
            ctlr: CTLR_QUIESCENT,
            baser,
            baser_ro: [field(58, 56) | field(52, 48); 8],
            non_shareable: false,
            never_quiescent: false,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            mode: Mode::Consume,
            consumed: Vec::new(),
            creadr_script: Vec::new(),
            cleaned: Vec::new(),
            barriers: 0,
        }
    }

    fn queue_bytes(&self) -> u64 {
        ((self.cbaser & CBASER_SIZE) + 1) * 4096
    }

    fn consume_one(&mut self) {
        if self.creadr == self.cwriter || self.creadr & CREADR_STALLED != 0 {
            return;
        }
        if let Mode::StallAfter(n) = self.mode {
            if self.consumed.len() >= n {
                self.creadr |= CREADR_STALLED;
                return;
            }
        }
        let pa = (self.cbaser & CBASER_PA) + self.creadr;
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            // SAFETY: the driver put the queue in an Arena the test keeps alive, and `creadr` stays below
            // the queue's size.
            *w = u64::from_le(unsafe { core::ptr::read_volatile((pa + 8 * i as u64) as *const u64) });
        }
        self.consumed.push(Command(words));
        self.creadr = (self.creadr + 32) % self.queue_bytes();
    }
}

impl Registers for FakeIts {
    fn read32(&mut self, offset: usize) -> u32 {
        match offset {
            GITS_CTLR => self.ctlr,
            _ => self.read64(offset & !7) as u32,
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        assert_eq!(offset, GITS_CTLR, "unexpected 32-bit write at {offset:#x}");
        self.ctlr = (self.ctlr & CTLR_QUIESCENT) | (value & CTLR_ENABLED);
        if value & CTLR_ENABLED != 0 {
            self.ctlr &= !CTLR_QUIESCENT;
        } else if !self.never_quiescent {
            self.ctlr |= CTLR_QUIESCENT;
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        match offset {
            GITS_TYPER => self.typer,
            GITS_CBASER => self.cbaser,
            GITS_CWRITER => self.cwriter,
            GITS_CREADR => {
                if !self.creadr_script.is_empty() {
                    return self.creadr_script.remove(0);
                }
                if self.mode == Mode::Slow {
                    self.consume_one();
                }
                self.creadr
            }
            o if (GITS_BASER0..GITS_BASER0 + 64).contains(&o) => self.baser[(o - GITS_BASER0) / 8],
            _ => panic!("unexpected read at {offset:#x}"),
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let share = if self.non_shareable { !field(11, 10) } else { u64::MAX };
        match offset {
            GITS_CBASER => {
                assert_eq!(self.ctlr & CTLR_ENABLED, 0, "CBASER written while enabled");
                self.cbaser = value & share;
                self.creadr = 0;
                self.cwriter = 0;
            }
            GITS_CWRITER => {
                assert_eq!(value & !CQ_OFFSET, 0, "CWRITER {value:#x}");
                assert!(value < self.queue_bytes(), "CWRITER {value:#x} beyond the queue");
                self.cwriter = value;
                match self.mode {
                    Mode::Consume | Mode::StallAfter(_) => {
                        while self.creadr != self.cwriter && self.creadr & CREADR_STALLED == 0 {
                            self.consume_one();
                        }
                    }
                    Mode::Slow | Mode::Never => {}
                }
            }
            o if (GITS_BASER0..GITS_BASER0 + 64).contains(&o) => {
                assert_eq!(self.ctlr & CTLR_ENABLED, 0, "BASER written while enabled");
                let n = (o - GITS_BASER0) / 8;
                let ro = self.baser_ro[n];
                self.baser[n] = (self.baser[n] & ro) | (value & !ro & share);
            }
            _ => panic!("unexpected write at {offset:#x}"),
        }
    }

    fn memory_barrier(&mut self) {
        self.barriers += 1;
    }

    fn clean_dcache(&mut self, pa: u64, len: usize) {
        self.cleaned.push((pa, len));
    }
}

fn init(fake: FakeIts, arena: &mut Arena, devices: u32, vpes: u32) -> Result<PhysIts<FakeIts>, ItsError> {
    PhysIts::init(fake, arena, devices, vpes)
}

#[test]
fn init_refuses_an_its_without_physical_lpis() {
    assert_eq!(
        ItsError::from(TyperError::BadField { field: "x", value: 1 }),
        ItsError::BadTyper { field: "x", value: 1 }
    );
    let mut fake = FakeIts::qemu(false);
    fake.typer = 0;
    assert_eq!(init(fake, &mut Arena::new(0x4_0000), 16, 0).err(), Some(ItsError::NoPhysicalLpis));
}

// ---- init ---------------------------------------------------------------------------------------

#[test]
fn init_on_qemu_gicv3() {
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(FakeIts::qemu(false), &mut arena, 1024, 0).unwrap();
    let fake = its.regs();
    assert_eq!(fake.ctlr & CTLR_ENABLED, CTLR_ENABLED);

    // Devices: 1024 × 8 bytes = two 4 KiB pages (QEMU's Page_Size is writable; the smallest is taken).
    let b0 = fake.baser[0];
    assert_eq!(b0 & BASER_VALID, BASER_VALID);
    assert_eq!(b0 & BASER_INDIRECT, 0);
    assert_eq!(BaserType::from_baser(b0), BaserType::Devices);
    assert_eq!(PageSize::from_baser(b0), Some(PageSize::Size4K));
    assert_eq!(b0 & BASER_SIZE, 1);
    assert_eq!(baser_entry_size(b0), 8);
    assert_eq!(extract(b0, 61, 59), attr::WB_RAWA);
    assert_eq!(shareability(b0), attr::INNER_SHAREABLE);
    // Collections: HCC is 0, so 8 in memory: one page.
    let b1 = fake.baser[1];
    assert_eq!(b1 & (BASER_VALID | BASER_SIZE), BASER_VALID);
    assert_eq!(BaserType::from_baser(b1), BaserType::Collections);
    // Nothing else touched.
    assert_eq!(fake.baser[2..], [0; 6]);

    // Command queue: 64 KiB, 64 KiB aligned, Valid, WB, Inner Shareable; CWRITER 0.
    let cb = fake.cbaser;
    assert_eq!(cb & CBASER_VALID, CBASER_VALID);
    assert_eq!(cb & CBASER_SIZE, 15);
    assert_eq!(extract(cb, 61, 59), attr::WB_RAWA);
    assert_eq!(shareability(cb), attr::INNER_SHAREABLE);
    assert_eq!((cb & CBASER_PA) % 0x1_0000, 0);
    assert_eq!(fake.cwriter, 0);

    let t = its.tables();
    let dev = t[0].unwrap();
    assert_eq!((dev.kind, dev.bytes, dev.entries, dev.pa), (BaserType::Devices, 0x2000, 1024, baser_pa(b0)));
    assert_eq!(t[1].unwrap().entries, 512);
    assert!(t[2..].iter().all(Option::is_none));
    assert_eq!(its.collections(), 512);
    assert!(its.coherent());
    // Every table and the queue came from the arena, and do not overlap.
    assert_eq!(arena.allocs.len(), 3);
    assert_eq!(arena.allocs[0], (dev.pa, 0x2000));
    assert_eq!(arena.allocs[2], (cb & CBASER_PA, COMMAND_QUEUE_BYTES));
}

#[test]
fn init_on_qemu_gicv4_sets_up_the_vpe_table() {
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(FakeIts::qemu(true), &mut arena, 64, 100).unwrap();
    let b2 = its.regs().baser[2];
    assert_eq!(b2 & BASER_VALID, BASER_VALID);
    assert_eq!(BaserType::from_baser(b2), BaserType::Vpes);
    let vpes = its.tables()[2].unwrap();
    assert!(vpes.entries >= 100);
    assert_eq!(vpes.pa, baser_pa(b2));
    assert!(its.typer().virtual_lpis);

    // vPEs asked of a GICv3 ITS.
    assert_eq!(init(FakeIts::qemu(false), &mut Arena::new(0x10_0000), 64, 1).err(), Some(ItsError::NoVirtualLpis));
    // GICv4 with no vPEs asked for: the vPE table is left invalid.
    let mut fake = FakeIts::qemu(true);
    fake.baser[2] |= BASER_VALID;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 64, 0).unwrap();
    assert_eq!(its.regs().baser[2] & BASER_VALID, 0);
    assert!(its.tables()[2].is_none());
}

#[test]
fn init_respects_entry_size_and_read_only_page_size() {
    let mut fake = FakeIts::qemu(false);
    // Device entries of 16 bytes, Page_Size read-only at 64 KiB.
    fake.baser[0] = baser_reset(1, 16);
    fake.baser_ro[0] |= field(9, 8);
    let mut arena = Arena::new(0x20_0000);
    let mut its = init(fake, &mut arena, 5000, 0).unwrap();
    let b0 = its.regs().baser[0];
    assert_eq!(PageSize::from_baser(b0), Some(PageSize::Size64K));
    // 5000 × 16 = 80000 bytes: two 64 KiB pages.
    assert_eq!(b0 & BASER_SIZE, 1);
    let dev = its.tables()[0].unwrap();
    assert_eq!((dev.entry_size, dev.bytes, dev.entries), (16, 0x2_0000, 8192));
    assert_eq!(dev.pa % 0x1_0000, 0);
}

#[test]
fn init_page_size_16k_when_4k_is_refused() {
    let mut fake = FakeIts::qemu(false);
    // An ITS that supports 16 KiB and 64 KiB only: 4 KiB reads back as 16 KiB.
    struct Only16k(FakeIts);
    impl Registers for Only16k {
        fn read32(&mut self, o: usize) -> u32 {
            self.0.read32(o)
        }
        fn write32(&mut self, o: usize, v: u32) {
            self.0.write32(o, v)
        }
        fn read64(&mut self, o: usize) -> u64 {
            self.0.read64(o)
        }
        fn write64(&mut self, o: usize, mut v: u64) {
            if (GITS_BASER0..GITS_BASER0 + 64).contains(&o) && extract(v, 9, 8) == 0 {
                v |= 1 << 8;
            }
            self.0.write64(o, v)
        }
    }
    fake.baser[0] = baser_reset(1, 8);
    let mut arena = Arena::new(0x10_0000);
    let its = PhysIts::init(Only16k(fake), &mut arena, 100, 0).unwrap();
    let dev = its.tables()[0].unwrap();
    assert_eq!((dev.page, dev.bytes), (PageSize::Size16K, 0x4000));
}

#[test]
fn init_table_errors() {
    // 2^24 devices × 8 bytes = 128 MiB: more than 256 pages of 64 KiB.
    let mut fake = FakeIts::qemu(false);
    fake.typer = (fake.typer & !field(17, 13)) | 23 << 13;
    assert_eq!(
        init(fake, &mut Arena::new(0x10_0000), 1 << 24, 0).err(),
        Some(ItsError::TableTooBig { table: "device", bytes: 1 << 27 })
    );
    // 150000 × 8 bytes fits in 16 KiB pages but not in 256 of 4 KiB, and Page_Size is stuck at 4 KiB.
    let mut fake = FakeIts::qemu(false);
    fake.typer = (fake.typer & !field(17, 13)) | 17 << 13;
    fake.baser[0] = baser_reset(1, 8) & !field(9, 8);
    fake.baser_ro[0] |= field(9, 8);
    assert_eq!(init(fake, &mut Arena::new(0x10_0000), 150_000, 0).err(), Some(ItsError::NoPageSize { n: 0 }));
    // More devices than DeviceID bits.
    assert_eq!(
        init(FakeIts::qemu(false), &mut Arena::new(0x10_0000), 65537, 0).err(),
        Some(ItsError::TooManyIds { what: "device", wanted: 65537, max: 65536 })
    );
    // Out of memory (the queue's 64 KiB does not fit after the tables).
    assert_eq!(
        init(FakeIts::qemu(false), &mut Arena::new(0x1_0000), 16, 0).err(),
        Some(ItsError::OutOfMemory { what: "command queue", bytes: COMMAND_QUEUE_BYTES })
    );
    // Valid does not stick.
    let mut fake = FakeIts::qemu(false);
    fake.baser_ro[1] |= BASER_VALID;
    assert!(matches!(init(fake, &mut Arena::new(0x10_0000), 16, 0).err(), Some(ItsError::BaserRejected { n: 1, .. })));
}

#[test]
fn init_waits_for_quiescence() {
    let mut fake = FakeIts::qemu(false);
    fake.ctlr = CTLR_ENABLED;
    fake.never_quiescent = true;
    assert_eq!(init(fake, &mut Arena::new(0x10_0000), 16, 0).err(), Some(ItsError::NotQuiescent));
    // An enabled ITS is disabled first, and quiesces.
    let mut fake = FakeIts::qemu(false);
    fake.ctlr = CTLR_ENABLED;
    assert!(init(fake, &mut Arena::new(0x10_0000), 16, 0).is_ok());
}

#[test]
fn init_skips_the_collection_table_when_held_in_hardware() {
    let mut fake = FakeIts::qemu(false);
    fake.typer |= 8 << 24;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    assert_eq!(its.regs().baser[1] & BASER_VALID, 0);
    assert!(its.tables()[1].is_none());
    assert_eq!(its.collections(), 8);
}

#[test]
fn non_shareable_its_gets_non_cacheable_tables() {
    let mut fake = FakeIts::qemu(false);
    fake.non_shareable = true;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    assert!(!its.coherent());
    let b0 = its.regs().baser[0];
    assert_eq!((extract(b0, 61, 59), shareability(b0)), (attr::NON_CACHEABLE, attr::NON_SHAREABLE));
    assert_eq!(extract(its.regs().cbaser, 61, 59), attr::NON_CACHEABLE);
    // Both tables were cleaned; commands are cleaned as they are written.
    assert_eq!(its.regs().cleaned.len(), 2);
    its.send(&[Command::sync(0)]).unwrap();
    let queue = its.regs().cbaser & CBASER_PA;
    assert_eq!(its.regs().cleaned[2], (queue, 32));
}

// ---- send ---------------------------------------------------------------------------------------

fn numbered(n: usize) -> Vec<Command> {
    (0..n).map(|i| Command::int(i as u32, !(i as u32))).collect()
}

#[test]
fn send_writes_commands_and_waits() {
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
    let cmds = [Command::mapd(1, 0x4000_0000, 4, true), Command::mapc(0, 0, true), Command::sync(0)];
    its.send(&cmds).unwrap();
    let fake = its.regs();
    assert_eq!(fake.consumed, cmds);
    assert_eq!((fake.cwriter, fake.creadr), (96, 96));
    assert!(fake.barriers >= 1);
    // The commands are in the queue memory, little-endian, at offsets 0, 32, 64.
    let queue = (fake.cbaser & CBASER_PA) - arena.base as u64;
    let word = |i: usize| {
        let at = queue as usize + 8 * i;
        u64::from_le_bytes(arena.bytes()[at..at + 8].try_into().unwrap())
    };
    assert_eq!([word(4), word(5), word(6), word(7)], cmds[1].0);
    // Nothing to send: no register write.
    its.send(&[]).unwrap();
    assert_eq!(its.regs().consumed.len(), 3);
}

#[test]
fn send_wraps_around() {
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
    let first = numbered(2000);
    its.send(&first).unwrap();
    assert_eq!(its.regs().cwriter, 2000 * 32);
    let second: Vec<Command> = numbered(200).into_iter().map(|c| Command([c.0[0] | 1 << 31, c.0[1], 0, 0])).collect();
    its.send(&second).unwrap();
    let fake = its.regs();
    assert_eq!(fake.cwriter, (2200 * 32) % COMMAND_QUEUE_BYTES as u64);
    assert_eq!(fake.consumed.len(), 2200);
    assert_eq!(fake.consumed[..2000], first[..]);
    assert_eq!(fake.consumed[2000..], second[..]);
}

#[test]
fn send_more_than_the_queue_holds_waits_for_room() {
    let mut fake = FakeIts::qemu(false);
    fake.mode = Mode::Slow;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    let cmds = numbered(5000);
    its.send(&cmds).unwrap();
    assert_eq!(its.regs().consumed, cmds);
    // A full queue that the ITS never drains: timeout, and CWRITER never passes CREADR.
    let mut fake = FakeIts::qemu(false);
    fake.mode = Mode::Never;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    its.set_poll_limit(1000);
    let err = its.send(&numbered(3000)).unwrap_err();
    // 2047 commands fit (one slot stays empty).
    assert_eq!(err, ItsError::CommandTimeout { cwriter: 2047 * 32, creadr: 0 });
    assert_eq!(its.regs().cwriter, 2047 * 32);
}

#[test]
fn send_times_out_and_reports_stalls() {
    let mut fake = FakeIts::qemu(false);
    fake.mode = Mode::Never;
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    its.set_poll_limit(100);
    assert_eq!(its.send(&[Command::sync(0)]), Err(ItsError::CommandTimeout { cwriter: 32, creadr: 0 }));

    let mut fake = FakeIts::qemu(false);
    fake.mode = Mode::StallAfter(1);
    let mut arena = Arena::new(0x10_0000);
    let mut its = init(fake, &mut arena, 16, 0).unwrap();
    assert_eq!(its.send(&numbered(3)), Err(ItsError::QueueStalled { creadr: 32 }));
    // Still stalled on the next send.
    assert_eq!(its.send(&numbered(1)), Err(ItsError::QueueStalled { creadr: 32 }));

    let mut arena = Arena::new(0x10_0000);
    let mut its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
    its.regs().creadr_script = vec![0x1_0000];
    assert_eq!(its.send(&numbered(1)), Err(ItsError::CreadrOutOfRange { creadr: 0x1_0000 }));
    its.regs().creadr_script = vec![0, 1 << 40];
    assert_eq!(its.send(&numbered(1)), Err(ItsError::CreadrOutOfRange { creadr: 1 << 40 }));
}

proptest! {
    #![proptest_config(crate::fuzz::config(64))]

    /// Whatever GITS_CREADR says, `send` writes only inside the queue, in whole 32-byte slots, and
    /// GITS_CWRITER stays a valid offset (the fake asserts that).
    #[test]
    fn send_never_writes_outside_the_queue(script in proptest::collection::vec(any::<u64>(), 0..64),
                                           aligned in proptest::collection::vec(0u64..2048, 0..64),
                                           n in 0usize..5000) {
        let mut arena = Arena::new(0x10_0000);
        let mut its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
        its.set_poll_limit(50);
        let queue = its.regs().cbaser & CBASER_PA;
        prop_assert!(arena.contains(queue, COMMAND_QUEUE_BYTES));
        let before = arena.bytes().to_vec();
        let mut creadr: Vec<u64> = script.iter().zip(&aligned).flat_map(|(&raw, &slot)| [raw, slot * 32]).collect();
        creadr.extend(aligned.iter().map(|s| s * 32));
        its.regs().creadr_script = creadr;
        its.regs().mode = Mode::Slow;
        let _ = its.send(&numbered(n));
        let q = (queue - arena.base as u64) as usize;
        let after = arena.bytes();
        prop_assert!(before[..q] == after[..q]);
        prop_assert!(before[q + COMMAND_QUEUE_BYTES..] == after[q + COMMAND_QUEUE_BYTES..]);
    }
}

// ---- rdbase, ITT size ---------------------------------------------------------------------------

#[test]
fn rdbase_follows_pta() {
    let mut arena = Arena::new(0x10_0000);
    let its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
    assert_eq!(its.rdbase(0x080a_0000 + 3 * 0x2_0000, 3), 3);
    let mut fake = FakeIts::qemu(false);
    fake.typer |= TYPER_PTA;
    let mut arena = Arena::new(0x10_0000);
    let its = init(fake, &mut arena, 16, 0).unwrap();
    let rd = its.rdbase(0x080e_0000, 3);
    assert_eq!(rd, 0x80e);
    assert_eq!(Command::mapc(0, rd, true).0[2] & field(51, 16), 0x080e_0000);
}

#[test]
fn itt_sizes() {
    let mut arena = Arena::new(0x10_0000);
    let its = init(FakeIts::qemu(false), &mut arena, 16, 0).unwrap();
    // QEMU's ITT entries are 12 bytes.
    assert_eq!(its.itt_bytes(0), 256);
    assert_eq!(its.itt_bytes(5), 512);
    assert_eq!(its.itt_bytes(8), 3072);
    assert_eq!(its.itt_bytes(16), 12 << 16);
    assert_eq!(its.itt_bytes(32), 12 << 32);
    assert_eq!(its.itt_bytes(33), usize::MAX);
    assert_eq!(its.itt_bytes(255), usize::MAX);
}

// ---- LPI tables and redistributors --------------------------------------------------------------

#[test]
fn lpi_table_sizes_and_registers() {
    assert_eq!(LpiTables::prop_table_bytes(16), 65536 - 8192);
    assert_eq!(LpiTables::prop_table_bytes(14), 8192);
    assert_eq!(LpiTables::prop_table_bytes(13), 0);
    assert_eq!(LpiTables::prop_table_bytes(32), (1 << 32) - 8192);
    assert_eq!(LpiTables::prop_table_bytes(33), usize::MAX);
    assert_eq!(LpiTables::pend_table_bytes(16), 0x1_0000);
    assert_eq!(LpiTables::pend_table_bytes(20), 0x2_0000);
    assert_eq!(LpiTables::pend_table_bytes(32), 1 << 29);
    assert_eq!(LpiTables::pend_table_bytes(40), usize::MAX);
    assert_eq!(LpiTables::check_id_bits(13), Err(ItsError::BadLpiIdBits { id_bits: 13 }));
    assert_eq!(LpiTables::check_id_bits(16), Ok(()));

    // PROPBASER: IDbits [4:0] = 15, InnerCache [9:7] = 0b111, Shareability [11:10] = 0b01, PA [51:12].
    assert_eq!(LpiTables::propbaser(0x4123_4000, 16), 0x4123_4000 | 0b111 << 7 | 0b01 << 10 | 15);
    assert_eq!(LpiTables::vpropbaser(0x4123_4000, 16), LpiTables::propbaser(0x4123_4000, 16));
    // PENDBASER: PA [51:16], PTZ bit 62.
    assert_eq!(LpiTables::pendbaser(0x4125_0000, false), 0x4125_0000 | 0b111 << 7 | 0b01 << 10);
    assert_eq!(LpiTables::pendbaser(0x4125_0000, true), 0x4125_0000 | 0b111 << 7 | 0b01 << 10 | 1 << 62);
    assert_eq!(LpiTables::pendbaser(0x4125_ffff, false) & PENDBASER_PA, 0x4125_0000);
    // VPENDBASER: Valid 63 (with PendingLast 61 and IDAI 62 when making it valid).
    let v = LpiTables::vpendbaser(0x4126_0000, true);
    assert_eq!(v, 0x4126_0000 | 0b111 << 7 | 0b01 << 10 | 0b111 << 61);
    let d = Vpendbaser::decode(v | VPENDBASER_DIRTY);
    assert_eq!((d.valid, d.idai, d.pending_last, d.dirty, d.pa), (true, true, true, true, 0x4126_0000));
    assert_eq!(LpiTables::vpendbaser(0x4126_0000, false) >> 60, 0);
    // Configuration bytes: priority [7:2], bit 1 RES1, enable bit 0.
    assert_eq!(LpiTables::lpi_config(0xa0, true), 0xa3);
    assert_eq!(LpiTables::lpi_config(0xa3, false), 0xa2);
    assert_eq!(LpiTables::lpi_config(0, false), 0x02);
    assert_eq!((LpiTables::prop_table_bytes(16), LpiTables::pend_table_bytes(16)), (65536 - 8192, 0x1_0000));
    assert_eq!(LpiTables::vpropbaser(0x4123_4000, 20), LpiTables::propbaser(0x4123_4000, 20));
}

#[derive(Default)]
struct FakeRd {
    typer: u64,
    ctlr: u32,
    propbaser: u64,
    pendbaser: u64,
    non_shareable: bool,
    ctlr_ro: bool,
    writes: Vec<usize>,
}

impl Registers for FakeRd {
    fn read32(&mut self, offset: usize) -> u32 {
        assert_eq!(offset, GICR_CTLR);
        self.ctlr
    }
    fn write32(&mut self, offset: usize, value: u32) {
        assert_eq!(offset, GICR_CTLR);
        self.writes.push(offset);
        if !self.ctlr_ro {
            self.ctlr = value;
        }
    }
    fn read64(&mut self, offset: usize) -> u64 {
        match offset {
            GICR_TYPER => self.typer,
            GICR_PROPBASER => self.propbaser,
            GICR_PENDBASER => self.pendbaser,
            _ => panic!("read at {offset:#x}"),
        }
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.writes.push(offset);
        let value = if self.non_shareable { value & !field(11, 10) } else { value };
        match offset {
            GICR_PROPBASER => self.propbaser = value,
            GICR_PENDBASER => self.pendbaser = value,
            _ => panic!("write at {offset:#x}"),
        }
    }
}

#[test]
fn enable_lpis_programs_tables_then_enables() {
    let prop = LpiTables::propbaser(0x4100_0000, 16);
    let pend = LpiTables::pendbaser(0x4101_0000, true);
    let mut rd = FakeRd { typer: GICR_TYPER_PLPIS, ..FakeRd::default() };
    assert_eq!(enable_lpis_on(&mut rd, prop, pend), Ok(Coherency::Shareable));
    assert_eq!((rd.propbaser, rd.pendbaser, rd.ctlr), (prop, pend, GICR_CTLR_ENABLE_LPIS));
    assert_eq!(rd.writes, [GICR_PROPBASER, GICR_PENDBASER, GICR_CTLR]);
    // Once enabled, no reprogramming.
    assert_eq!(enable_lpis_on(&mut rd, prop, pend), Err(ItsError::LpisAlreadyEnabled));
    assert_eq!(rd.writes.len(), 3);

    let mut rd = FakeRd::default();
    assert_eq!(enable_lpis_on(&mut rd, prop, pend), Err(ItsError::NoPhysicalLpis));
    assert!(rd.writes.is_empty());

    let mut rd = FakeRd { typer: GICR_TYPER_PLPIS, ctlr_ro: true, ..FakeRd::default() };
    assert_eq!(enable_lpis_on(&mut rd, prop, pend), Err(ItsError::LpiEnableFailed));

    let mut rd = FakeRd { typer: GICR_TYPER_PLPIS, non_shareable: true, ..FakeRd::default() };
    assert_eq!(enable_lpis_on(&mut rd, prop, pend), Ok(Coherency::NonShareable));
    assert_eq!(extract(rd.propbaser, 9, 7), attr::NON_CACHEABLE);
    assert_eq!(extract(rd.pendbaser, 9, 7), attr::NON_CACHEABLE);
    assert_eq!(rd.pendbaser & (PENDBASER_PA | PENDBASER_PTZ), 0x4101_0000 | PENDBASER_PTZ);
}

#[test]
fn errors_name_what_failed() {
    use std::string::ToString;
    assert!(ItsError::NoVirtualLpis.to_string().contains("no vLPI support"));
    assert!(ItsError::TableTooBig { table: "device", bytes: 1 << 27 }.to_string().contains("device table"));
    assert!(ItsError::CommandTimeout { cwriter: 0x40, creadr: 0x20 }.to_string().contains("timeout"));
    assert!(ItsError::QueueStalled { creadr: 0x20 }.to_string().contains("stalled at offset 0x20"));
    assert!(ItsError::BaserRejected { n: 1, wrote: 1, read: 0 }.to_string().contains("GITS_BASER1"));
}
