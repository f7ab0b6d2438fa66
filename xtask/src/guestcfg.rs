//! Guests for `cargo xtask run --guest ...`: packs their files into the guest
//! bundle (a cpio "newc" archive that QEMU hands over as the hypervisor's
//! initrd) and describes each one as a `ferrovisor,domain` node under
//! `/chosen` in a copy of the board's device tree (see
//! `ferrovisor_shared::dt::DomainDesc` for the binding).
//!
//! The device tree is QEMU's own for exactly the machine being run (dumped
//! with `-machine dumpdtb=`), or on raspi4b the Pi 4 tree xtask already
//! boots with; it is decompiled with `dtc`, the nodes are added as text, and
//! it is compiled again.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferrovisor_shared::cpio;
use ferrovisor_shared::dt::{Board as DtBoard, ModuleRef};

use crate::dtb::fdt_totalsize;
use crate::qemu::{Board, Machine, QEMU};

/// The most vCPUs a VM may have (the hypervisor's limit).
pub const MAX_VCPUS: u32 = 8;
/// The longest VM name.
pub const MAX_NAME_LEN: usize = 32;
/// The compatible string of a VM node.
pub const DOMAIN_COMPATIBLE: &str = "ferrovisor,domain";

const MIB: u64 = 1 << 20;

/// One guest to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    pub name: String,
    /// An arm64 Image or a raw binary.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The guest's command line.
    pub bootargs: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    /// vCPU i keeps to one CPU (`ferrovisor,pinned`).
    pub pinned: bool,
}

/// The files [`prepare`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The board's device tree with the guests' nodes (give it to `-dtb`).
    pub dtb: PathBuf,
    /// Its source, for reading.
    pub dts: PathBuf,
    /// The guest bundle (give it to `-initrd`).
    pub bundle: PathBuf,
}

/// The default name of a guest: its file's stem, with anything that is not
/// printable ASCII or is a space made `_`, cut to [`MAX_NAME_LEN`].
pub fn default_name(kernel: &Path) -> String {
    let stem = kernel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(MAX_NAME_LEN).collect();
    if name.is_empty() {
        "guest".into()
    } else {
        name
    }
}

/// Checks a VM name as the hypervisor will.
///
/// # Errors
/// The name is empty, longer than [`MAX_NAME_LEN`], or has a character that
/// is not printable ASCII (a space included).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("`{name}`: only printable ASCII without spaces"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("`{name}` is longer than {MAX_NAME_LEN} characters"));
    }
    Ok(())
}

fn file_len(path: &Path, what: &str, guest: &str) -> Result<u64, String> {
    let meta = fs::metadata(path).map_err(|e| format!("guest `{guest}`: {what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("guest `{guest}`: {what} {} is not a file", path.display()));
    }
    if meta.len() == 0 && what == "--guest" {
        return Err(format!("guest `{guest}`: {what} {} is empty", path.display()));
    }
    Ok(meta.len())
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The least memory a guest with these files can have: the kernel at
/// 0x8_0000 and the initrd and device tree each on a 2 MiB boundary above
/// it. A lower bound: an Image's BSS can make the kernel need more.
pub fn min_mem_bytes(kernel_len: u64, initrd_len: u64) -> u64 {
    round_up(0x8_0000 + kernel_len, 2 * MIB) + round_up(initrd_len, 2 * MIB) + 2 * MIB
}

/// Checks that the guests' files exist and fit in their memory.
///
/// # Errors
/// A kernel or initrd is missing, is not a file, or (the kernel) is empty, or
/// a guest's memory is too small for its files.
pub fn check_files(specs: &[GuestSpec]) -> Result<(), String> {
    for g in specs {
        let kernel = file_len(&g.kernel, "--guest", &g.name)?;
        let initrd = match &g.initrd {
            Some(p) => file_len(p, "--initrd", &g.name)?,
            None => 0,
        };
        let need = min_mem_bytes(kernel, initrd);
        if u64::from(g.mem_mib) * MIB < need {
            return Err(format!(
                "guest `{}`: --mem {} MiB is too small: its kernel ({kernel} bytes) and initrd ({initrd} bytes) \
                 need at least {} MiB",
                g.name,
                g.mem_mib,
                need.div_ceil(MIB)
            ));
        }
    }
    Ok(())
}

/// A cpio "newc" archive of `files` (name, contents), regular files with
/// mode 0644, ended by `TRAILER!!!`.
pub fn write_cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = cpio::Writer::new(Vec::new());
    for (name, data) in files {
        w.file(name, data).unwrap_or_else(|e| panic!("bundle file `{name}`: {e}"));
    }
    w.finish()
}

/// A device tree node name for each guest: its own name when that is a
/// valid one (letters, digits and `,._+-`, starting with a letter, at most
/// 31 characters), else `vmN`; never one taken before.
pub fn node_names(specs: &[GuestSpec]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, g) in specs.iter().enumerate() {
        let valid = g.name.len() <= 31
            && g.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && g.name.chars().all(|c| c.is_ascii_alphanumeric() || ",._+-".contains(c));
        let mut node = if valid { g.name.clone() } else { format!("vm{i}") };
        while names.contains(&node) {
            node.push('_');
        }
        names.push(node);
    }
    names
}

