//! ITS commands (IHI 0069 §6.3): 32 bytes, four little-endian doublewords, the opcode in DW0[7:0].
//!
//! Constructors take the architecture's fields as they are and mask each to its width; the caller
//! checks ranges against `GITS_TYPER` (an out-of-range field is the ITS's to drop or stall on, never
//! a fault here).
//!
//! `rdbase` arguments are the RDbase field's value, placed by the constructor at DW2[51:16]: with
//! `GITS_TYPER.PTA` = 1 the RD frame's physical address shifted right by 16, with PTA = 0 the
//! redistributor's processor number (`GICR_TYPER.Processor_Number`). [`super::PhysIts::rdbase`]
//! computes it.

use super::registers::field;

/// One ITS command, as written to the command queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u64; 4]);

pub const OP_MOVI: u8 = 0x01;
pub const OP_INT: u8 = 0x03;
pub const OP_CLEAR: u8 = 0x04;
pub const OP_SYNC: u8 = 0x05;
pub const OP_MAPD: u8 = 0x08;
pub const OP_MAPC: u8 = 0x09;
pub const OP_MAPTI: u8 = 0x0a;
pub const OP_MAPI: u8 = 0x0b;
pub const OP_INV: u8 = 0x0c;
pub const OP_INVALL: u8 = 0x0d;
pub const OP_MOVALL: u8 = 0x0e;
pub const OP_DISCARD: u8 = 0x0f;
pub const OP_VMOVI: u8 = 0x21;
pub const OP_VMOVP: u8 = 0x22;
pub const OP_VSYNC: u8 = 0x25;
pub const OP_VMAPP: u8 = 0x29;
pub const OP_VMAPTI: u8 = 0x2a;
pub const OP_VMAPI: u8 = 0x2b;
pub const OP_VINVALL: u8 = 0x2d;

/// Bytes per command.
pub const COMMAND_BYTES: usize = 32;
/// The INTID that means "no doorbell" in VMAPTI, VMAPI and VMOVI.
pub const NO_DOORBELL: u32 = 1023;

const VALID: u64 = 1 << 63;
const RDBASE_SHIFT: u32 = 16;
const RDBASE: u64 = field(51, 16);
const ITT_ADDR: u64 = field(51, 8);
const VPT_ADDR: u64 = field(51, 16);

const fn dw0(op: u8, device: u32) -> u64 {
    op as u64 | (device as u64) << 32
}

const fn rdbase_field(rdbase: u64) -> u64 {
    (rdbase << RDBASE_SHIFT) & RDBASE
}

const fn vpeid_field(vpeid: u16) -> u64 {
    (vpeid as u64) << 32
}

impl Command {
    /// The opcode, DW0[7:0].
    pub const fn opcode(&self) -> u8 {
        self.0[0] as u8
    }

    /// MAPD: map `device` to the ITT at `itt_pa` (256-byte aligned; bits [51:8] are kept) holding
    /// 2^`event_bits` events (DW1[4:0] Size = `event_bits` - 1; `event_bits` is 1 to 32).
    pub const fn mapd(device: u32, itt_pa: u64, event_bits: u8, valid: bool) -> Command {
        let size = (event_bits.wrapping_sub(1) & 0x1f) as u64;
        let v = if valid { VALID } else { 0 };
        Command([dw0(OP_MAPD, device), size, (itt_pa & ITT_ADDR) | v, 0])
    }

    /// MAPC: map collection `icid` to the redistributor `rdbase` (see the module's note on units).
    pub const fn mapc(icid: u16, rdbase: u64, valid: bool) -> Command {
        let v = if valid { VALID } else { 0 };
        Command([OP_MAPC as u64, 0, icid as u64 | rdbase_field(rdbase) | v, 0])
    }

    /// MAPTI: map (`device`, `event`) to physical LPI `pintid` in collection `icid`.
    pub const fn mapti(device: u32, event: u32, pintid: u32, icid: u16) -> Command {
        Command([dw0(OP_MAPTI, device), event as u64 | (pintid as u64) << 32, icid as u64, 0])
    }

    /// MAPI: map (`device`, `event`) to LPI INTID `event` in collection `icid`.
    pub const fn mapi(device: u32, event: u32, icid: u16) -> Command {
        Command([dw0(OP_MAPI, device), event as u64, icid as u64, 0])
    }

    const fn device_event(op: u8, device: u32, event: u32) -> Command {
        Command([dw0(op, device), event as u64, 0, 0])
    }

    /// INT: make the interrupt (`device`, `event`) translates to pending.
    pub const fn int(device: u32, event: u32) -> Command {
        Command::device_event(OP_INT, device, event)
    }

    /// CLEAR: make the interrupt (`device`, `event`) translates to not pending.
    pub const fn clear(device: u32, event: u32) -> Command {
        Command::device_event(OP_CLEAR, device, event)
    }

