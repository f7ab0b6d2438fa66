//! The host's EL1 system registers that el2 reads once per CPU instead of
//! at every run (`world::save_host_el1`): the host writes them only while
//! it brings a CPU up (its MMU, vectors and CPU index), before that CPU's
//! first `HC_VCPU_RUN`, and never after. The test below holds the host's
//! source to that: a write anywhere else would make el2 give the host back
//! a stale value after a guest ran.

/// The registers, as the host's source names them (`aarch64-cpu` names;
/// the assembly uses the same in lower case).
#[cfg(test)]
const BOOT_CONSTANT: [&str; 10] = [
    "SCTLR_EL1",
    "ACTLR_EL1",
    "CPACR_EL1",
    "TTBR0_EL1",
    "TTBR1_EL1",
    "TCR_EL1",
    "MAIR_EL1",
    "AMAIR_EL1",
    "VBAR_EL1",
    "TPIDR_EL1",
];

/// The host's files allowed to write them: CPU bring-up only.
#[cfg(test)]
const WRITERS: [&str; 3] = ["arch/aarch64/boot.rs", "arch/aarch64/mmu.rs", "arch/aarch64/cpu.rs"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// A write of `reg` in `line`: an `aarch64-cpu` setter or an `msr`.
    fn writes(line: &str, reg: &str) -> bool {
        let code = line.split("//").next().unwrap_or("");
        let lower = reg.to_ascii_lowercase();
        [".set(", ".write(", ".modify("].iter().any(|m| code.contains(&format!("{reg}{m}")))
            || code.contains(&format!("msr {lower}"))
            || code.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w[0] == "msr" && w[1].starts_with(&lower))
    }

    #[test]
    fn host_writes_boot_constant_registers_only_at_bring_up() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../el1-host/src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 20, "host source not found at {}", src.display());
        let mut seen = 0;
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(f).unwrap();
            for (n, line) in text.lines().enumerate() {
                for reg in BOOT_CONSTANT {
                    if writes(line, reg) {
                        seen += 1;
                        assert!(
                            WRITERS.contains(&rel.as_str()),
                            "{rel}:{}: the host writes {reg} after bring-up",
                            n + 1
                        );
                    }
                }
            }
        }
        // The scan finds the bring-up writes it allows (the MMU, VBAR, TPIDR).
        assert!(seen >= 8, "only {seen} writes found: the scan does not match the source");
    }

    #[test]
    fn the_scan_sees_both_spellings() {
        assert!(writes("    TTBR0_EL1.set(x);", "TTBR0_EL1"));
        assert!(writes("    msr     vbar_el1, x9", "VBAR_EL1"));
        assert!(!writes("    let v = TTBR0_EL1.get();", "TTBR0_EL1"));
        assert!(!writes("    // TCR_EL1.set(x)", "TCR_EL1"));
    }
}
