//! `cargo xtask sdcard` (`scripts/sdcard`): a disk image for a Raspberry Pi
//! 4's SD card, made without root: an MBR with one FAT32 partition (type
//! 0x0c, from 1 MiB to the end) formatted by `mkfs.vfat --offset` and filled
//! with mtools. The partition holds the Pi's firmware (`start4.elf`,
//! `fixup4.dat`, from Debian's raspi-firmware package through
//! `scripts/fetch-pi-firmware`), Debian's Pi 4 device tree
//! (`scripts/fetch-pi-dtb`), `config.txt`, `cmdline.txt`, the hypervisor's
//! image as the kernel and the guest bundle as the initramfs.
//!
//! The firmware loads the bundle right after the kernel file
//! (`followkernel`), so the image goes on the card padded with zeros to the
//! size its arm64 header gives (BSS included): the BSS the hypervisor clears
//! at boot cannot then overlap the bundle, whether or not the firmware reads
//! that header field.

use std::env;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use ferrovisor_shared::cpio;
use ferrovisor_shared::image::{PackageHeader, ARM64_IMAGE_MAGIC, ARM64_MAGIC_OFFSET, IMAGE_SIZE_OFFSET};

use crate::boottest::{Ctx, Failure};
use crate::guestcfg::{self, GuestSpec};
use crate::qemu::{self, Board, End, Machine, Watch};
use crate::{guest_option, Args, GuestDraft, Parsed, GUEST_OPTIONS};

/// The hypervisor's name on the card (config.txt's `kernel=`).
const KERNEL_NAME: &str = "ferrovisor.img";
/// The guest bundle's name on the card (config.txt's `initramfs`).
const BUNDLE_NAME: &str = "guests.cpio";
/// The Pi 4 device tree, as Debian's kernel package names it.
const DTB_NAME: &str = "bcm2711-rpi-4-b.dtb";
/// What the Pi 4's boot loader reads: the VideoCore firmware and its memory split.
const FIRMWARE: [&str; 2] = ["start4.elf", "fixup4.dat"];
/// The firmware's licence (Debian's copyright file for raspi-firmware).
const LICENCE_NAME: &str = "raspi-firmware-copyright.txt";
/// The manifest in a bundle that the host reads when the device tree names no VMs.
const MANIFEST: &str = "default.vms";

const SECTOR: u64 = 512;
/// The partition starts at 1 MiB, as SD cards' erase blocks like it.
const PART_START: u64 = 2048;
/// FAT32 with the LBA-addressed partition type.
const PART_TYPE_FAT32_LBA: u8 = 0x0c;
const MIB: u64 = 1 << 20;
const DEFAULT_SIZE_MIB: u32 = 256;
/// FAT32 needs 65525 clusters; with 512-byte clusters that is 32 MiB, and
/// the files take a few more.
const MIN_SIZE_MIB: u32 = 64;
/// The card's partition needs not fill the card: bigger is only slower to write.
const MAX_SIZE_MIB: u32 = 32 * 1024;
const VOLUME_LABEL: &str = "FERROVISOR";
/// The hypervisor's command line on the card: no `semihosting-exit`, which
/// would stop a real CPU.
const DEFAULT_CMDLINE: &str = "loglevel=info";
/// A card's boot under QEMU raspi4b in the test: the built-in guests take a
/// few seconds.
const CARD_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const USAGE: &str = "\
usage: scripts/sdcard [options]          (the same as: cargo xtask sdcard [options])