/// A DTS string literal (quotes included).
fn dts_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// The bundle paths of a guest's kernel and initrd.
fn module_paths(node: &str) -> (String, String) {
    (format!("{node}/kernel"), format!("{node}/initrd"))
}

/// The domain nodes, as DTS text to put inside `/chosen` (two tabs deep, as
/// `dtc` writes that node's children).
pub fn domain_nodes_dts(specs: &[GuestSpec], nodes: &[String]) -> String {
    let mut out = String::new();
    for (g, node) in specs.iter().zip(nodes) {
        let (kernel, initrd) = module_paths(node);
        let kib = u64::from(g.mem_mib) * 1024;
        out += &format!("\n\t\t{node} {{\n");
        out += &format!("\t\t\tcompatible = {};\n", dts_string(DOMAIN_COMPATIBLE));
        if *node != g.name {
            // Not `name`: dtc insists that one equals the node name.
            out += &format!("\t\t\tferrovisor,name = {};\n", dts_string(&g.name));
        }
        out += &format!("\t\t\tcpus = <{}>;\n", g.vcpus);
        if g.pinned {
            out += "\t\t\tferrovisor,pinned;\n";
        }
        out += &format!("\t\t\tmemory = <{:#x} {:#x}>;\n", kib >> 32, kib & 0xffff_ffff);
        out += "\n\t\t\tkernel {\n";
        out += "\t\t\t\tcompatible = \"multiboot,kernel\", \"multiboot,module\";\n";
        out += &format!("\t\t\t\tmodule-path = {};\n", dts_string(&kernel));
        out += &format!("\t\t\t\tbootargs = {};\n", dts_string(&g.bootargs));
        out += "\t\t\t};\n";
        if g.initrd.is_some() {
            out += "\n\t\t\tramdisk {\n";
            out += "\t\t\t\tcompatible = \"multiboot,ramdisk\", \"multiboot,module\";\n";
            out += &format!("\t\t\t\tmodule-path = {};\n", dts_string(&initrd));
            out += "\t\t\t};\n";
        }
        out += "\t\t};\n";
    }
    out
}

/// The brace depth after each line of `dts`, and the depth before it,
/// ignoring braces in strings, comments and character literals.
fn line_depths(dts: &str) -> Vec<(i32, i32)> {
    let (mut depth, mut in_str, mut in_comment) = (0i32, false, false);
    let mut out = Vec::new();
    for line in dts.lines() {
        let before = depth;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_comment {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_comment = false;
                }
            } else if in_str {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => in_str = false,
                    _ => {}
                }
            } else {
                match c {
                    '"' => in_str = true,
                    '/' if chars.peek() == Some(&'*') => {
                        chars.next();
                        in_comment = true;
                    }
                    '/' if chars.peek() == Some(&'/') => break,
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        }
        out.push((before, depth));
    }
    out
}

