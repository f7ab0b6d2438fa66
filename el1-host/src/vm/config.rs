//! Which VMs to start: the list of [`VmSpec`]s, made from the host's device
//! tree or, when that describes none, from the `default.vms` manifest in the
//! guest bundle.
//!
//! - The device tree's `/chosen` children with `compatible =
//!   "ferrovisor,domain"` (see [`DomainDesc`] for the binding) name each VM's
//!   kernel and initrd either by path in the guest bundle (`module-path`) or
//!   by a range of host memory (`reg`).
//! - The guest bundle is the cpio archive that arrives as the host's initrd
//!   (`linux,initrd-start/end` in `/chosen`); see [`super::bundle`].
//! - `default.vms` in the bundle has one VM per line:
//!   `name vcpus mem_mib kernel-path [initrd=path] [-- bootargs...]`. A word
//!   starting with `#` before `--` begins a comment; blank lines are skipped;
//!   everything after `--` is the guest's command line, `#` included.
//!
//! A VM that cannot be made gives an error for that VM alone: the caller logs
//! it and starts the others.
//!
//! The kernel and initrd are copied out of the bundle or host memory, so the
//! memory they came from can be reused once the list is made.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ferrovisor_shared::dt::{Board, DomainDesc, DomainError, MemRegion, ModuleRef};

use super::bundle::{Bundle, BundleError};

/// The most vCPUs one VM may have.
pub const MAX_VCPUS: u32 = 8;
/// The longest VM name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// The least memory a VM may have.
pub const MIN_MEM: u64 = 1 << 20;
/// A VM's memory is a multiple of this (the largest page size a guest may use).
pub const MEM_ALIGN: u64 = 64 << 10;
/// The manifest's path in the guest bundle.
pub const MANIFEST: &str = "default.vms";

const MIB: u64 = 1 << 20;

/// One VM to start.
#[derive(Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Non-empty printable ASCII without spaces, at most [`MAX_NAME_LEN`]
    /// bytes, unique in the list.
    pub name: String,
    /// 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// At least [`MIN_MEM`], a multiple of [`MEM_ALIGN`].
    pub mem_bytes: u64,
    /// An arm64 Image or a raw binary (non-empty).
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub bootargs: String,
    /// vCPU i keeps to one CPU (otherwise vCPUs run on any CPU).
    pub pinned: bool,
    /// Entries of the host's interrupt state reserved for it
    /// (`ferrovisor,interrupt-state`); `None`: the default share.
    pub interrupt_state: Option<u32>,
}

impl fmt::Debug for VmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmSpec")
            .field("name", &self.name)
            .field("vcpus", &self.vcpus)
            .field("mem_bytes", &self.mem_bytes)
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.as_ref().map(Vec::len))
            .field("bootargs", &self.bootargs)
            .finish()
    }
}

/// Why one VM (or the bundle) could not be used. `Display` gives
/// `<place>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the VM was described: `/chosen/<node>`, `default.vms line N`,
    /// or `guest bundle`.
    pub place: String,
    pub message: String,
}

impl ConfigError {
    fn new(place: &str, message: String) -> Self {
        Self { place: place.to_owned(), message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Where the list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `ferrovisor,domain` nodes under `/chosen`.
    DeviceTree,
    /// `default.vms` in the guest bundle.
    Manifest,
    /// Neither: no VMs.
    Nothing,
}

/// The VMs to start, in order, each made or refused on its own.
#[derive(Debug)]
pub struct VmList {
    pub source: Source,
    pub vms: Vec<Result<VmSpec, ConfigError>>,
    /// The host's initrd is there but is not a usable guest bundle (VMs whose
    /// modules are in host memory may still work).
    pub bundle_error: Option<ConfigError>,
}

/// The VMs to start on `board`: from its domain nodes, else from the
/// bundle's `default.vms`. The bundle is the host's initrd, read with
/// `read_host` like a module in host memory.
///
/// `read_host` is how tests hand over memory; on the board it is
/// [`host_memory`].
pub fn vms_from_board<'a>(
    board: &Board<'a>,
    read_host: &mut dyn FnMut(MemRegion) -> Result<&'a [u8], &'static str>,
) -> VmList {
    let mut bundle_error = None;
    let bundle = match board.initrd() {
        None => None,
        Some(region) => match read_host(region).map(Bundle::parse) {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                bundle_error = Some(bundle_problem(e));
                None
            }
            Err(why) => {
                bundle_error = Some(ConfigError::new(
                    "guest bundle",
                    format!("the host's initrd at {:#x}+{:#x} cannot be read: {why}", region.base, region.size),
                ));
                None
            }
        },
    };
    let mut list = vms_from(board.domains(), bundle.as_ref(), read_host);
    list.bundle_error = bundle_error;
    list
}

fn bundle_problem(e: BundleError) -> ConfigError {
    ConfigError::new("guest bundle", format!("the host's initrd is not a cpio newc archive: {e}"))
}