Writes a disk image for a Raspberry Pi 4's SD card, without root: an MBR with
one FAT32 partition holding the Pi's firmware (start4.elf, fixup4.dat, from
Debian's raspi-firmware package), Debian's Pi 4 device tree, a commented
config.txt, cmdline.txt (the hypervisor's command line), the hypervisor's
image (ferrovisor.img) and the guest bundle (guests.cpio). Write it to a card
with scripts/write-sdcard DEVICE.

  --out FILE            the disk image (default: target/sdcard.img)
  --size MiB            its size, 64 to 32768 (default: 256)
  --host-append ARGS    the hypervisor's command line, into cmdline.txt
                        (default: \"loglevel=info\")
  --image FILE          put FILE on the card as the hypervisor instead of building
  --debug               build and use the debug build
  --bundle FILE         put FILE on the card as the guest bundle as it is: a cpio
                        \"newc\" archive whose default.vms names the VMs
  --verbose             print the tools' command lines
  --help                print this

guests (default: the built-in set, the test guests selftest and hostile);
each --guest starts a VM, as with scripts/run:
  --guest FILE          the guest's kernel: an arm64 Image or a raw binary
  --append ARGS         the guest's command line (default: none)
  --initrd FILE         the guest's initrd (default: none)
  --vcpus N             its vCPUs, 1 to 8 (default: 1; the Pi 4 has 4 CPUs)
  --mem MiB             its memory (default: 128)
  --pin                 keep its vCPU i on one CPU
  --name NAME           its name (default: FILE's stem)

The guests go into guests.cpio with a default.vms manifest, one VM a line:
name vcpus mem_mib kernel-path [initrd=path] [pin] [-- bootargs].";

/// Where the guest bundle comes from.
#[derive(Debug, PartialEq)]
enum Guests {
    /// The test guests of the image's built-in set.
    BuiltIn,
    /// A ready bundle, as it is.
    Bundle(PathBuf),
    /// VMs given with `--guest`.
    Specs(Vec<GuestSpec>),
}

#[derive(Debug, PartialEq)]
struct Opts {
    out: Option<PathBuf>,
    size_mib: u32,
    cmdline: String,
    image: Option<PathBuf>,
    debug: bool,
    guests: Guests,
    verbose: bool,
}

fn parse(args: Vec<String>) -> Result<Parsed<Opts>, String> {
    let mut o = Opts {
        out: None,
        size_mib: DEFAULT_SIZE_MIB,
        cmdline: DEFAULT_CMDLINE.into(),
        image: None,
        debug: false,
        guests: Guests::BuiltIn,
        verbose: false,
    };
    let mut bundle = None;
    let mut drafts = vec![GuestDraft::default()];
    let mut a = Args::new(args);
    while let Some(opt) = a.next_opt()? {
        match opt.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--out" => o.out = Some(PathBuf::from(a.value(&opt)?)),
            "--size" => o.size_mib = a.number(&opt)?,
            "--host-append" => o.cmdline = a.value(&opt)?,
            "--image" => o.image = Some(PathBuf::from(a.value(&opt)?)),
            "--bundle" => bundle = Some(PathBuf::from(a.value(&opt)?)),
            "--debug" | "--verbose" | "-v" => {
                a.flag(&opt)?;
                if opt == "--debug" {
                    o.debug = true;
                } else {
                    o.verbose = true;
                }
            }
            o if GUEST_OPTIONS.contains(&o) => guest_option(&mut drafts, &opt, &mut a)?,
            _ => return Err(format!("unknown option `{opt}`")),
        }
    }
    if !(MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&o.size_mib) {
        return Err(format!("--size must be {MIN_SIZE_MIB} to {MAX_SIZE_MIB} MiB, not {}", o.size_mib));
    }
    if o.cmdline.contains(['\n', '\r']) {
        return Err("--host-append: the command line is one line".into());
    }
    // The board's RAM check is the one scripts/run makes for raspi4b: the
    // first GiB less the VideoCore's share, as on a 1 GiB Pi 4.
    let pi = Machine { board: Board::Raspi4b, gic: 2, smp: qemu::RASPI_CPUS, ..Machine::default() };
    let specs = crate::finish_guests(drafts, &pi)?;
    o.guests = match (bundle, specs.is_empty()) {
        (Some(_), false) => return Err("--bundle and --guest: give one or the other".into()),
        (Some(b), true) => Guests::Bundle(b),
        (None, true) => Guests::BuiltIn,
        (None, false) => {
            for g in &specs {
                manifest_safe(g)?;
            }
            Guests::Specs(specs)
        }
    };
    Ok(Parsed::Go(o))
}

/// Checks that a guest can be written as a `default.vms` line.
fn manifest_safe(g: &GuestSpec) -> Result<(), String> {
    if g.name.starts_with('#') || g.name == "--" {
        return Err(format!("guest `{}`: a default.vms name cannot be `--` or start with `#`", g.name));
    }
    if g.bootargs.contains(['\n', '\r']) {
        return Err(format!("guest `{}`: --append: a default.vms command line is one line", g.name));
    }
    Ok(())
}

/// The `default.vms` manifest for `specs` and the bundle paths of each
/// guest's kernel and initrd (under a directory named by
/// [`guestcfg::node_names`], which are safe as paths).
fn manifest(specs: &[GuestSpec]) -> (String, Vec<(String, Option<String>)>) {
    let mut text = String::from(
        "# Written by `cargo xtask sdcard`; the hypervisor starts one VM per line:\n\
         # name vcpus mem_mib kernel-path [initrd=path] [pin] [-- bootargs]\n",
    );
    let mut paths = Vec::new();
    for (g, dir) in specs.iter().zip(guestcfg::node_names(specs)) {
        let kernel = format!("{dir}/kernel");
        let initrd = g.initrd.as_ref().map(|_| format!("{dir}/initrd"));
        text += &format!("{} {} {} {kernel}", g.name, g.vcpus, g.mem_mib);
        if let Some(i) = &initrd {
            text += &format!(" initrd={i}");
        }
        if g.pinned {
            text += " pin";
        }
        if !g.bootargs.trim().is_empty() {
            text += &format!(" -- {}", g.bootargs.trim());
        }
        text.push('\n');
        paths.push((kernel, initrd));
    }
    (text, paths)
}

/// The guest bundle for `specs`: `default.vms` and the guests' files.
fn specs_bundle(specs: &[GuestSpec]) -> Result<Vec<u8>, String> {
    let (text, paths) = manifest(specs);
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut files: Vec<(String, Vec<u8>)> = vec![(MANIFEST.into(), text.into_bytes())];
    for (g, (kernel, initrd)) in specs.iter().zip(paths) {
        files.push((kernel, read(&g.kernel)?));
        if let (Some(path), Some(name)) = (&g.initrd, initrd) {
            files.push((name, read(path)?));
        }
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    Ok(guestcfg::write_cpio(&refs))
}

/// The regular files of a cpio "newc" archive up to its trailer, as (name,
/// contents), the names without leading `./` and `/` as the hypervisor reads
/// them (directories and other entries left out).
///
/// # Errors
/// What the hypervisor would refuse the archive for ([`cpio::Error`]).
fn cpio_files(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let archive = cpio::Archive::parse(bytes).map_err(|e| e.to_string())?;
    Ok(archive.entries().filter(|e| e.is_file()).map(|e| (cpio::normalize(e.name).to_string(), e.data)).collect())
}

/// Checks a ready bundle: a newc archive with a `default.vms` whose kernel
/// and `initrd=` paths are files in it.
fn check_bundle(bytes: &[u8]) -> Result<(), String> {
    let files = cpio_files(bytes)?;
    let get = |name: &str| {
        let name = name.trim_start_matches("./").trim_start_matches('/');
        files.iter().rev().find(|(n, _)| n == name)
    };
    let (_, text) = get(MANIFEST).ok_or("it has no default.vms, so the hypervisor would start no VM from it")?;
    let text = std::str::from_utf8(text).map_err(|_| "its default.vms is not UTF-8")?;
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> =
            line.split_ascii_whitespace().take_while(|w| *w != "--" && !w.starts_with('#')).collect();
        let paths = words.get(3).into_iter().copied().chain(words.iter().filter_map(|w| w.strip_prefix("initrd=")));
        for p in paths {
            if get(p).is_none() {
                return Err(format!("default.vms line {} names `{p}`, which is not in the bundle", i + 1));
            }
        }
    }
    Ok(())
}

/// The image as it goes on the card: padded with zeros to the size in its
/// arm64 header (BSS included).
///
/// # Errors
/// The file is not Ferrovisor's image (no arm64 or package header).
fn card_image(image: &[u8]) -> Result<Vec<u8>, String> {
    let magic =
        image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if magic != Some(ARM64_IMAGE_MAGIC) {
        return Err("not an arm64 Image (no ARM\\x64 magic at 0x38)".into());
    }
    PackageHeader::parse(image).map_err(|e| format!("not Ferrovisor's image: {e}"))?;
    let size = u64::from_le_bytes(image[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].try_into().unwrap());
    let size = usize::try_from(size).map_err(|_| "the header's image_size does not fit in memory")?;
    let mut out = image.to_vec();
    if out.len() < size {
        out.resize(size, 0);
    }
    Ok(out)
}

/// The cylinder/head/sector address of `lba` as an MBR entry holds it (255
/// heads, 63 sectors; past 1023 cylinders the maximum, as LBA-only tools write).
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (255, 63);
    let c = lba / (heads * sectors);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let h = (lba / sectors) % heads;
    let s = lba % sectors + 1;
    [h as u8, (s as u8) | (((c >> 2) & 0xc0) as u8), (c & 0xff) as u8]
}

/// An MBR for a disk of `total_sectors` with one FAT32 (LBA) partition from
/// [`PART_START`] to the end.
///
/// # Errors
/// The disk is too small for the partition or too big for an MBR.
fn mbr(total_sectors: u64, disk_id: u32) -> Result<[u8; 512], String> {
    let count = total_sectors.checked_sub(PART_START).filter(|&c| c > 0).ok_or("the disk is smaller than 1 MiB")?;
    let count = u32::try_from(count).map_err(|_| "the disk is too big for an MBR (2 TiB)")?;
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let e = &mut m[446..462];
    e[0] = 0x00;
    e[1..4].copy_from_slice(&chs(PART_START));
    e[4] = PART_TYPE_FAT32_LBA;
    e[5..8].copy_from_slice(&chs(PART_START + u64::from(count) - 1));
    e[8..12].copy_from_slice(&(PART_START as u32).to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    Ok(m)
}

/// The first partition of an MBR: (type, first sector, sectors).
///
/// # Errors
/// No boot signature, or an empty first entry.
fn read_mbr(sector: &[u8]) -> Result<(u8, u32, u32), String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xaa] {
        return Err("no MBR boot signature (55 aa at byte 510)".into());
    }
    let e = &sector[446..462];
    let word = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().unwrap());
    if e[4] == 0 {
        return Err("the first partition entry is empty".into());
    }
    Ok((e[4], word(8), word(12)))
}