/// Puts `nodes` at the end of the root's `chosen` node in `dts` (as `dtc -O
/// dts` writes it: one node or property per line), adding a `chosen` node at
/// the end of the root if there is none.
///
/// # Errors
/// The source has no root node, or its braces do not balance.
pub fn insert_into_chosen(dts: &str, nodes: &str) -> Result<String, String> {
    let lines: Vec<&str> = dts.lines().collect();
    let depths = line_depths(dts);
    if depths.last().is_none_or(|&(_, after)| after != 0) || depths.iter().any(|&(_, d)| d < 0) {
        return Err("the device tree source's braces do not balance".into());
    }
    let root_start = lines
        .iter()
        .zip(&depths)
        .position(|(l, &(before, after))| before == 0 && after == 1 && l.trim_start().starts_with('/'))
        .ok_or("the device tree source has no root node `/ {`")?;
    let chosen = (root_start + 1..lines.len()).find(|&i| {
        let t = lines[i].trim();
        // `chosen {`, possibly with a label before it (`label: chosen {`).
        depths[i] == (1, 2) && t.strip_suffix('{').and_then(|t| t.split_whitespace().last()) == Some("chosen")
    });
    // The line that closes the chosen node, or the root node.
    let (close, wrap) = match chosen {
        Some(start) => ((start + 1..lines.len()).find(|&i| depths[i].1 == 1).ok_or("`chosen` never closes")?, false),
        None => ((root_start + 1..lines.len()).find(|&i| depths[i].1 == 0).ok_or("the root never closes")?, true),
    };
    let mut out = String::with_capacity(dts.len() + nodes.len() + 32);
    for (i, line) in lines.iter().enumerate() {
        if i == close {
            if wrap {
                out += "\n\tchosen {";
                out += nodes;
                out += "\t};\n";
            } else {
                out += nodes;
            }
        }
        out += line;
        out.push('\n');
    }
    Ok(out)
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

/// A path for QEMU's `-machine` option list, which splits at commas.
fn qemu_opt_path(p: &Path) -> Result<&str, String> {
    let s = p.to_str().ok_or_else(|| format!("{}: path is not UTF-8", p.display()))?;
    if s.contains(',') {
        return Err(format!("{s}: QEMU cannot take a path with a comma"));
    }
    Ok(s)
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write(p: &Path, bytes: &[u8]) -> Result<(), String> {
    fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

/// QEMU's device tree for `machine` on virt, written to `out`.
fn dump_virt_dtb(dir: &Path, machine: &Machine, out: &Path) -> Result<(), String> {
    // `-append` needs `-kernel`; the kernel's contents do not change the tree.
    let dummy = dir.join("dummy-kernel.bin");
    write(&dummy, &[0u8; 4096])?;
    let _ = fs::remove_file(out);
    let mut dump = Command::new(QEMU);
    dump.args(machine.virt_machine_args(&format!(",dumpdtb={}", qemu_opt_path(out)?)));
    dump.arg("-kernel").arg(&dummy).arg("-append").arg(&machine.append).args(["-display", "none"]);
    run_tool(&mut dump, "dumping QEMU's device tree (-machine dumpdtb=)")?;
    let blob = read(out)?;
    fdt_totalsize(&blob).ok_or_else(|| format!("{}: QEMU wrote no device tree", out.display()))?;
    Ok(())
}

/// Checks that the compiled tree describes exactly `specs`, as the
/// hypervisor will read it.
fn verify(dtb: &[u8], specs: &[GuestSpec], nodes: &[String]) -> Result<(), String> {
    let board = DtBoard::from_slice(dtb).map_err(|e| format!("the new device tree does not parse: {e}"))?;
    let domains: Vec<_> = board.domains().collect();
    if domains.len() != specs.len() {
        return Err(format!("the new device tree has {} domain nodes, not {}", domains.len(), specs.len()));
    }
    for ((d, g), node) in domains.iter().zip(specs).zip(nodes) {
        let d = d.as_ref().map_err(|e| format!("the new device tree: {e}"))?;
        let (kernel, initrd) = module_paths(node);
        let initrd = g.initrd.as_ref().map(|_| ModuleRef::Path(&initrd));
        let same = d.name == g.name
            && d.vcpus == g.vcpus
            && d.memory_kib == u64::from(g.mem_mib) * 1024
            && d.kernel == ModuleRef::Path(&kernel)
            && d.initrd == initrd
            && d.bootargs == g.bootargs;
        if !same {
            return Err(format!("the new device tree describes guest `{}` as {d:?}", g.name));
        }
    }
    Ok(())
}

/// Writes the guest bundle and the board's device tree with one domain node
/// per guest into `target/xtask-run/`.
///
/// # Errors
/// A guest's file cannot be read, QEMU or `dtc` fails, or the resulting
/// tree does not read back as the guests.
pub fn prepare(root: &Path, machine: &Machine, specs: &[GuestSpec]) -> Result<Prepared, String> {
    let dir = crate::target_dir(root).join("xtask-run");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let nodes = node_names(specs);

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (g, node) in specs.iter().zip(&nodes) {
        let (kernel, initrd) = module_paths(node);
        files.push((kernel, read(&g.kernel)?));
        if let Some(p) = &g.initrd {
            files.push((initrd, read(p)?));
        }
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let bundle = dir.join("guests.cpio");
    write(&bundle, &write_cpio(&refs))?;

    let base = match machine.board {
        Board::Virt => {
            let p = dir.join("qemu-virt.dtb");
            dump_virt_dtb(&dir, machine, &p)?;
            p
        }
        Board::Raspi4b => crate::boottest::pi_dtb(root)?,
    };
    let base_dts = dir.join("board.dts");
    let dts = dir.join("guests.dts");
    let dtb = dir.join("guests.dtb");
    run_tool(
        Command::new("dtc").args(["-q", "-I", "dtb", "-O", "dts", "-o"]).arg(&base_dts).arg(&base),
        "dtc (decompile)",
    )?;
    let source = fs::read_to_string(&base_dts).map_err(|e| format!("{}: {e}", base_dts.display()))?;
    let with_guests = insert_into_chosen(&source, &domain_nodes_dts(specs, &nodes))
        .map_err(|e| format!("{}: {e}", base_dts.display()))?;
    write(&dts, with_guests.as_bytes())?;
    run_tool(Command::new("dtc").args(["-q", "-I", "dts", "-O", "dtb", "-o"]).arg(&dtb).arg(&dts), "dtc (compile)")?;
    // The Pi's packaged tree has no memory size until the firmware (or QEMU)
    // fills it in, so it does not parse as a board yet; virt's does.
    if machine.board == Board::Virt {
        verify(&read(&dtb)?, specs, &nodes).map_err(|e| format!("{}: {e}", dtb.display()))?;
    }
    Ok(Prepared { dtb, dts, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(name: &str, initrd: bool) -> GuestSpec {
        GuestSpec {
            name: name.into(),
            kernel: PathBuf::from(format!("/k/{name}.bin")),
            initrd: initrd.then(|| PathBuf::from("/k/initrd")),
            bootargs: "console=ttyAMA0 x=\"a b\" c\\d".into(),
            vcpus: 2,
            mem_mib: 64,
            pinned: false,
        }
    }

    #[test]
    fn default_names() {
        assert_eq!(default_name(Path::new("/a/b/vmlinuz")), "vmlinuz");
        assert_eq!(default_name(Path::new("tests/selftest.flat")), "selftest");
        assert_eq!(default_name(Path::new("my guest.bin")), "my_guest");
        assert_eq!(default_name(Path::new(&"x".repeat(40))).len(), 32);
        assert_eq!(default_name(Path::new("/")), "guest");
        assert_eq!(check_name("web-1"), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name("a b").unwrap_err().contains("printable ASCII"));
        assert!(check_name(&"n".repeat(33)).unwrap_err().contains("longer than 32"));
    }

    /// GNU cpio lists and unpacks what we write (when it is installed).
    #[test]
    fn cpio_reads_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("SKIP: no cpio (apt-get install cpio)");
            return;
        }
        let big: Vec<u8> = (0..100_003u32).map(|i| (i % 253) as u8).collect();
        let a = write_cpio(&[("vm0/kernel", &big), ("vm0/initrd", b"odd"), ("empty", b"")]);
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.cpio"), &a).unwrap();
        let list = Command::new("cpio").args(["-t", "--quiet", "-F", "a.cpio"]).current_dir(&dir).output().unwrap();
        assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
        assert_eq!(String::from_utf8_lossy(&list.stdout), "vm0/kernel\nvm0/initrd\nempty\n");
        let unpack =
            Command::new("cpio").args(["-i", "-d", "--quiet", "-F", "a.cpio"]).current_dir(&dir).output().unwrap();
        assert!(unpack.status.success(), "{}", String::from_utf8_lossy(&unpack.stderr));
        assert_eq!(fs::read(dir.join("vm0/kernel")).unwrap(), big);
        assert_eq!(fs::read(dir.join("vm0/initrd")).unwrap(), b"odd");
        assert_eq!(fs::read(dir.join("empty")).unwrap(), b"");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_names_are_valid_and_unique() {
        let specs: Vec<_> =
            ["web", "vm1", "a b", "1st", "web", &"n".repeat(32), "x/y"].iter().map(|n| guest(n, false)).collect();
        assert_eq!(node_names(&specs), ["web", "vm1", "vm2", "vm3", "web_", "vm5", "vm6"]);
        let clash = [guest("vm1", false), guest("odd name", false)];
        assert_eq!(node_names(&clash), ["vm1", "vm1_"]);
    }

    #[test]
    fn domain_node_text() {
        let specs = [guest("web", true), guest("two words", false)];
        let text = domain_nodes_dts(&specs, &node_names(&specs));
        let expect = "
\t\tweb {
\t\t\tcompatible = \"ferrovisor,domain\";
\t\t\tcpus = <2>;
\t\t\tmemory = <0x0 0x10000>;

\t\t\tkernel {
\t\t\t\tcompatible = \"multiboot,kernel\", \"multiboot,module\";
\t\t\t\tmodule-path = \"web/kernel\";
\t\t\t\tbootargs = \"console=ttyAMA0 x=\\\"a b\\\" c\\\\d\";
\t\t\t};

\t\t\tramdisk {
\t\t\t\tcompatible = \"multiboot,ramdisk\", \"multiboot,module\";
\t\t\t\tmodule-path = \"web/initrd\";
\t\t\t};
\t\t};

\t\tvm1 {
\t\t\tcompatible = \"ferrovisor,domain\";
\t\t\tferrovisor,name = \"two words\";
";
        assert!(text.starts_with(expect), "{text}");
        assert!(!text[expect.len()..].contains("ramdisk"), "{text}");
        assert_eq!(dts_string("a\u{7}é"), "\"a\\x07\\xc3\\xa9\"");
        let big = GuestSpec { mem_mib: u32::MAX, ..guest("big", false) };
        assert!(domain_nodes_dts(&[big], &["big".into()]).contains("memory = <0x3ff 0xfffffc00>;"));
    }

    const DTS: &str = "/dts-v1/;

/ {
\tinterrupt-parent = <0x8002>;

\tpl011@9000000 {
\t\tcompatible = \"arm,pl011\";
\t};

\tchosen {
\t\tbootargs = \"loglevel=info x=\\\"}{\\\"\";
\t\tstdout-path = \"/pl011@9000000\";
\t};

\tnotchosen {
\t\tchosen {
\t\t};
\t};
};
";

    #[test]
    fn inserts_at_the_end_of_chosen() {
        let out = insert_into_chosen(DTS, "\n\t\tvm {\n\t\t};\n").unwrap();
        let want =
            "\t\tstdout-path = \"/pl011@9000000\";\n\n\t\tvm {\n\t\t};\n\t};\n\n\tnotchosen {\n\t\tchosen {\n\t\t};";
        assert!(out.contains(want), "{out}");
        assert_eq!(out.matches("vm {").count(), 1);
        assert_eq!(out.replace("\n\t\tvm {\n\t\t};\n", ""), DTS);
    }

    #[test]
    fn adds_chosen_when_missing() {
        let no_chosen = DTS.replace("\tchosen {\n\t\tbootargs = \"loglevel=info x=\\\"}{\\\"\";\n\t\tstdout-path = \"/pl011@9000000\";\n\t};\n\n", "");
        assert!(!no_chosen.contains("bootargs"));
        let out = insert_into_chosen(&no_chosen, "\n\t\tvm {\n\t\t};\n").unwrap();
        assert!(out.ends_with("\t};\n\n\tchosen {\n\t\tvm {\n\t\t};\n\t};\n};\n"), "{out}");
    }

    #[test]
    fn refuses_broken_sources() {
        assert!(insert_into_chosen("/ {\n\tchosen {\n};\n", "").unwrap_err().contains("balance"));
        assert!(insert_into_chosen("/dts-v1/;\n", "").unwrap_err().contains("no root node"));
        assert!(insert_into_chosen("/ {\n};\n}\n", "").unwrap_err().contains("balance"));
    }

    fn temp_file(name: &str, len: usize) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xtask-guestcfg-{}-{name}", std::process::id()));
        fs::write(&p, vec![1u8; len]).unwrap();
        p
    }

    #[test]
    fn files_are_checked() {
        let k = temp_file("k", 3 << 20);
        let empty = temp_file("empty", 0);
        let g = |kernel: &Path, initrd: Option<&Path>, mem_mib| GuestSpec {
            name: "g".into(),
            kernel: kernel.into(),
            initrd: initrd.map(Into::into),
            bootargs: String::new(),
            vcpus: 1,
            mem_mib,
            pinned: false,
        };
        assert_eq!(check_files(&[g(&k, Some(&empty), 64)]), Ok(()));
        // 0x8_0000 + 3 MiB rounds up to 4 MiB, and 2 MiB for the device tree.
        assert_eq!(min_mem_bytes(3 << 20, 0), 6 << 20);
        assert_eq!(check_files(&[g(&k, None, 6)]), Ok(()));
        let e = check_files(&[g(&k, Some(&k), 6)]).unwrap_err();
        assert!(e.contains("--mem 6 MiB is too small") && e.contains("at least 10 MiB"), "{e}");
        let e = check_files(&[g(Path::new("/nonexistent/k"), None, 64)]).unwrap_err();
        assert!(e.starts_with("guest `g`: --guest /nonexistent/k: "), "{e}");
        let e = check_files(&[g(&k, Some(Path::new("/nonexistent/i")), 64)]).unwrap_err();
        assert!(e.starts_with("guest `g`: --initrd /nonexistent/i: "), "{e}");
        assert!(check_files(&[g(&empty, None, 64)]).unwrap_err().ends_with("is empty"));
        assert!(check_files(&[g(&std::env::temp_dir(), None, 64)]).unwrap_err().ends_with("is not a file"));
        let _ = (fs::remove_file(k), fs::remove_file(empty));
    }

    /// The whole path on virt, against QEMU and dtc (skipped without them).
    #[test]
    fn prepares_a_virt_tree_and_bundle() {
        let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !have(QEMU) || !have("dtc") {
            eprintln!("SKIP: needs {QEMU} and dtc (scripts/setup)");
            return;
        }
        let root = std::env::temp_dir().join(format!("xtask-prepare-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let k = temp_file("pk", 5000);
        let i = temp_file("pi", 77);
        let specs = [
            GuestSpec {
                name: "one".into(),
                kernel: k.clone(),
                initrd: Some(i.clone()),
                bootargs: "a \"b\"".into(),
                vcpus: 2,
                mem_mib: 64,
                pinned: false,
            },
            GuestSpec {
                name: "two 2".into(),
                kernel: k.clone(),
                initrd: None,
                bootargs: String::new(),
                vcpus: 1,
                mem_mib: 16,
                pinned: false,
            },
        ];
        let machine = Machine { smp: 2, mem_mib: 512, ..Machine::default() };
        let p = prepare(&root, &machine, &specs).unwrap();
        let dtb = fs::read(&p.dtb).unwrap();
        let board = DtBoard::from_slice(&dtb).unwrap();
        assert_eq!(board.cpus().len(), 2);
        assert_eq!(board.bootargs(), crate::qemu::DEFAULT_BOOTARGS);
        let names: Vec<_> = board.domains().map(|d| d.unwrap().name).collect();
        assert_eq!(names, ["one", "two 2"]);
        let bundle = fs::read(&p.bundle).unwrap();
        assert_eq!(
            bundle,
            write_cpio(&[("one/kernel", &[1; 5000]), ("one/initrd", &[1; 77]), ("vm1/kernel", &[1; 5000])])
        );
        let dts = fs::read_to_string(&p.dts).unwrap();
        assert!(
            dts.contains("\t\tvm1 {\n\t\t\tcompatible = \"ferrovisor,domain\";\n\t\t\tferrovisor,name = \"two 2\";"),
            "{dts}"
        );
        let _ = (fs::remove_dir_all(&root), fs::remove_file(k), fs::remove_file(i));
    }
}