/// The VMs `domains` describe, else those of the bundle's manifest.
pub fn vms_from<'a>(
    domains: impl Iterator<Item = Result<DomainDesc<'a>, DomainError<'a>>>,
    bundle: Option<&Bundle<'a>>,
    read_host: &mut dyn FnMut(MemRegion) -> Result<&'a [u8], &'static str>,
) -> VmList {
    let mut vms: Vec<_> = domains.map(|d| from_domain(d, bundle, read_host)).collect();
    let mut source = if vms.is_empty() { Source::Nothing } else { Source::DeviceTree };
    if let (Source::Nothing, Some(b)) = (source, bundle) {
        if let Some(text) = b.get(MANIFEST) {
            vms = manifest_vms(text, b);
            source = Source::Manifest;
        }
    }
    VmList { source, vms: unique(vms), bundle_error: None }
}

/// One VM and where it was described (for the duplicate-name check).
type Placed = (String, Result<VmSpec, ConfigError>);

fn from_domain<'a>(
    desc: Result<DomainDesc<'a>, DomainError<'a>>,
    bundle: Option<&Bundle<'a>>,
    read_host: &mut dyn FnMut(MemRegion) -> Result<&'a [u8], &'static str>,
) -> Placed {
    let node = match &desc {
        Ok(d) => d.node,
        Err(e) => e.node,
    };
    let place = format!("/chosen/{}", printable(node));
    let made = desc
        .map_err(|e| match e.module {
            Some(m) => ConfigError::new(&format!("{place}/{}", printable(m)), format!("{}", e.problem)),
            None => ConfigError::new(&place, format!("{}", e.problem)),
        })
        .and_then(|d| domain_spec(&place, d, bundle, read_host));
    (place, made)
}

fn domain_spec<'a>(
    place: &str,
    d: DomainDesc<'a>,
    bundle: Option<&Bundle<'a>>,
    read_host: &mut dyn FnMut(MemRegion) -> Result<&'a [u8], &'static str>,
) -> Result<VmSpec, ConfigError> {
    let err = |message: String| ConfigError::new(place, message);
    let mem_bytes = d.memory_kib.checked_mul(1024).ok_or_else(|| err("memory is too large".into()))?;
    check_vm(d.name, d.vcpus, mem_bytes).map_err(err)?;
    let mut module = |m: ModuleRef<'a>, what: &str| -> Result<Vec<u8>, ConfigError> {
        match m {
            ModuleRef::Path(path) => match bundle {
                Some(b) => b
                    .get(path)
                    .ok_or_else(|| {
                        err(format!("{what} module-path \"{}\" is not a file in the guest bundle", printable(path)))
                    })
                    .and_then(|bytes| try_copy(bytes, what).map_err(err)),
                None => Err(err(format!(
                    "{what} module-path \"{}\" needs a guest bundle (the host's initrd), and there is none",
                    printable(path)
                ))),
            },
            ModuleRef::Region(r) => read_host(r)
                .map_err(|why| err(format!("{what} at {:#x}+{:#x} cannot be read: {why}", r.base, r.size)))
                .and_then(|bytes| try_copy(bytes, what).map_err(err)),
        }
    };
    let kernel = module(d.kernel, "kernel")?;
    let initrd = d.initrd.map(|m| module(m, "initrd")).transpose()?;
    if kernel.is_empty() {
        return Err(err("the kernel is empty".into()));
    }
    Ok(VmSpec {
        name: d.name.into(),
        vcpus: d.vcpus,
        mem_bytes,
        kernel,
        initrd,
        bootargs: d.bootargs.into(),
        pinned: d.pinned,
        interrupt_state: d.interrupt_state,
    })
}

/// One line of `default.vms`, before its files are looked up.
#[derive(Debug, PartialEq, Eq)]
struct ManifestLine<'t> {
    name: &'t str,
    vcpus: u32,
    mem_bytes: u64,
    kernel: &'t str,
    initrd: Option<&'t str>,
    bootargs: &'t str,
    pinned: bool,
}

const LINE_FORMAT: &str = "name vcpus mem_mib kernel-path [initrd=path] [pin] [-- bootargs...]";

/// Parses one manifest line; `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<ManifestLine<'_>>, String> {
    let mut words = Vec::new();
    let mut bootargs = "";
    for word in line.split_ascii_whitespace() {
        if word.starts_with('#') {
            break;
        }
        if word == "--" {
            // The word is a subslice of `line`; everything after it is the command line.
            let after = word.as_ptr() as usize - line.as_ptr() as usize + 2;
            bootargs = line.get(after..).unwrap_or("").trim();
            break;
        }
        words.push(word);
    }
    let &[name, vcpus, mem, kernel, ref options @ ..] = words.as_slice() else {
        if words.is_empty() && bootargs.is_empty() {
            return Ok(None);
        }
        return Err(format!("expected `{LINE_FORMAT}`, got {} word(s) before `--`", words.len()));
    };
    let vcpus = vcpus.parse::<u32>().map_err(|_| format!("vcpus `{vcpus}` is not a number"))?;
    let mib = mem.parse::<u64>().map_err(|_| format!("mem_mib `{mem}` is not a number (MiB)"))?;
    let mem_bytes = mib.checked_mul(MIB).ok_or_else(|| format!("mem_mib {mib} is too large"))?;
    let mut initrd = None;
    let mut pinned = false;
    for option in options {
        if *option == "pin" {
            pinned = true;
            continue;
        }
        match option.strip_prefix("initrd=") {
            Some(_) if initrd.is_some() => return Err("initrd= is given twice".into()),
            Some("") => return Err("initrd= needs a path".into()),
            Some(path) => initrd = Some(path),
            None => return Err(format!("unknown word `{option}` (expected initrd=PATH, pin, or -- and the bootargs)")),
        }
    }
    Ok(Some(ManifestLine { name, vcpus, mem_bytes, kernel, initrd, bootargs, pinned }))
}

