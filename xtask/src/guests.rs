//! Builds the test guests (`tests/guests`) and turns each into a raw flat
//! binary, `target/guests/<name>.flat`: its loadable segments laid out from
//! address 0, `_start` at offset 0, without the BSS (the guest clears it in
//! the free memory after the file). The ELF reading is [`crate::pack::flatten`]'s.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pack;

/// The guests are hard-float: the FPU test needs the FP/SIMD registers.
pub const GUEST_TARGET: &str = "aarch64-unknown-none";
const PACKAGE: &str = "ferrovisor-test-guests";
const MANIFEST: &str = "tests/guests/Cargo.toml";

/// The `name` of every `[[bin]]` table in a Cargo manifest, in order.
///
/// # Errors
/// A `[[bin]]` table without a `name = "..."` line.
pub fn bin_names(manifest: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    let mut named = true;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            if in_bin && !named {
                return Err(format!("{MANIFEST}: a [[bin]] table has no name"));
            }
            in_bin = line == "[[bin]]";
            named = !in_bin;
            continue;
        }
        let Some(value) = line.strip_prefix("name").map(str::trim_start).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        if in_bin {
            let value = value.trim();
            let name = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(|| format!("{MANIFEST}: [[bin]] name {value} is not a plain string"))?;
            names.push(name.to_string());
            named = true;
        }
    }
    if in_bin && !named {
        return Err(format!("{MANIFEST}: a [[bin]] table has no name"));
    }
    Ok(names)
}

/// The flat binary of guest `name` from its ELF file.
///
/// # Errors
/// What [`pack::flatten`] refuses, and an entry point that is not at offset 0
/// (a loader jumps to the first byte of a `.flat`).
pub fn flat_guest(name: &str, elf: &[u8]) -> Result<Vec<u8>, String> {
    let flat = pack::flatten(name, elf)?;
    if flat.entry != 0 {
        return Err(format!("{name}: entry point at {:#x}, not 0: `_start` must be the first byte", flat.entry));
    }
    Ok(flat.bytes)
}

/// Builds every test guest (release) and writes `target/guests/<name>.flat`;
/// returns each guest's name and flat file.
///
/// # Errors
/// cargo failing, a guest that cannot be flattened, or a file that cannot be
/// read or written.
pub fn build_guests(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let manifest = root.join(MANIFEST);
    let names = bin_names(&fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?)?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", PACKAGE, "--target", GUEST_TARGET])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {PACKAGE} failed ({status})"));
    }
    let target = crate::target_dir(root);
    let elf_dir = target.join(GUEST_TARGET).join("release");
    let out_dir = target.join("guests");
    fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut built = Vec::new();
    for name in names {
        let elf_path = elf_dir.join(&name);
        let elf = fs::read(&elf_path).map_err(|e| format!("{}: {e}", elf_path.display()))?;
        let flat = flat_guest(&name, &elf)?;
        let path = out_dir.join(format!("{name}.flat"));
        fs::write(&path, &flat).map_err(|e| format!("{}: {e}", path.display()))?;
        built.push((name, path));
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bin_names() {
        let m = r#"
[package]
name = "ferrovisor-test-guests"

[lib]
name = "lib_name"

[[bin]]
name = "selftest"
path = "src/bin/selftest.rs"

[[bin]]
path = "src/bin/psci.rs"
name= "psci"

[dependencies]
name = "not a bin"
"#;
        assert_eq!(bin_names(m).unwrap(), ["selftest", "psci"]);
        assert!(bin_names("[[bin]]\npath = \"x\"\n[dependencies]\n").unwrap_err().contains("no name"));
        assert!(bin_names("[[bin]]\npath = \"x\"\n").unwrap_err().contains("no name"));
        assert!(bin_names("[[bin]]\nname = x\n").unwrap_err().contains("not a plain string"));
        assert!(bin_names("[[bin]]\nnamespace = \"x\"\n").unwrap_err().contains("no name"));
    }

    #[test]
    fn flat_guests_start_at_their_entry() {
        use crate::pack::tests::{fake_elf, Seg};
        use object::elf;
        let segs = || {
            vec![
                Seg { vaddr: 0, data: vec![0x11; 0x100], memsz: 0x100 },
                Seg { vaddr: 0x1000, data: vec![0x22; 0x10], memsz: 0x9000 },
            ]
        };
        let flat = flat_guest("g", &fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0, &segs(), &[])).unwrap();
        assert_eq!(flat.len(), 0x1010, "the BSS is not in the file");
        assert!(flat[..0x100].iter().all(|&b| b == 0x11));
        assert!(flat[0x100..0x1000].iter().all(|&b| b == 0));
        assert!(flat[0x1000..].iter().all(|&b| b == 0x22));
        let e = flat_guest("g", &fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0x40, &segs(), &[])).unwrap_err();
        assert!(e.contains("g: entry point at 0x40, not 0"), "{e}");
        let e =
            flat_guest("g", &fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0, &segs(), &[(0x1000, elf::R_AARCH64_ABS64, 0)]))
                .unwrap_err();
        assert!(e.contains("R_AARCH64_ABS64"), "{e}");
    }

    #[test]
    fn the_real_manifest_names_the_four_guests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = bin_names(&fs::read_to_string(root.join(MANIFEST)).unwrap()).unwrap();
        for guest in ["selftest", "psci", "cmo", "hostile"] {
            assert!(names.iter().any(|n| n == guest), "{guest} missing from {names:?}");
        }
    }
}