/// A disk signature that changes with what is on the card (FNV-1a).
fn disk_id(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The card's `config.txt`, read by the Pi's firmware.
fn config_txt() -> String {
    format!(
        "\
# Ferrovisor on a Raspberry Pi 4: read by the firmware (start4.elf) at power-on.
# Written by `scripts/sdcard` (cargo xtask sdcard); see README.md, \"Raspberry Pi 4\".

# Start the Arm cores in AArch64 state. The firmware's own Arm stub (no
# armstub= is needed) parks the secondary cores in a spin table and enters the
# kernel at 0x80000 at EL2 with the device tree's address in x0.
arm_64bit=1

# The hypervisor, loaded as the kernel (an arm64 Image, padded with zeros to
# the size its header gives so that nothing is loaded over its BSS).
kernel={KERNEL_NAME}

# The guest bundle: a cpio archive whose default.vms names the VMs. The
# firmware loads it after the kernel and gives its place in the device tree
# (/chosen linux,initrd-start and linux,initrd-end), where the hypervisor
# finds it.
initramfs {BUNDLE_NAME} followkernel

# Debian's device tree for the Pi 4, which follows upstream Linux's names
# (upstream_kernel=1, as Debian's own Pi images set). The firmware fills in
# the memory, the command line (cmdline.txt) and the initramfs.
device_tree={DTB_NAME}
upstream_kernel=1

# The serial console on GPIO 14 (TXD, header pin 8) and GPIO 15 (RXD, pin
# 10), 115200 baud 8N1. This device tree's stdout-path is serial1, the mini
# UART, which the hypervisor writes to; the firmware sets it up and holds the
# core clock its baud rate depends on. (The PL011 stays with Bluetooth.)
enable_uart=1
# Uncomment to see the firmware's own messages on the same UART first.
#uart_2ndstage=1

# The GIC-400 (the interrupt controller the hypervisor drives), on as is the
# Pi 4's default; the firmware gives the non-secure side access to it.
enable_gic=1

# The hypervisor is tested with the first GiB of RAM (QEMU's raspi4b
# describes no more); remove this line to give it all the board has.
total_mem=1024
"
    )
}

/// The settings in a `config.txt` (comments and blank lines left out), as
/// (key, value): `key=value` lines and `initramfs FILE WHERE`.
fn config_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.contains(' ') => (k.to_string(), v.to_string()),
            _ => match l.split_once(' ') {
                Some((k, v)) => (k.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            },
        })
        .collect()
}

