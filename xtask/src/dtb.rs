//! Device trees for the boot tests (QEMU's own, and broken copies of it made
//! with `dtc`) and the firmware stub that boots the image without `-kernel`,
//! so that QEMU hands a device tree over without checking it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::qemu::{Machine, QEMU};

/// Where the stub boot puts the image. Not virt's usual 0x4008_0000: with
/// `-bios`, QEMU puts its own device tree in the first MiB of RAM. This is the
/// same place modulo 2 MiB (base + text_offset).
pub const STUB_IMAGE_ADDR: u64 = 0x4028_0000;
/// Where the stub boot puts the device tree.
pub const STUB_DTB_ADDR: u64 = 0x4800_0000;

/// `movz x<reg>, #(value >> 16), lsl #16`.
fn movz_lsl16(reg: u32, value: u64) -> u32 {
    assert!(value & 0xffff == 0 && value >> 32 == 0, "{value:#x} does not fit movz lsl 16");
    0xd2a0_0000 | (((value >> 16) as u32) << 5) | reg
}

/// `br x1`.
const BR_X1: u32 = 0xd61f_0020;

/// A 12-byte AArch64 firmware: x0 = `dtb_addr`, jump to `image_addr`.
pub fn stub(image_addr: u64, dtb_addr: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (i, insn) in [movz_lsl16(0, dtb_addr), movz_lsl16(1, image_addr), BR_X1].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&insn.to_le_bytes());
    }
    out
}

/// The `totalsize` field of a flattened device tree header.
pub fn fdt_totalsize(blob: &[u8]) -> Option<u32> {
    if blob.get(0..4)? != [0xd0, 0x0d, 0xfe, 0xed] {
        return None;
    }
    Some(u32::from_be_bytes(blob.get(4..8)?.try_into().ok()?))
}