/// The VMs of a `default.vms` manifest whose files are in `bundle`, one
/// result per line that is not blank or a comment.
pub fn from_manifest(text: &[u8], bundle: &Bundle<'_>) -> Vec<Result<VmSpec, ConfigError>> {
    unique(manifest_vms(text, bundle))
}

fn manifest_vms(text: &[u8], bundle: &Bundle<'_>) -> Vec<Placed> {
    let mut vms = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let place = format!("{MANIFEST} line {}", i + 1);
        let err = |message: String| Err(ConfigError::new(&place, message));
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = core::str::from_utf8(raw) else {
            vms.push((place.clone(), err("not UTF-8".into())));
            continue;
        };
        let m = match parse_line(line) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                vms.push((place.clone(), err(e)));
                continue;
            }
        };
        if let Err(e) = check_vm(m.name, m.vcpus, m.mem_bytes) {
            vms.push((place.clone(), err(e)));
            continue;
        }
        let file = |path: &str, what: &str| {
            bundle
                .get(path)
                .ok_or_else(|| format!("{what} `{path}` is not a file in the guest bundle"))
                .and_then(|bytes| try_copy(bytes, what))
        };
        let made = file(m.kernel, "kernel").and_then(|kernel| {
            if kernel.is_empty() {
                return Err(format!("kernel `{}` is empty", m.kernel));
            }
            let initrd = m.initrd.map(|p| file(p, "initrd")).transpose()?;
            Ok(VmSpec {
                name: m.name.into(),
                vcpus: m.vcpus,
                mem_bytes: m.mem_bytes,
                kernel,
                initrd,
                bootargs: m.bootargs.into(),
                pinned: m.pinned,
                interrupt_state: None,
            })
        });
        let made = made.or_else(err);
        vms.push((place, made));
    }
    vms
}

/// A copy of a module, or a message if the host has no memory for one (a
/// guest image must not bring the hypervisor down).
fn try_copy(bytes: &[u8], what: &str) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| format!("no host memory for a copy of its {what} ({} KiB)", bytes.len() >> 10))?;
    v.extend_from_slice(bytes);
    Ok(v)
}

/// Checks the name, vCPU count and memory size of one VM.
fn check_vm(name: &str, vcpus: u32, mem_bytes: u64) -> Result<(), String> {
    if name.is_empty() {
        return Err("the VM name is empty".into());
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("VM name \"{}\": only printable ASCII without spaces", printable(name)));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("VM name \"{name}\" is longer than {MAX_NAME_LEN} characters"));
    }
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(format!("VM \"{name}\": {vcpus} vCPUs (1 to {MAX_VCPUS})"));
    }
    if mem_bytes < MIN_MEM {
        return Err(format!("VM \"{name}\": {mem_bytes} bytes of memory (at least 1 MiB)"));
    }
    if !mem_bytes.is_multiple_of(MEM_ALIGN) {
        return Err(format!("VM \"{name}\": memory {mem_bytes:#x} bytes is not a multiple of 64 KiB"));
    }
    Ok(())
}

/// The results, with every VM whose name an earlier VM already has turned
/// into an error.
fn unique(vms: Vec<Placed>) -> Vec<Result<VmSpec, ConfigError>> {
    let mut out: Vec<Result<VmSpec, ConfigError>> = Vec::with_capacity(vms.len());
    for (place, vm) in vms {
        let taken = |name: &str| out.iter().any(|e| e.as_ref().is_ok_and(|e| e.name == name));
        let vm = match vm {
            Ok(vm) if taken(&vm.name) => {
                Err(ConfigError::new(&place, format!("VM name \"{}\" is already taken by an earlier VM", vm.name)))
            }
            other => other,
        };
        out.push(vm);
    }
    out
}

/// `s` with anything but printable ASCII as `?`.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