/// Checks that a `config.txt` boots Ferrovisor: 64-bit, a kernel, the
/// bundle after it, the UART and the GIC on. Returns the kernel's, the
/// initramfs's and the device tree's file names.
///
/// # Errors
/// Names every setting that is missing or wrong.
fn check_config(text: &str) -> Result<(String, String, String), String> {
    let settings = config_settings(text);
    let get = |k: &str| settings.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let mut wrong = Vec::new();
    for (k, v) in [("arm_64bit", "1"), ("enable_uart", "1"), ("enable_gic", "1")] {
        if get(k) != Some(v) {
            wrong.push(format!("{k}={v}"));
        }
    }
    let kernel = get("kernel").unwrap_or_default().to_string();
    if kernel.is_empty() {
        wrong.push("kernel=FILE".into());
    }
    let initramfs = match get("initramfs").map(|v| v.split_whitespace().collect::<Vec<_>>()) {
        Some(words) if words.len() == 2 && words[1] == "followkernel" => words[0].to_string(),
        _ => {
            wrong.push("initramfs FILE followkernel".into());
            String::new()
        }
    };
    let dtb = get("device_tree").unwrap_or_default().to_string();
    if dtb.is_empty() {
        wrong.push("device_tree=FILE".into());
    }
    if get("armstub").is_some() {
        wrong.push("no armstub= (the firmware's own stub enters at EL2)".into());
    }
    if wrong.is_empty() {
        Ok((kernel, initramfs, dtb))
    } else {
        Err(format!("config.txt lacks {}", wrong.join(", ")))
    }
}