    /// DISCARD: clear the interrupt's pending state and unmap (`device`, `event`).
    pub const fn discard(device: u32, event: u32) -> Command {
        Command::device_event(OP_DISCARD, device, event)
    }

    /// INV: reload the configuration of the LPI (`device`, `event`) translates to.
    pub const fn inv(device: u32, event: u32) -> Command {
        Command::device_event(OP_INV, device, event)
    }

    /// MOVI: move (`device`, `event`) to collection `icid`.
    pub const fn movi(device: u32, event: u32, icid: u16) -> Command {
        Command([dw0(OP_MOVI, device), event as u64, icid as u64, 0])
    }

    /// INVALL: reload the configuration of every LPI of collection `icid`.
    pub const fn invall(icid: u16) -> Command {
        Command([OP_INVALL as u64, 0, icid as u64, 0])
    }

    /// MOVALL: move every pending LPI of redistributor `rdbase1` to `rdbase2`.
    pub const fn movall(rdbase1: u64, rdbase2: u64) -> Command {
        Command([OP_MOVALL as u64, 0, rdbase_field(rdbase1), rdbase_field(rdbase2)])
    }

    /// SYNC: complete every earlier command's effects on redistributor `rdbase`.
    pub const fn sync(rdbase: u64) -> Command {
        Command([OP_SYNC as u64, 0, rdbase_field(rdbase), 0])
    }

    /// VMAPP (GICv4.0 layout): map vPE `vpeid` to redistributor `rdbase`, its virtual LPI pending
    /// table at `vpt_pa` (64 KiB aligned; bits [51:16] are kept) covering vINTIDs of `vpt_size` + 1
    /// bits (DW3[4:0] VPT_size, the vPE's `IDbits` - 1).
    pub const fn vmapp(vpeid: u16, rdbase: u64, vpt_pa: u64, vpt_size: u8, valid: bool) -> Command {
        let v = if valid { VALID } else { 0 };
        Command([
            OP_VMAPP as u64,
            vpeid_field(vpeid),
            rdbase_field(rdbase) | v,
            (vpt_pa & VPT_ADDR) | (vpt_size & 0x1f) as u64,
        ])
    }

    /// VMAPTI: map (`device`, `event`) to virtual LPI `vintid` of vPE `vpeid`, with physical LPI
    /// `doorbell_pintid` as its doorbell ([`NO_DOORBELL`], 1023, for none).
    pub const fn vmapti(device: u32, event: u32, vpeid: u16, vintid: u32, doorbell_pintid: u32) -> Command {
        Command([
            dw0(OP_VMAPTI, device),
            event as u64 | vpeid_field(vpeid),
            vintid as u64 | (doorbell_pintid as u64) << 32,
            0,
        ])
    }

    /// VMAPI: as VMAPTI with vINTID = `event`.
    pub const fn vmapi(device: u32, event: u32, vpeid: u16, doorbell_pintid: u32) -> Command {
        Command([dw0(OP_VMAPI, device), event as u64 | vpeid_field(vpeid), (doorbell_pintid as u64) << 32, 0])
    }

    /// VMOVI: move (`device`, `event`) to vPE `vpeid`; `doorbell` sets a new doorbell LPI (DW2[0] D = 1,
    /// Dbell_pINTID at DW2[63:32]), `None` keeps the current one (D = 0).
    pub const fn vmovi(device: u32, event: u32, vpeid: u16, doorbell: Option<u32>) -> Command {
        let dw2 = match doorbell {
            Some(pintid) => 1 | (pintid as u64) << 32,
            None => 0,
        };
        Command([dw0(OP_VMOVI, device), event as u64 | vpeid_field(vpeid), dw2, 0])
    }

    /// VMOVP (GICv4.0 layout): move vPE `vpeid` to redistributor `rdbase`. `seq_num` (DW0[47:32]) and
    /// `its_list` (DW1[15:0]) matter only when `GITS_TYPER.VMOVP` is 0 and several ITSs share the vPE.
    pub const fn vmovp(vpeid: u16, rdbase: u64, seq_num: u16, its_list: u16) -> Command {
        Command([
            OP_VMOVP as u64 | (seq_num as u64) << 32,
            its_list as u64 | vpeid_field(vpeid),
            rdbase_field(rdbase),
            0,
        ])
    }

    /// VSYNC: complete every earlier command's effects on vPE `vpeid`.
    pub const fn vsync(vpeid: u16) -> Command {
        Command([OP_VSYNC as u64, vpeid_field(vpeid), 0, 0])
    }

    /// VINVALL: reload the configuration of every virtual LPI of vPE `vpeid`.
    pub const fn vinvall(vpeid: u16) -> Command {
        Command([OP_VINVALL as u64, vpeid_field(vpeid), 0, 0])
    }
}