/// Removes the root's child nodes whose name starts with `prefix` from `dts`
/// as `dtc -O dts` writes it (one node or property per line). Returns the new
/// source and how many nodes went.
pub fn remove_root_children(dts: &str, prefix: &str) -> (String, usize) {
    let mut out = String::with_capacity(dts.len());
    let mut depth = 0i32;
    let mut removing_until: Option<i32> = None;
    let mut removed = 0;
    for line in dts.lines() {
        let t = line.trim();
        let opens = t.matches('{').count() as i32;
        let closes = t.matches('}').count() as i32;
        if removing_until.is_none() && depth == 1 && t.starts_with(prefix) && t.ends_with('{') {
            removing_until = Some(depth);
            removed += 1;
        }
        depth += opens - closes;
        if let Some(level) = removing_until {
            if depth <= level {
                removing_until = None;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, removed)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start {:?} ({e}); run scripts/setup", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn dtc(args: &[&str], what: &str) -> Result<(), String> {
    run_tool(Command::new("dtc").arg("-q").args(args), what)
}

fn path_str(p: &Path) -> Result<&str, String> {
    let s = p.to_str().ok_or_else(|| format!("{}: path is not UTF-8", p.display()))?;
    if s.contains(',') {
        // QEMU's option syntax would split the path at the comma.
        return Err(format!("{s}: QEMU cannot take a path with a comma"));
    }
    Ok(s)
}

/// Files for booting through the stub.
#[derive(Clone, Debug)]
pub struct StubFiles {
    pub stub: PathBuf,
    /// QEMU's device tree for the machine, as it gives it to firmware.
    pub valid: PathBuf,
    /// The same without its memory node.
    pub no_memory: PathBuf,
    /// The first half of the compacted tree; its header still gives the full size.
    pub truncated: PathBuf,
}

/// Writes the stub and the device trees for `machine` (bootargs included)
/// into `dir`.
///
/// # Errors
/// QEMU or dtc failed, or a result is not what it should be.
pub fn make_stub_files(dir: &Path, machine: &Machine) -> Result<StubFiles, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, String> {
        let p = dir.join(name);
        fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let stub = write("stub.bin", &stub(STUB_IMAGE_ADDR, STUB_DTB_ADDR))?;

    // `-append` needs `-kernel`; the kernel's contents do not change the tree.
    let dummy = write("dummy-kernel.bin", &[0u8; 4096])?;
    let valid = dir.join("virt.dtb");
    let _ = fs::remove_file(&valid);
    let mut dump = Command::new(QEMU);
    dump.args(machine.virt_machine_args(&format!(",dumpdtb={}", path_str(&valid)?))).args([
        "-kernel",
        path_str(&dummy)?,
        "-append",
        &machine.append,
        "-display",
        "none",
    ]);
    run_tool(&mut dump, "dumping QEMU's virt device tree")?;
    let blob = fs::read(&valid).map_err(|e| format!("{}: {e}", valid.display()))?;
    fdt_totalsize(&blob).ok_or_else(|| format!("{}: not a device tree blob", valid.display()))?;

    let dts_path = dir.join("virt.dts");
    dtc(&["-I", "dtb", "-O", "dts", "-o", path_str(&dts_path)?, path_str(&valid)?], "dtc (decompile)")?;
    let dts = fs::read_to_string(&dts_path).map_err(|e| format!("{}: {e}", dts_path.display()))?;
    let (bad, removed) = remove_root_children(&dts, "memory@");
    if removed == 0 {
        return Err(format!("{}: no memory@ node to remove", dts_path.display()));
    }
    let bad_dts = write("no-memory.dts", bad.as_bytes())?;
    let no_memory = dir.join("no-memory.dtb");
    dtc(&["-I", "dts", "-O", "dtb", "-o", path_str(&no_memory)?, path_str(&bad_dts)?], "dtc (recompile)")?;

    // QEMU pads its tree to 1 MiB, so cutting that in half would lose nothing
    // but padding: cut the compacted tree instead.
    let compact = dir.join("virt-compact.dtb");
    dtc(&["-I", "dtb", "-O", "dtb", "-o", path_str(&compact)?, path_str(&valid)?], "dtc (compact)")?;
    let full = fs::read(&compact).map_err(|e| format!("{}: {e}", compact.display()))?;
    let truncated = write("truncated.dtb", &full[..full.len() / 2])?;
    match fdt_totalsize(&full) {
        Some(size) if size as usize > full.len() / 2 => {}
        _ => return Err(format!("{}: unexpected header", compact.display())),
    }

    Ok(StubFiles { stub, valid, no_memory, truncated })
}

/// Removes the `interrupts` property (the maintenance interrupt) from the
/// GIC node of `dts`, as `dtc -O dts` writes it. Returns the new text, or
/// `None` if the GIC node has no such property.
pub fn remove_gic_maintenance(dts: &str) -> Option<String> {
    let mut out = String::with_capacity(dts.len());
    let (mut in_gic, mut removed) = (false, false);
    for line in dts.lines() {
        let t = line.trim();
        if t.starts_with("interrupt-controller@") && t.ends_with('{') {
            in_gic = true;
        } else if in_gic && t == "};" {
            in_gic = false;
        } else if in_gic && t.starts_with("interrupts = ") {
            removed = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    removed.then_some(out)
}

/// The Pi 4 device tree at `src` without its GIC maintenance interrupt (as
/// older Pi device trees are), written into `dir`.
///
/// # Errors
/// dtc failed, or the tree's GIC names no maintenance interrupt to remove.
pub fn pi_dtb_without_maintenance(src: &Path, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dts = dir.join("pi-no-maintenance.dts");
    let out = dir.join("pi-no-maintenance.dtb");
    dtc(&["-I", "dtb", "-O", "dts", "-o", path_str(&dts)?, path_str(src)?], "dtc (decompile)")?;
    let text = std::fs::read_to_string(&dts).map_err(|e| format!("{}: {e}", dts.display()))?;
    let edited = remove_gic_maintenance(&text).ok_or("the Pi device tree's GIC has no `interrupts` to remove")?;
    std::fs::write(&dts, edited).map_err(|e| format!("{}: {e}", dts.display()))?;
    dtc(&["-I", "dts", "-O", "dtb", "-o", path_str(&out)?, path_str(&dts)?], "dtc (recompile)")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_instructions() {
        let words: Vec<u32> =
            stub(0x4008_0000, 0x4800_0000).chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(words, [0xd2a9_0000, 0xd2a8_0101, 0xd61f_0020]);
        assert_eq!(&stub(STUB_IMAGE_ADDR, STUB_DTB_ADDR)[4..8], &0xd2a8_0501u32.to_le_bytes());
    }

    #[test]
    fn reads_totalsize() {
        assert_eq!(fdt_totalsize(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0x12, 0x34]), Some(0x1234));
        assert_eq!(fdt_totalsize(&[0xd0, 0x0d, 0xfe, 0xed, 0]), None);
        assert_eq!(fdt_totalsize(b"nope nope"), None);
    }

    const DTS: &str = "/dts-v1/;

/ {
\tinterrupt-parent = <0x8002>;

\tpsci {
\t\tmethod = \"smc\";
\t};

\tmemory@40000000 {
\t\treg = <0x00 0x40000000 0x00 0x40000000>;
\t\tdevice_type = \"memory\";
\t};

\tplatform-bus@c000000 {
\t\tmemory@1 {
\t\t\treg = <0x01>;
\t\t};
\t};

\tmemory@80000000 {
\t\tnested {
\t\t\tx = <0x01>;
\t\t};
\t};
};
";

    #[test]
    fn removes_root_memory_nodes_only() {
        let (out, n) = remove_root_children(DTS, "memory@");
        assert_eq!(n, 2);
        assert!(!out.contains("memory@40000000") && !out.contains("memory@80000000") && !out.contains("nested"));
        assert!(out.contains("\t\tmemory@1 {"), "{out}");
        assert!(out.contains("psci {") && out.contains("method = \"smc\";"));
        assert_eq!(out.matches('{').count(), out.matches('}').count());
        assert!(out.ends_with("\t};\n\n};\n"), "{out}");
        assert_eq!(remove_root_children(DTS, "nothing@").0, DTS);
    }

    #[test]
    fn removes_only_the_gic_interrupts() {
        let dts = "/ {\n\tsoc {\n\t\tinterrupt-controller@40041000 {\n\t\t\tcompatible = \"arm,gic-400\";\n\t\t\tinterrupts = <0x01 0x09 0xf04>;\n\t\t};\n\t\tserial@7e201000 {\n\t\t\tinterrupts = <0x00 0x79 0x04>;\n\t\t};\n\t};\n};\n";
        let out = remove_gic_maintenance(dts).unwrap();
        assert!(!out.contains("0x09 0xf04"));
        assert!(out.contains("interrupts = <0x00 0x79 0x04>;"), "other nodes keep theirs");
        assert_eq!(remove_gic_maintenance(&out), None);
    }
}