/// A host tool, looked up in PATH and then the sbin directories that a
/// user's PATH often lacks (mkfs.vfat is in /usr/sbin).
fn tool(name: &str) -> PathBuf {
    let in_path = env::var_os("PATH").and_then(|p| env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    in_path
        .or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a tool; returns its stdout.
fn run(cmd: &mut Command, verbose: bool) -> Result<String, String> {
    let show = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    if verbose {
        eprintln!("xtask: {show}");
    }
    let name = Path::new(cmd.get_program()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let package = match name.as_str() {
        "mkfs.vfat" => " (Debian package dosfstools)",
        "mcopy" | "mdir" | "mtype" => " (Debian package mtools)",
        _ => "",
    };
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {name}{package}: {e}; run scripts/setup"))?;
    if !out.status.success() {
        return Err(format!("`{show}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `img@@1M`: mtools' name for the partition inside the disk image.
fn mtools_image(disk: &Path) -> String {
    format!("{}@@{}", disk.display(), PART_START * SECTOR)
}

/// The names in the card's root directory (`mdir -b`).
fn card_files(disk: &Path) -> Result<Vec<String>, String> {
    let out = run(Command::new(tool("mdir")).args(["-b", "-i", &mtools_image(disk), "::/"]), false)?;
    Ok(out.lines().map(|l| l.trim().trim_start_matches("::/").to_string()).filter(|l| !l.is_empty()).collect())
}

/// Copies `name` from the card's root directory to `to`.
fn card_read(disk: &Path, name: &str, to: &Path) -> Result<Vec<u8>, String> {
    let _ = fs::remove_file(to);
    run(Command::new(tool("mcopy")).args(["-n", "-i", &mtools_image(disk), &format!("::/{name}")]).arg(to), false)?;
    fs::read(to).map_err(|e| format!("{}: {e}", to.display()))
}

/// Runs one of our fetch scripts, which prints one path on stdout.
fn fetch(root: &Path, script: &str) -> Result<PathBuf, String> {
    let path = root.join("scripts").join(script);
    let out = Command::new(&path)
        .arg("--quiet")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || printed.is_empty() {
        return Err(format!(
            "scripts/{script} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(printed))
}

/// One file to put on the card.
struct CardFile {
    name: &'static str,
    from: PathBuf,
}

/// What [`make`] wrote.
struct Made {
    disk: PathBuf,
    /// The card's files: (name, bytes).
    files: Vec<(&'static str, u64)>,
}

/// Writes the disk image at `out` from `files` (through a temporary file, so
/// a failed run leaves no image that looks complete).
fn write_disk(out: &Path, size_mib: u32, files: &[CardFile], id: u32, verbose: bool) -> Result<(), String> {
    let tmp = out.with_extension("img.tmp");
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let total_sectors = u64::from(size_mib) * MIB / SECTOR;
    let table = mbr(total_sectors, id)?;
    {
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.set_len(u64::from(size_mib) * MIB).map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&table).map_err(io)?;
    }
    let fat_kib = (total_sectors - PART_START) * SECTOR / 1024;
    // Raspberry Pi OS's boot partitions have clusters of 1 or 4 sectors: keep
    // to those (FAT32 needs 65525 clusters, so 4 only on bigger cards).
    let cluster_sectors = if size_mib <= 1024 { "1" } else { "4" };
    let written = (|| {
        run(
            Command::new(tool("mkfs.vfat"))
                .args(["-F", "32", "-s", cluster_sectors, "-n", VOLUME_LABEL])
                .arg(format!("--offset={PART_START}"))
                .args(["-h", &PART_START.to_string()])
                .arg(&tmp)
                .arg(fat_kib.to_string()),
            verbose,
        )?;
        for f in files {
            run(
                Command::new(tool("mcopy"))
                    .args(["-D", "o", "-i", &mtools_image(&tmp)])
                    .arg(&f.from)
                    .arg(format!("::/{}", f.name)),
                verbose,
            )
            .map_err(|e| {
                if e.contains("Disk full") {
                    format!("the files do not fit in --size {size_mib} MiB: {e}")
                } else {
                    e
                }
            })?;
        }
        let listed = card_files(&tmp)?;
        for f in files {
            if !listed.iter().any(|n| n == f.name) {
                return Err(format!("{} is not on the card after copying it (mdir lists {listed:?})", f.name));
            }
        }
        fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Builds (or takes) the image, fetches the firmware and the device tree,
/// and writes the disk image.
fn make(root: &Path, o: &Opts) -> Result<Made, String> {
    if let Guests::Specs(specs) = &o.guests {
        guestcfg::check_files(specs)?;
    }
    let image_path = match &o.image {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => return Err(format!("--image: {} is not a file", p.display())),
        None => crate::build(root, o.debug)?,
    };
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let image = card_image(&read(&image_path)?).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let bundle = match &o.guests {
        Guests::BuiltIn => read(&crate::default_bundle(root)?)?,
        Guests::Specs(specs) => specs_bundle(specs)?,
        Guests::Bundle(p) => {
            let b = read(p)?;
            check_bundle(&b).map_err(|e| format!("--bundle {}: {e}", p.display()))?;
            b
        }
    };
    let firmware = fetch(root, "fetch-pi-firmware")?;
    let dtb = fetch(root, "fetch-pi-dtb")?;

    let stage = crate::target_dir(root).join("xtask-sdcard");
    fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let put = |name: &str, bytes: &[u8]| -> Result<PathBuf, String> {
        let p = stage.join(name);
        fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let mut files = Vec::new();
    for name in FIRMWARE {
        files.push(CardFile { name, from: firmware.join(name) });
    }
    files.push(CardFile { name: LICENCE_NAME, from: firmware.join("copyright") });
    files.push(CardFile { name: DTB_NAME, from: dtb });
    files.push(CardFile { name: "config.txt", from: put("config.txt", config_txt().as_bytes())? });
    files.push(CardFile { name: "cmdline.txt", from: put("cmdline.txt", format!("{}\n", o.cmdline).as_bytes())? });
    files.push(CardFile { name: KERNEL_NAME, from: put(KERNEL_NAME, &image)? });
    files.push(CardFile { name: BUNDLE_NAME, from: put(BUNDLE_NAME, &bundle)? });
    let mut sizes = Vec::new();
    for f in &files {
        let len = fs::metadata(&f.from).map_err(|e| format!("{}: {e}", f.from.display()))?.len();
        sizes.push((f.name, len));
    }

    let disk = match &o.out {
        Some(p) => p.clone(),
        None => crate::target_dir(root).join("sdcard.img"),
    };
    if let Some(dir) = disk.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_disk(&disk, o.size_mib, &files, disk_id(&[&image, &bundle]), o.verbose)?;
    Ok(Made { disk, files: sizes })
}

/// `cargo xtask sdcard`.
pub fn cmd(args: Vec<String>) -> ExitCode {
    let opts = match parse(args) {
        Ok(Parsed::Go(o)) => o,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("scripts/sdcard: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = crate::root();
    match make(&root, &opts) {
        Ok(made) => {
            let shown = made.disk.strip_prefix(&root).unwrap_or(&made.disk);
            println!("{}: {} MiB, FAT32 partition from 1 MiB (type 0x0c):", shown.display(), opts.size_mib);
            for (name, len) in &made.files {
                println!("  {name:<30} {len:>9} bytes");
            }
            println!("write it to a card with: scripts/write-sdcard DEVICE   (e.g. /dev/sdX; see --help)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask sdcard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn failure(reason: impl Into<String>, log: impl Into<String>) -> Failure {
    Failure { reason: reason.into(), log: log.into() }
}

/// The `sdcard-image` test: `scripts/sdcard --help`, then the sdcard command
/// with the tested image into the test directory; the MBR and the FAT
/// partition's files as mtools lists them, config.txt's settings, the image
/// and bundle read back; then the card's files booted under QEMU raspi4b
/// (its firmware is not emulated: QEMU loads the kernel, device tree and
/// initrd itself), where the bundle's VMs must run and pass.
///
/// # Errors
/// What was missing or wrong, with the command's or the console's output.
pub fn test_image(ctx: &Ctx) -> Result<(), Failure> {
    let script = Command::new(ctx.root.join("scripts/sdcard"))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::plain(format!("cannot run scripts/sdcard: {e}")))?;
    let stdout = String::from_utf8_lossy(&script.stdout);
    if !script.status.success() || !stdout.contains("usage: scripts/sdcard") {
        return Err(failure(
            format!("`scripts/sdcard --help`: expected exit 0 and the usage, got {}", script.status),
            format!("stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&script.stderr)),
        ));
    }

    let disk = ctx.work.join("sdcard.img");
    let _ = fs::remove_file(&disk);
    let out = Command::new(&ctx.xtask)
        .arg("sdcard")
        .arg("--image")
        .arg(&ctx.image)
        .arg("--out")
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::plain(format!("cannot run {}: {e}", ctx.xtask.display())))?;
    let log =
        format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(failure(
            format!("`xtask sdcard --image ... --out {}` failed ({})", disk.display(), out.status),
            log,
        ));
    }

    let bytes = fs::read(&disk).map_err(|e| Failure::plain(format!("{}: {e}", disk.display())))?;
    let want_len = u64::from(DEFAULT_SIZE_MIB) * MIB;
    if bytes.len() as u64 != want_len {
        return Err(failure(format!("the disk image is {} bytes, not {want_len}", bytes.len()), log));
    }
    let (kind, start, count) = read_mbr(&bytes).map_err(|e| failure(format!("the disk image: {e}"), log.clone()))?;
    if (kind, u64::from(start), u64::from(start) + u64::from(count)) != (0x0c, PART_START, want_len / SECTOR) {
        return Err(failure(
            format!("partition 1 is type {kind:#04x} at sectors {start}+{count}, not 0x0c from 2048 to the end"),
            log,
        ));
    }

    let listed = card_files(&disk).map_err(|e| failure(e, log.clone()))?;
    let config_file = ctx.work.join("sdcard-config.txt");
    let config = card_read(&disk, "config.txt", &config_file).map_err(|e| failure(e, log.clone()))?;
    let config = String::from_utf8_lossy(&config).into_owned();
    let (kernel, initramfs, dtb) = check_config(&config).map_err(|e| failure(e, config.clone()))?;
    let mut want: Vec<&str> = FIRMWARE.to_vec();
    want.extend(["config.txt", "cmdline.txt", DTB_NAME, KERNEL_NAME, BUNDLE_NAME]);
    want.extend([kernel.as_str(), initramfs.as_str(), dtb.as_str()]);
    let missing: Vec<&str> = want.iter().copied().filter(|w| !listed.iter().any(|n| n == w)).collect();
    if !missing.is_empty() {
        return Err(failure(format!("not on the card: {missing:?} (mdir lists {listed:?})"), config));
    }
    if kernel != KERNEL_NAME || initramfs != BUNDLE_NAME || dtb != DTB_NAME {
        return Err(failure(format!("config.txt names {kernel}, {initramfs} and {dtb}"), config));
    }

    let files = ctx.work.join("sdcard-files");
    fs::create_dir_all(&files).map_err(|e| Failure::plain(format!("{}: {e}", files.display())))?;
    let take = |name: &str| card_read(&disk, name, &files.join(name)).map_err(|e| failure(e, String::new()));
    let image = take(KERNEL_NAME)?;
    let built = fs::read(&ctx.image).map_err(|e| Failure::plain(format!("{}: {e}", ctx.image.display())))?;
    let padded = card_image(&built).map_err(Failure::plain)?;
    if image != padded {
        return Err(Failure::plain(format!(
            "{KERNEL_NAME} on the card ({} bytes) is not the tested image padded to its image_size ({} bytes)",
            image.len(),
            padded.len()
        )));
    }
    let bundle = take(BUNDLE_NAME)?;
    check_bundle(&bundle).map_err(|e| Failure::plain(format!("{BUNDLE_NAME} on the card: {e}")))?;
    let start4 = take(FIRMWARE[0])?;
    if !start4.starts_with(b"\x7fELF") {
        return Err(Failure::plain(format!("{} on the card is not an ELF file", FIRMWARE[0])));
    }
    take(DTB_NAME)?;
    let cmdline = String::from_utf8_lossy(&take("cmdline.txt")?).trim().to_string();
    if cmdline != DEFAULT_CMDLINE {
        return Err(Failure::plain(format!("cmdline.txt is {cmdline:?}, not {DEFAULT_CMDLINE:?}")));
    }
    boot_card(ctx, &files, &cmdline)
}

/// Boots the card's kernel, device tree and bundle under QEMU raspi4b with
/// its command line (no semihosting: QEMU is stopped after the power-off
/// line). The VMs must come from the card's bundle, not the image's
/// built-in set, and pass.
fn boot_card(ctx: &Ctx, files: &Path, cmdline: &str) -> Result<(), Failure> {
    let m = Machine {
        board: Board::Raspi4b,
        gic: 2,
        smp: qemu::RASPI_CPUS,
        append: cmdline.to_string(),
        ..Machine::default()
    };
    let args = m.boot_args(&files.join(KERNEL_NAME), Some(&files.join(DTB_NAME)), Some(&files.join(BUNDLE_NAME)));
    let watch = Watch {
        echo: ctx.verbose,
        interactive: false,
        timeout: Some(CARD_BOOT_TIMEOUT),
        stop_on: crate::boottest::end_line,
        progress: None,
    };
    let o = qemu::run(&args, &watch).map_err(|e| Failure::plain(e.to_string()))?;
    let tail = || o.tail(40);
    if o.end == End::TimedOut {
        return Err(failure(
            format!("the card's files under QEMU raspi4b: timeout after {CARD_BOOT_TIMEOUT:?}"),
            tail(),
        ));
    }
    crate::check::check_boot(&o.output, &crate::check::BootExpect::new("Raspberry Pi 4", "GICv2", 4))
        .map_err(|e| failure(format!("the card's files under QEMU raspi4b: {e}"), tail()))?;
    if o.output.contains("starting the built-in set") {
        return Err(failure("the hypervisor did not take the VMs from the card's bundle", tail()));
    }
    for vm in ["selftest", "hostile"] {
        if !o.output.lines().any(|l| l.starts_with(&format!("vm {vm}: ended")) && l.contains("verdict Pass")) {
            return Err(failure(format!("no `vm {vm}: ended ... verdict Pass` line"), tail()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Result<Opts, String> {
        match parse(args.iter().map(|s| s.to_string()).collect())? {
            Parsed::Go(o) => Ok(o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn options() {
        let o = parse_ok(&[]).unwrap();
        assert_eq!((o.out, o.size_mib, o.cmdline.as_str(), o.guests), (None, 256, "loglevel=info", Guests::BuiltIn));
        let o = parse_ok(&["--out=x.img", "--size", "64", "--host-append", "loglevel=debug", "--debug", "--verbose"])
            .unwrap();
        assert_eq!((o.out, o.size_mib, o.cmdline.as_str()), (Some("x.img".into()), 64, "loglevel=debug"));
        assert!(o.debug && o.verbose);
        let o = parse_ok(&["--guest", "a/k.bin", "--vcpus", "2", "--mem", "64", "--append", "x y", "--pin"]).unwrap();
        let Guests::Specs(g) = o.guests else { panic!("{:?}", o.guests) };
        assert_eq!((g[0].name.as_str(), g[0].vcpus, g[0].mem_mib, g[0].bootargs.as_str()), ("k", 2, 64, "x y"));
        assert!(g[0].pinned);
        assert_eq!(parse_ok(&["--bundle", "b.cpio"]).unwrap().guests, Guests::Bundle("b.cpio".into()));
        assert_eq!(parse_ok(&["--help"]).unwrap_err(), "help");
    }

    #[test]
    fn options_rejected() {
        for (args, msg) in [
            (&["--size", "63"][..], "--size must be 64 to 32768 MiB, not 63"),
            (&["--size", "40000"], "not 40000"),
            (&["--size"], "--size needs a value"),
            (&["--bundle", "b", "--guest", "k"], "one or the other"),
            (&["--guest", "k", "--name", "#x"], "start with `#`"),
            (&["--guest", "k", "--append", "a\nb"], "one line"),
            (&["--host-append", "a\nb"], "one line"),
            (&["--mem", "64"], "there is no --guest FILE"),
            (&["--guest", "k", "--mem", "897"], "does not fit"),
            (&["--debug=1"], "takes no value"),
            (&["--gic", "3"], "unknown option `--gic`"),
        ] {
            let e = parse_ok(args).unwrap_err();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
    }

    fn spec(name: &str, initrd: bool, bootargs: &str, pinned: bool) -> GuestSpec {
        GuestSpec {
            name: name.into(),
            kernel: "/k".into(),
            initrd: initrd.then(|| "/i".into()),
            bootargs: bootargs.into(),
            vcpus: 2,
            mem_mib: 64,
            pinned,
        }
    }

    #[test]
    fn manifest_lines() {
        let specs = [spec("linux", true, " console=ttyAMA0 a#b ", true), spec("9lives", false, "", false)];
        let (text, paths) = manifest(&specs);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["linux 2 64 linux/kernel initrd=linux/initrd pin -- console=ttyAMA0 a#b", "9lives 2 64 vm1/kernel"]
        );
        assert_eq!(paths, [("linux/kernel".into(), Some("linux/initrd".into())), ("vm1/kernel".into(), None)]);
    }

    #[test]
    fn bundle_from_specs_reads_back() {
        let dir = env::temp_dir().join(format!("ferrovisor-sdcard-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (k, i) = (dir.join("k"), dir.join("i"));
        fs::write(&k, b"kernel bytes").unwrap();
        fs::write(&i, b"initrd").unwrap();
        let g = GuestSpec { kernel: k, initrd: Some(i), ..spec("g", true, "", false) };
        let b = specs_bundle(&[g]).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let files = cpio_files(&b).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["default.vms", "g/kernel", "g/initrd"]);
        assert_eq!(files[1].1, b"kernel bytes");
        assert_eq!(files[2].1, b"initrd");
        check_bundle(&b).unwrap();
    }

    #[test]
    fn bundle_checks() {
        let ok = guestcfg::write_cpio(&[("default.vms", b"a 1 16 k -- x initrd=nope\n# c\n"), ("k", b"1")]);
        check_bundle(&ok).unwrap();
        let no_manifest = guestcfg::write_cpio(&[("k", b"1")]);
        assert!(check_bundle(&no_manifest).unwrap_err().contains("no default.vms"));
        let missing = guestcfg::write_cpio(&[("default.vms", b"a 1 16 k initrd=r\n"), ("k", b"1")]);
        assert!(check_bundle(&missing).unwrap_err().contains("line 1 names `r`"));
        // Every cut of a valid archive is an error, never a panic (but for the
        // trailer's padding, which the hypervisor does without).
        for n in 0..ok.len() - 3 {
            if let Ok(files) = cpio_files(&ok[..n]) {
                panic!("a cut at {n} read as {:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
            }
        }
        assert!(cpio_files(b"not a cpio archive at all, no, not at all; a longer text than one header is, surely,....................................").unwrap_err().contains("not a cpio newc archive"));
    }

    #[test]
    fn bundle_as_cpio_writes_it() {
        // `find . | cpio -o -H newc`: a directory entry and `./` names.
        let mut w = cpio::Writer::new(Vec::new());
        w.entry(".", cpio::S_IFDIR | 0o755, b"", (0, 0)).unwrap();
        w.file("./default.vms", b"a 1 16 ./k\n").unwrap();
        w.file("./k", b"1").unwrap();
        let b = w.finish();
        let names: Vec<String> = cpio_files(&b).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["default.vms", "k"]);
        check_bundle(&b).unwrap();
    }

    #[test]
    fn mbr_layout() {
        let total = 256 * MIB / SECTOR;
        let m = mbr(total, 0x1234_5678).unwrap();
        assert_eq!(read_mbr(&m).unwrap(), (0x0c, 2048, (total - 2048) as u32));
        assert_eq!(&m[440..444], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(m[446], 0, "not marked active");
        // LBA 2048 = cylinder 0, head 32, sector 33.
        assert_eq!(&m[447..450], &[32, 33, 0]);
        assert!(m[..440].iter().all(|&b| b == 0));
        assert_eq!(&m[462..510], &[0u8; 48], "one partition");
        assert!(mbr(2048, 0).is_err());
        assert!(mbr(PART_START + (1 << 32), 0).unwrap_err().contains("too big"));
        assert!(read_mbr(&[0u8; 512]).is_err());
    }

    #[test]
    fn chs_addresses() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(62), [0, 63, 0]);
        assert_eq!(chs(63), [1, 1, 0]);
        // Cylinder 256: its bits 8-9 go to the top of the sector byte.
        assert_eq!(chs(256 * 255 * 63), [0, 0x41, 0]);
        assert_eq!(chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn image_padding() {
        let mut img = vec![0u8; 0x1000];
        img[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        assert!(card_image(&img).unwrap_err().contains("not Ferrovisor's image"));
        assert!(card_image(&[0u8; 16]).unwrap_err().contains("no ARM\\x64 magic"));
        let h = PackageHeader {
            magic: ferrovisor_shared::image::PACKAGE_MAGIC,
            el2_mem_size: 0x800,
            host_offset: 0x1_0000,
            host_file_size: 0x100,
            host_mem_size: 0x3000,
            host_entry: 0,
            _reserved: [0; 2],
        };
        let words = [h.magic, h.el2_mem_size, h.host_offset, h.host_file_size, h.host_mem_size, h.host_entry];
        for (i, w) in words.iter().enumerate() {
            let at = ferrovisor_shared::image::PACKAGE_HEADER_OFFSET + i * 8;
            img[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
        img.resize(0x1_0100, 0xaa);
        img[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&h.image_size().to_le_bytes());
        let padded = card_image(&img).unwrap();
        assert_eq!(padded.len() as u64, h.image_size());
        assert_eq!(&padded[..img.len()], &img[..]);
        assert!(padded[img.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn config_has_what_the_pi_needs() {
        let text = config_txt();
        assert_eq!(
            check_config(&text).unwrap(),
            (KERNEL_NAME.to_string(), BUNDLE_NAME.to_string(), DTB_NAME.to_string())
        );
        let settings = config_settings(&text);
        assert!(settings.contains(&("initramfs".into(), "guests.cpio followkernel".into())));
        assert!(!settings.iter().any(|(k, _)| k == "uart_2ndstage" || k == "armstub"));
        // A wrong or missing setting is named.
        let broken = text.replace("enable_gic=1", "enable_gic=0").replace("initramfs guests.cpio followkernel", "");
        let e = check_config(&broken).unwrap_err();
        assert!(e.contains("enable_gic=1") && e.contains("initramfs FILE followkernel"), "{e}");
        assert!(check_config("arm_64bit=1\n#kernel=x\n").unwrap_err().contains("kernel=FILE"));
        assert!(check_config(&format!("{text}armstub=stub.bin\n")).unwrap_err().contains("armstub"));
    }

    #[test]
    fn disk_id_follows_contents() {
        assert_ne!(disk_id(&[b"a", b"b"]), disk_id(&[b"a", b"c"]));
        assert_eq!(disk_id(&[b"ab"]), disk_id(&[b"a", b"b"]));
    }
}