/// Reads host memory for [`vms_from_board`]: a range must lie inside one of
/// the board's RAM ranges.
///
/// # Safety
/// The host's RAM is identity mapped and readable, and the ranges the device
/// tree names (the initrd and any module `reg`) are not written while the
/// returned slices live: the caller keeps them out of the frame allocator at
/// least until the list is made.
#[cfg(target_os = "none")]
pub unsafe fn host_memory<'a>(board: &Board<'_>) -> impl FnMut(MemRegion) -> Result<&'a [u8], &'static str> {
    let mut ram = [MemRegion::EMPTY; ferrovisor_shared::dt::MAX_MEMORY_REGIONS];
    let n = board.memory().len().min(ram.len());
    ram[..n].copy_from_slice(&board.memory()[..n]);
    move |r: MemRegion| {
        if r.is_empty() {
            return Err("the range is empty");
        }
        if r.base.checked_add(r.size).is_none() || !ram[..n].iter().any(|m| r.base >= m.base && r.end() <= m.end()) {
            return Err("the range is not inside RAM");
        }
        let len = usize::try_from(r.size).map_err(|_| "the range is too large")?;
        // SAFETY: the range lies in RAM, which is identity mapped and
        // readable, and the caller keeps it unchanged while the slice lives.
        Ok(unsafe { core::slice::from_raw_parts(r.base as usize as *const u8, len) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = ferrovisor_shared::cpio::Writer::new(Vec::new());
        for (name, data) in files {
            w.file(name, data).unwrap();
        }
        w.finish()
    }

    fn spec(name: &str, vcpus: u32, mib: u64, kernel: &[u8], initrd: Option<&[u8]>, bootargs: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            vcpus,
            mem_bytes: mib * MIB,
            kernel: kernel.to_vec(),
            initrd: initrd.map(<[u8]>::to_vec),
            bootargs: bootargs.into(),
            pinned: false,
            interrupt_state: None,
        }
    }

    fn errors(vms: &[Result<VmSpec, ConfigError>]) -> Vec<String> {
        vms.iter().filter_map(|v| v.as_ref().err()).map(|e| format!("{e}")).collect()
    }

    #[test]
    fn manifest_lines() {
        let l = |s| parse_line(s);
        assert_eq!(l(""), Ok(None));
        assert_eq!(l("   # just a comment -- not bootargs"), Ok(None));
        assert_eq!(
            l("web 2 128 web/Image initrd=web/initrd pin -- console=ttyAMA0 root=/dev/ram # kept"),
            Ok(Some(ManifestLine {
                name: "web",
                vcpus: 2,
                mem_bytes: 128 * MIB,
                kernel: "web/Image",
                initrd: Some("web/initrd"),
                bootargs: "console=ttyAMA0 root=/dev/ram # kept",
                pinned: true,
            }))
        );
        let m = l("\tt 1 1 k.flat   # a test guest").unwrap().unwrap();
        assert_eq!((m.name, m.kernel, m.initrd, m.bootargs), ("t", "k.flat", None, ""));
        assert_eq!(l("t 1 1 k --").unwrap().unwrap().bootargs, "");
        assert_eq!(
            l("t 1 1 k --x").unwrap_err(),
            "unknown word `--x` (expected initrd=PATH, pin, or -- and the bootargs)"
        );
        assert!(l("t 1 1").unwrap_err().starts_with("expected `name vcpus mem_mib kernel-path"));
        assert!(l("-- only bootargs").unwrap_err().contains("got 0 word(s)"));
        assert_eq!(l("t x 1 k").unwrap_err(), "vcpus `x` is not a number");
        assert_eq!(l("t 1 -5 k").unwrap_err(), "mem_mib `-5` is not a number (MiB)");
        assert_eq!(l("t 1 18446744073709551615 k").unwrap_err(), "mem_mib 18446744073709551615 is too large");
        assert_eq!(l("t 1 1 k initrd=a initrd=b").unwrap_err(), "initrd= is given twice");
        assert_eq!(l("t 1 1 k initrd=").unwrap_err(), "initrd= needs a path");
    }

    #[test]
    fn manifest_in_a_bundle() {
        let manifest = b"# default guests\n\
            a 1 64 ./a/kernel -- console=ttyAMA0\r\n\
            \n\
            b 2 16 b.flat initrd=b.initrd\n\
            missing 1 64 nothing/here\n\
            bad 9 64 b.flat\n\
            small 1 0 b.flat\n\
            a 1 64 b.flat\n\
            nonutf\xff 1 1 b.flat\n\
            empty 1 1 empty\n\
            c 1 1 b.flat initrd=nope\n\
            d 8 1 b.flat";
        let a = cpio(&[
            (MANIFEST, manifest),
            ("a/kernel", b"AAAA"),
            ("./b.flat", b"BB"),
            ("b.initrd", b"ramdisk"),
            ("empty", b""),
        ]);
        let bundle = Bundle::parse(&a).unwrap();
        let list = vms_from(core::iter::empty(), Some(&bundle), &mut |_| Err("no host memory in this test"));
        assert_eq!(list.source, Source::Manifest);
        let ok: Vec<_> = list.vms.iter().filter_map(|v| v.as_ref().ok()).cloned().collect();
        assert_eq!(
            ok,
            [
                spec("a", 1, 64, b"AAAA", None, "console=ttyAMA0"),
                spec("b", 2, 16, b"BB", Some(b"ramdisk"), ""),
                spec("d", 8, 1, b"BB", None, ""),
            ]
        );
        assert_eq!(
            errors(&list.vms),
            [
                "default.vms line 5: kernel `nothing/here` is not a file in the guest bundle",
                "default.vms line 6: VM \"bad\": 9 vCPUs (1 to 8)",
                "default.vms line 7: VM \"small\": 0 bytes of memory (at least 1 MiB)",
                "default.vms line 8: VM name \"a\" is already taken by an earlier VM",
                "default.vms line 9: not UTF-8",
                "default.vms line 10: kernel `empty` is empty",
                "default.vms line 11: initrd `nope` is not a file in the guest bundle",
            ]
        );
        assert_eq!(list.vms.len(), 10);
    }

    #[test]
    fn names_vcpus_and_memory_are_checked() {
        assert_eq!(check_vm("ok-Name_1.x", 1, MIB), Ok(()));
        assert_eq!(check_vm(&"n".repeat(32), 8, 3 * MIB + MEM_ALIGN), Ok(()));
        assert_eq!(check_vm("", 1, MIB).unwrap_err(), "the VM name is empty");
        assert!(check_vm("a b", 1, MIB).unwrap_err().contains("printable ASCII"));
        assert_eq!(check_vm("a\u{7}", 1, MIB).unwrap_err(), "VM name \"a?\": only printable ASCII without spaces");
        assert!(check_vm("é", 1, MIB).unwrap_err().contains("printable ASCII"));
        assert!(check_vm(&"n".repeat(33), 1, MIB).unwrap_err().contains("longer than 32"));
        assert!(check_vm("v", 0, MIB).unwrap_err().contains("0 vCPUs (1 to 8)"));
        assert!(check_vm("v", 9, MIB).unwrap_err().contains("9 vCPUs"));
        assert!(check_vm("v", 1, MIB - MEM_ALIGN).unwrap_err().contains("at least 1 MiB"));
        assert!(check_vm("v", 1, MIB + 4096).unwrap_err().contains("not a multiple of 64 KiB"));
    }

    fn domain<'a>(name: &'a str, kernel: ModuleRef<'a>, initrd: Option<ModuleRef<'a>>) -> DomainDesc<'a> {
        DomainDesc {
            node: name,
            name,
            vcpus: 2,
            memory_kib: 64 * 1024,
            kernel,
            initrd,
            bootargs: "quiet",
            pinned: false,
            interrupt_state: None,
        }
    }

    #[test]
    fn domains_resolve_paths_and_host_memory() {
        let a = cpio(&[("k", b"kernel"), ("r", b"initrd"), (MANIFEST, b"ignored 1 1 k\n")]);
        let bundle = Bundle::parse(&a).unwrap();
        let host = vec![0xaau8; 0x100];
        let reads = core::cell::Cell::new(0);
        let mut read = |r: MemRegion| -> Result<&[u8], &'static str> {
            reads.set(reads.get() + 1);
            let start = r.base.checked_sub(0x4000_0000).ok_or("below the test RAM")? as usize;
            host.get(start..start + r.size as usize).ok_or("outside the test RAM")
        };
        let region = |base, size| ModuleRef::Region(MemRegion::new(base, size));
        let bad_memory = DomainDesc { memory_kib: 100, ..domain("small", ModuleRef::Path("k"), None) };
        let domains = vec![
            Ok(domain("one", ModuleRef::Path("./k"), Some(ModuleRef::Path("r")))),
            Ok(domain("two", region(0x4000_0010, 0x20), Some(region(0x4000_0000, 4)))),
            Ok(domain("three", region(0x5000_0000, 0x20), None)),
            Ok(domain("four", ModuleRef::Path("k"), Some(ModuleRef::Path("nope")))),
            Err(DomainError {
                node: "five",
                module: Some("kernel"),
                problem: ferrovisor_shared::dt::DomainProblem::NoModuleSource,
            }),
            Ok(bad_memory),
            Ok(domain("one", ModuleRef::Path("k"), None)),
            Ok(DomainDesc { name: "renamed", ..domain("six", region(0x4000_0000, 1), None) }),
        ];
        let list = vms_from(domains.into_iter(), Some(&bundle), &mut read);
        assert_eq!(list.source, Source::DeviceTree);
        let ok: Vec<_> = list.vms.iter().filter_map(|v| v.as_ref().ok()).cloned().collect();
        assert_eq!(
            ok,
            [
                spec("one", 2, 64, b"kernel", Some(b"initrd"), "quiet"),
                spec("two", 2, 64, &[0xaa; 0x20], Some(&[0xaa; 4]), "quiet"),
                spec("renamed", 2, 64, &[0xaa], None, "quiet"),
            ]
        );
        assert_eq!(
            errors(&list.vms),
            [
                "/chosen/three: kernel at 0x50000000+0x20 cannot be read: outside the test RAM",
                "/chosen/four: initrd module-path \"nope\" is not a file in the guest bundle",
                "/chosen/five/kernel: neither \"module-path\" nor \"reg\"",
                "/chosen/small: VM \"small\": 102400 bytes of memory (at least 1 MiB)",
                "/chosen/one: VM name \"one\" is already taken by an earlier VM",
            ]
        );
        assert_eq!(reads.get(), 4);

        // Without a bundle, module-path cannot be found; host memory still can.
        let domains = [Ok(domain("p", ModuleRef::Path("k"), None)), Ok(domain("q", region(0x4000_0000, 2), None))];
        let list = vms_from(domains.into_iter(), None, &mut read);
        assert_eq!(
            errors(&list.vms),
            ["/chosen/p: kernel module-path \"k\" needs a guest bundle (the host's initrd), and there is none"]
        );
        assert_eq!(list.vms[1].as_ref().unwrap().kernel, [0xaa, 0xaa]);
    }

    #[test]
    fn nothing_to_start() {
        let a = cpio(&[("k", b"kernel")]);
        let bundle = Bundle::parse(&a).unwrap();
        for b in [None, Some(&bundle)] {
            let list = vms_from(core::iter::empty(), b, &mut |_| Err("no host memory in this test"));
            assert_eq!((list.source, list.vms.len()), (Source::Nothing, 0));
        }
    }

    // ---- whole boards, through the device tree reader ----

    fn board_dtb(initrd: Option<(u64, u64)>, chosen: impl FnOnce(&mut vm_fdt::FdtWriter)) -> Vec<u8> {
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000]).unwrap();
        w.end_node(mem).unwrap();
        let cpus = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        let cpu = w.begin_node("cpu@0").unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_u32("reg", 0).unwrap();
        w.end_node(cpu).unwrap();
        w.end_node(cpus).unwrap();
        let c = w.begin_node("chosen").unwrap();
        if let Some((start, end)) = initrd {
            w.property_u64("linux,initrd-start", start).unwrap();
            w.property_u64("linux,initrd-end", end).unwrap();
        }
        chosen(&mut w);
        w.end_node(c).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn from_a_board_with_a_bundle_as_initrd() {
        let archive = cpio(&[(MANIFEST, b"m 1 2 k -- from the manifest\n"), ("k", b"kern")]);
        let base = 0x4800_0000u64;
        let mut read = |r: MemRegion| -> Result<&[u8], &'static str> {
            let start = r.base.checked_sub(base).ok_or("not the initrd")? as usize;
            archive.get(start..start + r.size as usize).ok_or("past the initrd")
        };
        // No domains: the manifest.
        let dtb = board_dtb(Some((base, base + archive.len() as u64)), |_| {});
        let board = Board::from_slice(&dtb).unwrap();
        let list = vms_from_board(&board, &mut read);
        assert_eq!(list.source, Source::Manifest);
        assert_eq!(list.bundle_error, None);
        assert_eq!(list.vms, [Ok(spec("m", 1, 2, b"kern", None, "from the manifest"))]);

        // A domain node wins over the manifest.
        let dtb = board_dtb(Some((base, base + archive.len() as u64)), |w| {
            let d = w.begin_node("vm1").unwrap();
            w.property_string("compatible", "ferrovisor,domain").unwrap();
            w.property_u32("cpus", 3).unwrap();
            w.property_u64("memory", 4096).unwrap();
            let k = w.begin_node("kernel").unwrap();
            w.property_string_list("compatible", vec!["multiboot,kernel".into(), "multiboot,module".into()]).unwrap();
            w.property_string("module-path", "k").unwrap();
            w.property_string("bootargs", "from the tree").unwrap();
            w.end_node(k).unwrap();
            w.end_node(d).unwrap();
        });
        let board = Board::from_slice(&dtb).unwrap();
        let list = vms_from_board(&board, &mut read);
        assert_eq!(list.source, Source::DeviceTree);
        assert_eq!(list.vms, [Ok(spec("vm1", 3, 4, b"kern", None, "from the tree"))]);

        // An initrd that is not a bundle is reported, and nothing starts.
        let dtb = board_dtb(Some((base + 4, base + archive.len() as u64)), |_| {});
        let board = Board::from_slice(&dtb).unwrap();
        let list = vms_from_board(&board, &mut read);
        assert_eq!(list.source, Source::Nothing);
        let e = list.bundle_error.unwrap();
        assert_eq!(e.place, "guest bundle");
        assert!(e.message.contains("bad magic"), "{e}");
        // One that cannot be read.
        let dtb = board_dtb(Some((0x1000, 0x2000)), |_| {});
        let list = vms_from_board(&Board::from_slice(&dtb).unwrap(), &mut read);
        assert!(list.bundle_error.unwrap().message.contains("at 0x1000+0x1000 cannot be read: not the initrd"));
        // No initrd at all.
        let dtb = board_dtb(None, |_| {});
        let list = vms_from_board(&Board::from_slice(&dtb).unwrap(), &mut read);
        assert_eq!((list.source, list.bundle_error), (Source::Nothing, None));
    }

    /// A manifest or a domain description is what a user writes: any text,
    /// any numbers. Whatever it is, every VM comes out either refused with a
    /// message naming its line or node, or keeping every rule of [`VmSpec`],
    /// with no more results than lines or domains.
    mod random {
        use super::*;
        use proptest::prelude::*;

        /// The words a manifest line is made of, good and bad, and noise.
        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(&[
                    "vm", "a", "b", "x", "1", "2", "8", "9", "0", "64", "1024", "-1",
                    "18446744073709551615", "4294967296", "k", "empty", "r", "nope", "initrd=r", "initrd=",
                    "initrd=nope", "initrd=k", "pin", "--", "--x", "#", "#c", "a-name-longer-than-thirty-two-bytes",
                    "\u{e9}", "\u{7}",
                ][..]).prop_map(String::from),
                1 => "[ -~]{0,12}",
                1 => any::<String>(),
            ]
        }

        /// Words in any order; or mostly in the order of the format, so that
        /// many lines make a VM.
        fn line() -> impl Strategy<Value = String> {
            let pick = |w: &'static [&'static str]| prop::sample::select(w).prop_map(String::from);
            let shaped = (
                prop_oneof![5 => "[a-z]{1,3}", 1 => word()],
                prop_oneof![5 => pick(&["1", "2", "8"]), 1 => word()],
                prop_oneof![5 => pick(&["1", "2", "64"]), 1 => word()],
                prop_oneof![5 => pick(&["k", "k", "empty", "nope"]), 1 => word()],
                prop::collection::vec(prop_oneof![5 => pick(&["initrd=r", "pin", "initrd=nope"]), 1 => word()], 0..3),
                prop::option::of("[ -~]{0,20}"),
            )
                .prop_map(|(name, vcpus, mem, kernel, options, bootargs)| {
                    let mut words = alloc::vec![name, vcpus, mem, kernel];
                    words.extend(options);
                    words.extend(bootargs.map(|b| alloc::format!("-- {b}")));
                    words
                });
            let gap = prop::sample::select(&[" ", "  ", "\t", " \t ", "\r"][..]);
            let words = prop_oneof![shaped, prop::collection::vec(word(), 0..9)];
            (words, prop::collection::vec(gap, 9), any::<bool>()).prop_map(|(words, gaps, indent)| {
                let mut l = String::from(if indent { "\t" } else { "" });
                for (w, g) in words.iter().zip(gaps.iter().cycle()) {
                    l.push_str(w);
                    l.push_str(g);
                }
                l
            })
        }

        /// What [`VmSpec`] promises, and a kernel `kernel_ok` takes for the file named.
        fn check_spec(vm: &VmSpec, kernel_ok: impl Fn(&[u8]) -> bool) -> Result<(), TestCaseError> {
            prop_assert!(check_vm(&vm.name, vm.vcpus, vm.mem_bytes).is_ok(), "{:?}", vm);
            prop_assert!(!vm.kernel.is_empty() && kernel_ok(&vm.kernel), "{:?}", vm);
            Ok(())
        }

        fn check_unique(vms: &[Result<VmSpec, ConfigError>]) -> Result<(), TestCaseError> {
            let mut names: Vec<&str> = vms.iter().filter_map(|v| v.as_ref().ok()).map(|v| v.name.as_str()).collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(names.len(), n, "two VMs with one name");
            Ok(())
        }

        fn domain_strategy() -> impl Strategy<Value = (String, u32, u64, u8, u64, u64, bool)> {
            (
                prop_oneof![Just(String::from("d")), Just(String::from("e")), "[ -~]{0,40}", any::<String>()],
                prop_oneof![0u32..10, any::<u32>()],
                prop_oneof![Just(1024u64), (0u64..8192).prop_map(|k| k * 64), any::<u64>()],
                0u8..4,
                prop_oneof![0x4000_0000u64..0x4000_1100, any::<u64>()],
                prop_oneof![0u64..0x200, any::<u64>()],
                any::<bool>(),
            )
        }

        proptest! {
            #![proptest_config(crate::fuzz::config(512))]

            #[test]
            fn any_manifest_line_parses_or_is_refused(l in prop_oneof![line(), any::<String>()]) {
                match parse_line(&l) {
                    Ok(None) => {}
                    Ok(Some(m)) => {
                        for w in [m.name, m.kernel].into_iter().chain(m.initrd) {
                            prop_assert!(!w.is_empty() && !w.starts_with('#') && w != "--");
                            prop_assert!(!w.contains(|c: char| c.is_ascii_whitespace()) && l.contains(w));
                        }
                        prop_assert!(m.mem_bytes.is_multiple_of(MIB));
                        prop_assert!(l.contains(m.bootargs) && m.bootargs.trim() == m.bootargs);
                        prop_assert!(m.bootargs.is_empty() || l.contains("--"));
                    }
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            #[test]
            fn any_manifest_gives_a_refusal_or_a_sound_vm_per_line(
                lines in prop::collection::vec(prop_oneof![4 => line(), 1 => any::<String>()], 0..12),
                raw in prop::collection::vec(any::<u8>(), 0..64),
                crlf in any::<bool>(),
            ) {
                let mut text = lines.join(if crlf { "\r\n" } else { "\n" }).into_bytes();
                text.extend_from_slice(&raw);
                let a = cpio(&[(MANIFEST, &text), ("k", b"kernel"), ("r", b"initrd"), ("empty", b"")]);
                let bundle = Bundle::parse(&a).unwrap();
                let vms = from_manifest(&text, &bundle);
                let nr_lines = text.split(|&b| b == b'\n').count();
                prop_assert!(vms.len() <= nr_lines);
                let mut last = 0;
                for vm in &vms {
                    match vm {
                        Ok(vm) => {
                            let file = |f: &[u8]| f == b"kernel" || f == b"initrd";
                            check_spec(vm, file)?;
                            prop_assert!(vm.initrd.as_deref().is_none_or(file));
                        }
                        Err(e) => {
                            let n: usize =
                                e.place.strip_prefix("default.vms line ").and_then(|n| n.parse().ok()).unwrap();
                            prop_assert!(n > last && n <= nr_lines, "{}", e);
                            last = n;
                            prop_assert!(!e.message.is_empty());
                        }
                    }
                }
                check_unique(&vms)?;
            }

            #[test]
            fn any_domains_give_a_refusal_or_a_sound_vm_each(
                domains in prop::collection::vec(domain_strategy(), 0..6),
            ) {
                let a = cpio(&[("k", b"kernel"), ("empty", b"")]);
                let bundle = Bundle::parse(&a).unwrap();
                let host = vec![0x5au8; 0x1000];
                let mut read = |r: MemRegion| -> Result<&[u8], &'static str> {
                    let start = r.base.checked_sub(0x4000_0000).ok_or("below the test RAM")?;
                    let end = start.checked_add(r.size).ok_or("wraps")?;
                    host.get(start as usize..end as usize).ok_or("outside the test RAM")
                };
                let descs: Vec<_> = domains
                    .iter()
                    .map(|(name, vcpus, memory_kib, module, base, size, pinned)| {
                        let region = ModuleRef::Region(MemRegion::new(*base, *size));
                        let (kernel, initrd) = match module {
                            0 => (ModuleRef::Path("k"), Some(region)),
                            1 => (region, None),
                            2 => (ModuleRef::Path("empty"), None),
                            _ => (ModuleRef::Path("nope"), Some(ModuleRef::Path("k"))),
                        };
                        let (vcpus, memory_kib, pinned) = (*vcpus, *memory_kib, *pinned);
                        Ok(DomainDesc { node: name, name, vcpus, memory_kib, kernel, initrd, bootargs: name, pinned, interrupt_state: None })
                    })
                    .collect();
                let n = descs.len();
                let list = vms_from(descs.into_iter(), Some(&bundle), &mut read);
                prop_assert_eq!(list.vms.len(), n);
                for vm in &list.vms {
                    match vm {
                        Ok(vm) => check_spec(vm, |k| k == b"kernel" || k.iter().all(|&b| b == 0x5a))?,
                        Err(e) => prop_assert!(e.place.starts_with("/chosen/") && !e.message.is_empty()),
                    }
                }
                check_unique(&list.vms)?;
            }

            /// The host's initrd as the guest bundle, broken anywhere: the
            /// manifest's VMs, or a bundle error and none.
            #[test]
            fn any_initrd_gives_a_bundle_error_or_its_manifest(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                cut in prop::option::of(any::<prop::sample::Index>()),
            ) {
                let mut archive = cpio(&[(MANIFEST, b"m 1 2 k -- one\nn 2 4 k initrd=k\n"), ("k", b"kern")]);
                for (at, byte) in edits {
                    let i = at.index(archive.len());
                    archive[i] = byte;
                }
                if let Some(cut) = cut {
                    archive.truncate(cut.index(archive.len()));
                }
                let base = 0x4800_0000u64;
                let dtb = board_dtb(Some((base, base + archive.len() as u64)), |_| {});
                let board = Board::from_slice(&dtb).unwrap();
                let mut read = |r: MemRegion| -> Result<&[u8], &'static str> {
                    let start = r.base.checked_sub(base).ok_or("not the initrd")? as usize;
                    archive.get(start..start + r.size as usize).ok_or("past the initrd")
                };
                let list = vms_from_board(&board, &mut read);
                // An empty range is no initrd (linux,initrd-start == end).
                match board.initrd().map(|_| Bundle::parse(&archive)) {
                    None => {
                        prop_assert!(archive.is_empty());
                        prop_assert!(list.bundle_error.is_none() && list.vms.is_empty());
                    }
                    Some(Ok(b)) => {
                        prop_assert_eq!(list.bundle_error, None);
                        let manifest = b.get(MANIFEST);
                        prop_assert_eq!(list.source == Source::Manifest, manifest.is_some());
                        prop_assert!(list.vms.len() <= manifest.map_or(0, |m| m.split(|&c| c == b'\n').count()));
                        for vm in list.vms.iter().flatten() {
                            check_spec(vm, |k| b.entries().any(|e| e.data == k))?;
                        }
                    }
                    Some(Err(_)) => {
                        prop_assert!(list.bundle_error.is_some_and(|e| e.place == "guest bundle"));
                        prop_assert!(list.source == Source::Nothing && list.vms.is_empty());
                    }
                }
            }
        }
    }
}
